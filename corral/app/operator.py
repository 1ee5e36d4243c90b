"""The node's operators: who sees every sandbox and runner. Found as `corral/operator:<name>`.

An operator is the node's local user (the identity of the node's own issuer with subject
`auth_local_subject`, written by each node at start through `configure`) or someone the admin key
granted the role (`corral run corral/operator:grant '{"user_id": "…"}'`). The console's operator
page (`#/operator`) reads `sandboxes` and `runners` live; everyone else is refused, and the admin
key reads the same through the internal `corral/sandboxes:overview` and `corral/runners:list_all`.
"""

from __future__ import annotations

import builtins
from typing import Annotated, Any

from annotated_types import MaxLen, MinLen

from corral import ConvexError, MutationCtx, QueryCtx, internal_mutation, internal_query, query

from . import runners as runners_module
from . import sandboxes as sandboxes_module
from .lib import authz
from .schema import Operator

UserId = Annotated[str, MinLen(1), MaxLen(500)]
NODE = "node"  # granted_by of the local user's row


def _rows(ctx: Any, user_id: str) -> builtins.list[Any]:
    return ctx.db.query(Operator).with_index("by_user", lambda q: q.eq("user_id", user_id)).collect()


def _check_user_id(user_id: str) -> str:
    user_id = user_id.strip()
    issuer, _, subject = user_id.rpartition("|")
    if not issuer or not subject:
        raise ConvexError({"code": "InvalidArgument", "message": f"a user id is issuer|subject (an identity's "
                           f"tokenIdentifier, shown in the console's header), not {user_id!r}"})
    return user_id


@query
def me(ctx: QueryCtx) -> dict[str, Any]:
    """Whether the caller is one of the node's operators (the console shows its operator page to them)."""
    user_id = authz.caller_id(ctx)
    return {"user_id": user_id, "operator": authz.is_operator(ctx, user_id)}


@query
def sandboxes(ctx: QueryCtx) -> dict[str, Any]:
    """Every owner's sandboxes, without tokens: running, paused and lost, then the latest killed (operators)."""
    authz.require_operator(ctx)
    found: dict[str, Any] = sandboxes_module.overview.fn(ctx)
    return found


@query
def runners(ctx: QueryCtx) -> builtins.list[dict[str, Any]]:
    """Every runner, without its secret, with how many sandboxes it holds; up ones first (operators)."""
    authz.require_operator(ctx)
    found: builtins.list[dict[str, Any]] = runners_module.list_all.fn(ctx)
    return sorted(found, key=lambda r: (r["state"] != "up", r["name"]))


@internal_mutation
def configure(ctx: MutationCtx, local_user: UserId) -> None:
    """Make the node's local user an operator, in place of the one named before; each node does at start."""
    local_user = _check_user_id(local_user)
    for doc in ctx.db.query(Operator).with_index("by_granted_by", lambda q: q.eq("granted_by", NODE)).collect():
        if doc["user_id"] != local_user:
            ctx.db.delete(doc["_id"])
    if not any(d["granted_by"] == NODE for d in _rows(ctx, local_user)):
        ctx.db.insert(Operator(user_id=local_user, granted_by=NODE, granted_at=float(ctx.now)))


@internal_mutation
def grant(ctx: MutationCtx, user_id: UserId) -> dict[str, Any]:
    """Give someone the operator role (the admin key: `corral run corral/operator:grant '{"user_id": "…"}'`)."""
    user_id = _check_user_id(user_id)
    if any(d["granted_by"] != NODE for d in _rows(ctx, user_id)):
        return {"user_id": user_id, "granted": False, "already": True}
    ctx.db.insert(Operator(user_id=user_id, granted_by="admin key", granted_at=float(ctx.now)))
    return {"user_id": user_id, "granted": True, "already": False}


@internal_mutation
def revoke(ctx: MutationCtx, user_id: UserId) -> dict[str, Any]:
    """Take the operator role back; the node's local user keeps it (it follows `auth_local_subject`)."""
    user_id = _check_user_id(user_id)
    granted = [d for d in _rows(ctx, user_id) if d["granted_by"] != NODE]
    for doc in granted:
        ctx.db.delete(doc["_id"])
    return {"user_id": user_id, "revoked": bool(granted)}


# `list` (Convex's idiom) shadows the builtin in this module: annotations say `builtins.list`.
@internal_query
def list(ctx: QueryCtx) -> Any:
    """Every operator: who, granted by whom ("node" for the local user), when."""
    return [{"user_id": d["user_id"], "granted_by": d["granted_by"], "granted_at": d["granted_at"]}
            for d in ctx.db.query(Operator).collect()]
