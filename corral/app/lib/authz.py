"""The one place where workspace membership and roles are checked."""

from __future__ import annotations

from typing import Any

from corral import ConvexError, Id

from ..schema import Workspace, WorkspaceMember

ROLE_RANK = {"member": 0, "admin": 1, "owner": 2}


def membership(ctx: Any, workspace_id: Id[Workspace]) -> WorkspaceMember | None:
    """The caller's membership of a workspace, or None (also when signed out)."""
    identity = ctx.auth.get_user_identity()
    if identity is None:
        return None
    member: WorkspaceMember | None = ctx.db.query(WorkspaceMember).with_index(
        "by_workspace_user", lambda q: q.eq("workspace_id", workspace_id).eq("user_id", identity.token_identifier)
    ).unique()
    return member


def require_role(ctx: Any, workspace_id: Id[Workspace], role: str) -> WorkspaceMember:
    """The caller's membership if it has at least `role`; otherwise an error that reveals nothing."""
    member = membership(ctx, workspace_id)
    if member is None or ROLE_RANK[member.role] < ROLE_RANK[role]:
        raise ConvexError({"code": "Forbidden", "message": f"you need the '{role}' role in this workspace"})
    return member


def require_runner_key(ctx: Any) -> str:
    """The id of the runner key calling; refuses every other caller (users, client keys, admin)."""
    identity = ctx.auth.get_user_identity()
    if identity is None or identity.get("keyKind") != "runner":
        raise ConvexError({"code": "Forbidden", "message": "only a runner may call this: start one with "
                           "`corral runner --key KEY`, KEY from `corral api-key create --kind runner`"})
    return str(identity["subject"])
