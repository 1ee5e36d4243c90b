"""Workspaces: the tenant. Found as `workspaces:<name>`."""

from __future__ import annotations

from typing import Annotated

from annotated_types import MaxLen, MinLen

from corral import Id, MutationCtx, QueryCtx, mutation, query

from .lib import authz
from .schema import Workspace, WorkspaceMember


@mutation
def create(ctx: MutationCtx, name: Annotated[str, MinLen(1), MaxLen(100)]) -> Id[Workspace]:
    user = ctx.auth.require_user()
    workspace_id = ctx.db.insert(Workspace(name=name, owner_id=user.token_identifier))
    ctx.db.insert(WorkspaceMember(workspace_id=workspace_id, user_id=user.token_identifier, role="owner"))
    return workspace_id


@query
def get(ctx: QueryCtx, workspace_id: Id[Workspace]) -> Workspace | None:
    if authz.membership(ctx, workspace_id) is None:
        return None  # never reveal that another tenant's workspace exists
    workspace: Workspace | None = ctx.db.get(workspace_id)
    return workspace


@query
def list_mine(ctx: QueryCtx) -> list[Workspace]:
    identity = ctx.auth.get_user_identity()
    if identity is None:
        return []
    memberships = ctx.db.query(WorkspaceMember).with_index("by_user", lambda q: q.eq("user_id", identity.token_identifier)).collect()
    return [ws for m in memberships if (ws := ctx.db.get(m.workspace_id)) is not None]
