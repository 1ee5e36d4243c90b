"""A workspace's members and invitations. Found as `corral/workspace_members:<name>`.

The rules (docs/workspaces.md): owners and admins add members; only the owner adds, grants or
takes admin; the owner is never removed and its role never changes (transfer_ownership does);
an admin cannot remove an admin; anyone but the owner may leave.
"""

from __future__ import annotations

from typing import Any

from corral import ConvexError, Id, MutationCtx, QueryCtx, mutation, query

from .lib import audit_log, authz
from .lib.validators import Email, GrantableRole, UserId, invalid, normalize_email
from .schema import Invitation, User, Workspace, WorkspaceMember


def _refused(message: str) -> ConvexError:
    return ConvexError({"code": "Forbidden", "message": message})


def _profile(ctx: Any, user_id: str) -> Any:
    return ctx.db.query(User).with_index("by_token", lambda q: q.eq("token_identifier", user_id)).unique()


def _target(ctx: Any, workspace_id: Any, user_id: str) -> WorkspaceMember:
    member = authz.member_of(ctx, workspace_id, user_id)
    if member is None:
        raise ConvexError({"code": "NotFound", "message": f"{user_id} is not a member of this workspace"})
    return member


def _invitation(ctx: Any, workspace_id: Any, email: str) -> Any:
    return ctx.db.query(Invitation).with_index(
        "by_workspace_email", lambda q: q.eq("workspace_id", workspace_id).eq("email", email)).unique()


@mutation
def add_member(ctx: MutationCtx, workspace_id: Id[Workspace], role: GrantableRole,
               user_id: UserId | None = None, email: Email | None = None) -> dict[str, Any]:
    """Add someone by user id or by email (owner or admin; only the owner adds an admin). An email
    no one has signed in with yet becomes an invitation, turned into a membership at their sign-in."""
    caller = authz.require_role(ctx, workspace_id, "admin")
    if (user_id is None) == (email is None):
        raise invalid("give exactly one of user_id and email")
    if role == "admin" and caller.role != "owner":
        raise _refused("only the owner adds an admin")
    if email is not None:
        email = normalize_email(email)
        person = ctx.db.query(User).with_index("by_email", lambda q: q.eq("email", email)).first()
        if person is None:
            if _invitation(ctx, workspace_id, email) is not None:
                raise ConvexError({"code": "AlreadyInvited", "message": f"{email} is already invited to this workspace"})
            invitation_id = ctx.db.insert(Invitation(workspace_id=workspace_id, email=email, role=role,
                                                     invited_by=caller.user_id))
            audit_log.record(ctx, workspace_id, "invitation.create", email, None, {"role": role})
            return {"status": "invited", "email": email, "invitation_id": invitation_id, "role": role}
        user_id = str(person["token_identifier"])
    assert user_id is not None
    existing = authz.member_of(ctx, workspace_id, user_id)
    if existing is not None:
        who = email or (profile["email"] if (profile := _profile(ctx, user_id)) is not None and profile["email"] else user_id)
        raise ConvexError({"code": "AlreadyMember",
                           "message": f"{who} is already this workspace's {existing.role}; change their role instead"})
    ctx.db.insert(WorkspaceMember(workspace_id=workspace_id, user_id=user_id, role=role))
    audit_log.record(ctx, workspace_id, "member.add", user_id, None, {"role": role})
    return {"status": "member", "user_id": user_id, "role": role}


@mutation
def remove_member(ctx: MutationCtx, workspace_id: Id[Workspace], user_id: UserId) -> None:
    """Remove a member (owner or admin; the owner is never removed; an admin cannot remove an admin)."""
    caller = authz.require_role(ctx, workspace_id, "admin")
    target = _target(ctx, workspace_id, user_id)
    if target.role == "owner":
        raise _refused("the owner cannot be removed: transfer ownership first")
    if target.role == "admin" and caller.role != "owner":
        raise _refused("only the owner removes an admin" + ("; to go, use leave" if target.user_id == caller.user_id else ""))
    ctx.db.delete(target["_id"])
    audit_log.record(ctx, workspace_id, "member.remove", user_id, {"role": target.role}, None)


@mutation
def update_role(ctx: MutationCtx, workspace_id: Id[Workspace], user_id: UserId, new_role: GrantableRole) -> None:
    """Change a member's role (owner or admin; only the owner grants or takes admin; never the owner's)."""
    caller = authz.require_role(ctx, workspace_id, "admin")
    target = _target(ctx, workspace_id, user_id)
    if target.role == "owner":
        raise _refused("the owner's role never changes: transfer ownership to an admin instead")
    if "admin" in (target.role, new_role) and caller.role != "owner":
        raise _refused("only the owner grants or takes the admin role")
    if target.role != new_role:
        ctx.db.patch(target["_id"], {"role": new_role})
        audit_log.record(ctx, workspace_id, "member.role", user_id, {"role": target.role}, {"role": new_role})


@mutation
def leave(ctx: MutationCtx, workspace_id: Id[Workspace]) -> None:
    """Leave a workspace (anyone but the owner)."""
    member = authz.require_member(ctx, workspace_id)
    if member.role == "owner":
        raise _refused("the owner cannot leave: transfer ownership to an admin first, or remove the workspace")
    ctx.db.delete(member["_id"])
    audit_log.record(ctx, workspace_id, "member.leave", member.user_id, {"role": member.role}, None)


@query
def list_members(ctx: QueryCtx, workspace_id: Id[Workspace]) -> list[dict[str, Any]]:
    """The members with their profiles (members), owner first, then admins, then members."""
    authz.require_member(ctx, workspace_id)
    rows = []
    for member in ctx.db.query(WorkspaceMember).with_index("by_workspace_user", lambda q: q.eq("workspace_id", workspace_id)):
        profile = _profile(ctx, member.user_id)
        rows.append({"user_id": member.user_id, "role": member.role, "joined_at": member["_creationTime"],
                     "name": profile and profile["name"], "email": profile and profile["email"],
                     "picture": profile and profile["picture"]})
    return sorted(rows, key=lambda r: (-authz.ROLE_RANK[r["role"]], r["joined_at"]))


@query
def list_invitations(ctx: QueryCtx, workspace_id: Id[Workspace]) -> list[Invitation]:
    """The invitations waiting for someone to sign in (owner or admin)."""
    authz.require_role(ctx, workspace_id, "admin")
    found: list[Invitation] = ctx.db.query(Invitation).with_index(
        "by_workspace_email", lambda q: q.eq("workspace_id", workspace_id)).collect()
    return found


@mutation
def cancel_invitation(ctx: MutationCtx, workspace_id: Id[Workspace], email: Email) -> None:
    """Withdraw an invitation (owner or admin; only the owner withdraws one to be an admin)."""
    caller = authz.require_role(ctx, workspace_id, "admin")
    email = normalize_email(email)
    invitation = _invitation(ctx, workspace_id, email)
    if invitation is None:
        raise ConvexError({"code": "NotFound", "message": f"{email} has no invitation to this workspace"})
    if invitation["role"] == "admin" and caller.role != "owner":
        raise _refused("only the owner withdraws an invitation to be an admin")
    ctx.db.delete(invitation["_id"])
    audit_log.record(ctx, workspace_id, "invitation.cancel", email, {"role": invitation["role"]}, None)
