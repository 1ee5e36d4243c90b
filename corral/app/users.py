"""People: a profile per user, from their token's claims. Found as `corral/users:<name>`."""

from __future__ import annotations

from typing import Any

from corral import ConvexError, MutationCtx, QueryCtx, mutation, query

from .lib import audit_log, authz
from .lib.validators import EMAIL_MAX, normalize_email
from .schema import Invitation, User, WorkspaceMember

CLAIM_MAX = 2048  # longer name or picture claims are cut: a profile is for showing people


def _claim(identity: Any, key: str) -> str | None:
    value = identity.get(key)
    return value[:CLAIM_MAX] if isinstance(value, str) and value else None


def _email(identity: Any) -> str | None:
    email = identity.get("email")
    if not isinstance(email, str) or len(email) > EMAIL_MAX or identity.get("emailVerified") is False:
        return None  # an address the issuer says is unverified claims no invitation
    try:
        return normalize_email(email)
    except ConvexError:
        return None


def _profile(ctx: Any, user_id: str) -> User | None:
    found: User | None = ctx.db.query(User).with_index("by_token", lambda q: q.eq("token_identifier", user_id)).unique()
    return found


@mutation
def sync_profile(ctx: MutationCtx) -> User:
    """Called at each sign-in: the caller's profile from their token's claims (name, email,
    picture), and their pending invitations turned into memberships."""
    identity = ctx.auth.require_user()
    if identity.get("keyKind") is not None:
        raise ConvexError({"code": "Forbidden", "message": "an API key has no profile: sign in as a person"})
    user_id = str(identity["tokenIdentifier"])
    email = _email(identity)
    fields: dict[str, Any] = {"name": _claim(identity, "name"), "email": email, "picture": _claim(identity, "pictureUrl"),
                              "updated_at": float(ctx.now)}
    existing = _profile(ctx, user_id)
    if existing is None:
        ctx.db.insert(User(token_identifier=user_id, **fields))
    else:
        ctx.db.patch(existing["_id"], fields)
    if email is not None:
        _accept_invitations(ctx, user_id, email)
    profile = _profile(ctx, user_id)
    assert profile is not None
    return profile


def _accept_invitations(ctx: MutationCtx, user_id: str, email: str) -> None:
    for invitation in ctx.db.query(Invitation).with_index("by_email", lambda q: q.eq("email", email)).collect():
        ctx.db.delete(invitation["_id"])
        workspace = ctx.db.get(invitation["workspace_id"])
        if workspace is None or workspace["status"] != "active" or authz.member_of(ctx, workspace["_id"], user_id):
            continue
        ctx.db.insert(WorkspaceMember(workspace_id=workspace["_id"], user_id=user_id, role=invitation["role"]))
        audit_log.record(ctx, workspace["_id"], "invitation.accept", user_id,
                         {"invited": email, "by": invitation["invited_by"]}, {"role": invitation["role"]})


@query
def me(ctx: QueryCtx) -> User | None:
    """The caller's profile, or null (signed out, or never synced)."""
    user_id = authz.caller_id(ctx)
    return None if user_id is None else _profile(ctx, user_id)
