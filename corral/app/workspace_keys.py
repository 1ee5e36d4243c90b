"""API keys scoped to a workspace, for the official `e2b` SDK (E2B_API_KEY). Found as
`corral/workspace_keys:<name>`.

A workspace key calls as `workspace|<workspace id>`, the owner of the workspace's sandboxes (its
runs' and those the key creates): it sees and drives exactly those, in every E2B listing and call,
and nothing else (another workspace's sandbox is E2B's 404). The node resolves a presented key
through `verify` (corral/e2b/auth.py). The key is shown once; its SHA-256 is kept.
"""

from __future__ import annotations

from typing import Annotated, Any

from annotated_types import MaxLen, MinLen

from corral import (
    ActionCtx,
    ConvexError,
    Id,
    MutationCtx,
    QueryCtx,
    action,
    internal_mutation,
    internal_query,
    mutation,
    query,
)
from corral.engine.auth.api_keys import hash_secret, new_secret

from .lib import audit_log, authz
from .lib.run_ends import workspace_owner
from .schema import Workspace, WorkspaceApiKey

KeyName = Annotated[str, MinLen(1), MaxLen(100)]


def _view(doc: Any) -> dict[str, Any]:
    return {"id": doc["_id"], "name": doc["name"], "hint": doc["hint"], "created": doc["created"],
            "created_by": doc["created_by"], "revoked": doc["revoked"]}


@action
async def create_api_key(ctx: ActionCtx, workspace_id: Id[Workspace], name: KeyName) -> dict[str, Any]:
    """A new key of the workspace (owner or admin): {key, id, name, hint, created}; the key is shown only here.

    An action: the key is drawn here, outside any transaction (mutations draw no randomness, ADR 0004)."""
    secret = new_secret()
    made: dict[str, Any] = await ctx.run_mutation("corral/workspace_keys:record_api_key", {
        "workspace_id": workspace_id, "name": name, "hash": hash_secret(secret), "hint": f"{secret[:8]}…{secret[-4:]}"})
    return {"key": secret, **made}


@internal_mutation
def record_api_key(ctx: MutationCtx, workspace_id: Id[Workspace], name: KeyName, hash: str, hint: str) -> dict[str, Any]:  # noqa: A002
    """Keep a new key's hash, as its creator (owner or admin); audited."""
    authz.require_role(ctx, workspace_id, "admin")
    name = name.strip()
    if not name or not name.isprintable():
        raise ConvexError({"code": "InvalidArgument", "message": "a key's name must be printable and not blank"})
    for other in ctx.db.query(WorkspaceApiKey).with_index("by_workspace", lambda q: q.eq("workspace_id", workspace_id)):
        if other["name"] == name and other["revoked"] is None:
            raise ConvexError({"code": "ApiKeyExists", "message": f"an active key of this workspace is already named {name!r}"})
    key_id = ctx.db.insert(WorkspaceApiKey(workspace_id=workspace_id, name=name, hash=hash, hint=hint,
                                           created_by=authz.require_caller(ctx), created=float(ctx.now), revoked=None))
    doc: Any = ctx.db.get(key_id)
    audit_log.record(ctx, workspace_id, "api_key.create", str(key_id), None, {"name": name, "hint": hint})
    return _view(doc)


@query
def list_api_keys(ctx: QueryCtx, workspace_id: Id[Workspace]) -> list[dict[str, Any]]:
    """The workspace's keys, without the keys themselves (owner or admin)."""
    authz.require_role(ctx, workspace_id, "admin")
    docs = ctx.db.query(WorkspaceApiKey).with_index("by_workspace", lambda q: q.eq("workspace_id", workspace_id)).collect()
    return [_view(d) for d in docs]


@mutation
def revoke_api_key(ctx: MutationCtx, workspace_id: Id[Workspace], key_id: Id[WorkspaceApiKey]) -> dict[str, Any]:
    """Revoke a key of the workspace (owner or admin); every node refuses it from its next call."""
    authz.require_role(ctx, workspace_id, "admin")
    doc = ctx.db.get(key_id)
    if doc is None or doc["workspace_id"] != workspace_id:
        raise authz.not_found("API key")
    if doc["revoked"] is not None:
        return {**_view(doc), "already_revoked": True}
    ctx.db.patch(key_id, {"revoked": float(ctx.now)})
    audit_log.record(ctx, workspace_id, "api_key.revoke", str(key_id), {"revoked": None}, {"revoked": float(ctx.now)})
    return {**_view(ctx.db.get(key_id)), "already_revoked": False}


@internal_query
def verify(ctx: QueryCtx, hash: Annotated[str, MinLen(64), MaxLen(64)] | None = None,  # noqa: A002 - the column's name
           key_id: Annotated[str, MaxLen(64)] | None = None) -> dict[str, Any] | None:
    """The key with this hash (or id): {id, name, owner, revoked, workspace_name}, or None."""
    if key_id is not None:
        normalized = ctx.db.normalize_id(WorkspaceApiKey, key_id)
        doc = None if normalized is None else ctx.db.get(normalized)
    else:
        doc = ctx.db.query(WorkspaceApiKey).with_index("by_hash", lambda q: q.eq("hash", hash)).first()
    if doc is None:
        return None
    workspace = ctx.db.get(doc["workspace_id"])
    gone = workspace is None or workspace["status"] != "active"
    return {"id": doc["_id"], "name": doc["name"], "owner": workspace_owner(doc["workspace_id"]),
            "revoked": doc["revoked"] if not gone else (doc["revoked"] or float(ctx.now)), "hint": doc["hint"]}
