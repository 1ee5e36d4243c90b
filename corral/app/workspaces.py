"""Workspaces: the tenant. Found as `corral/workspaces:<name>` (docs/workspaces.md)."""

from __future__ import annotations

import builtins
from typing import Any

from corral import ConvexError, Id, MutationCtx, QueryCtx, internal_mutation, mutation, query

from . import sandbox_runs
from .lib import audit_log, authz
from .lib.validators import UserId, WorkspaceName, clean_name, invalid
from .lib.workspace_removal import TENANCY_STEPS, remove_batch
from .schema import Workspace, WorkspaceMember

PURGE_BATCH = 500  # documents one removal transaction deletes, well inside the per-transaction limits


def _runs_and_artifacts(ctx: Any, workspace_id: Any, _limit: int) -> int:
    """Artifacts with their stored files, then runs with their sandboxes: a batch of them, or 0 when none is left."""
    return 0 if sandbox_runs.remove_batch(ctx, workspace_id) else 1


REMOVAL_STEPS = [("runs and artifacts", _runs_and_artifacts), *TENANCY_STEPS]


def _with_role(workspace: Any, role: str) -> dict[str, Any]:
    return {**workspace, "role": role}


@mutation
def create(ctx: MutationCtx, name: WorkspaceName) -> Id[Workspace]:
    """A new workspace; the caller becomes its owner."""
    user_id = authz.require_caller(ctx)
    name = clean_name(name, "workspace name")
    workspace_id: Id[Workspace] = ctx.db.insert(Workspace(name=name, owner_id=user_id))
    ctx.db.insert(WorkspaceMember(workspace_id=workspace_id, user_id=user_id, role="owner"))
    audit_log.record(ctx, workspace_id, "workspace.create", workspace_id, None, {"name": name})
    return workspace_id


@mutation
def update(ctx: MutationCtx, workspace_id: Id[Workspace], name: WorkspaceName) -> None:
    """Rename a workspace (owner)."""
    authz.require_role(ctx, workspace_id, "owner")
    name = clean_name(name, "workspace name")
    workspace: Any = ctx.db.get(workspace_id)
    if workspace["name"] != name:
        ctx.db.patch(workspace_id, {"name": name})
        audit_log.record(ctx, workspace_id, "workspace.rename", workspace_id, {"name": workspace["name"]}, {"name": name})


@mutation
def set_budget(ctx: MutationCtx, workspace_id: Id[Workspace], monthly_budget_usd: float | None) -> None:
    """Set the monthly budget past which new runs are refused, or none (owner)."""
    authz.require_role(ctx, workspace_id, "owner")
    if monthly_budget_usd is not None and not 0 <= monthly_budget_usd < float("inf"):
        raise invalid(f"a monthly budget is a number of US dollars ≥ 0, not {monthly_budget_usd}")
    workspace: Any = ctx.db.get(workspace_id)
    before = workspace["monthly_budget_usd"]
    if before != monthly_budget_usd:
        ctx.db.patch(workspace_id, {"monthly_budget_usd": monthly_budget_usd})
        audit_log.record(ctx, workspace_id, "workspace.budget", workspace_id,
                         {"monthly_budget_usd": before}, {"monthly_budget_usd": monthly_budget_usd})


@mutation
def transfer_ownership(ctx: MutationCtx, workspace_id: Id[Workspace], user_id: UserId) -> None:
    """Make an admin the owner (owner); the previous owner becomes an admin."""
    owner = authz.require_role(ctx, workspace_id, "owner")
    target = authz.member_of(ctx, workspace_id, user_id)
    if target is None or target.role != "admin":
        what = "not a member" if target is None else "the owner already" if target.role == "owner" else "a member, not an admin"
        raise ConvexError({"code": "InvalidArgument",
                           "message": f"ownership goes to an admin of the workspace; {user_id} is {what}"})
    ctx.db.patch(target["_id"], {"role": "owner"})
    ctx.db.patch(owner["_id"], {"role": "admin"})
    ctx.db.patch(workspace_id, {"owner_id": user_id})
    audit_log.record(ctx, workspace_id, "workspace.transfer", user_id, {"owner_id": owner.user_id}, {"owner_id": user_id})


@mutation
def remove(ctx: MutationCtx, workspace_id: Id[Workspace]) -> None:
    """Remove a workspace and everything in it (owner): it is `deleting` until the last batch."""
    authz.require_role(ctx, workspace_id, "owner")
    ctx.db.patch(workspace_id, {"status": "deleting"})
    audit_log.record(ctx, workspace_id, "workspace.remove", workspace_id, {"status": "active"}, {"status": "deleting"})
    ctx.scheduler.run_after(0, purge, {"workspace_id": workspace_id})


@internal_mutation
def purge(ctx: MutationCtx, workspace_id: Id[Workspace]) -> str | None:
    """One batch of a removal (lib/workspace_removal.py), then the next, scheduled, until all is gone."""
    workspace = ctx.db.get(workspace_id)
    if workspace is not None and workspace["status"] != "deleting":
        raise ConvexError({"code": "InvalidArgument", "message": "only a workspace being removed is purged"})
    kind = remove_batch(ctx, workspace_id, PURGE_BATCH, REMOVAL_STEPS)
    if kind not in (None, "workspace"):
        ctx.scheduler.run_after(0, purge, {"workspace_id": workspace_id})
    return kind


@query
def get(ctx: QueryCtx, workspace_id: Id[Workspace]) -> dict[str, Any] | None:
    """The workspace with the caller's role in it, for members; null otherwise."""
    member = authz.membership(ctx, workspace_id)
    if member is None:
        return None  # never reveal that another tenant's workspace exists
    workspace = ctx.db.get(workspace_id)
    return None if workspace is None else _with_role(workspace, member.role)


# `list` (Convex's idiom) shadows the builtin in this module: annotations say `builtins.list`.
@query
def list(ctx: QueryCtx) -> builtins.list[dict[str, Any]]:
    """The caller's workspaces, each with the caller's role, oldest first."""
    user_id = authz.caller_id(ctx)
    if user_id is None:
        return []
    memberships = ctx.db.query(WorkspaceMember).with_index("by_user", lambda q: q.eq("user_id", user_id)).collect()
    found = [_with_role(ws, m.role) for m in memberships if (ws := ctx.db.get(m.workspace_id)) is not None]
    return sorted(found, key=lambda w: w["_creationTime"])
