"""Agent threads: what a workspace's runs belong to. Found as `corral/threads:<name>`."""

from __future__ import annotations

from typing import Any

from corral import Id, MutationCtx, QueryCtx, mutation, query

from .lib import authz
from .lib.validators import PaginationOpts, ThreadTitle, clean_name
from .schema import Thread, Workspace


@mutation
def create(ctx: MutationCtx, workspace_id: Id[Workspace], title: ThreadTitle | None = None) -> Id[Thread]:
    """A new thread in a workspace (members)."""
    member = authz.require_member(ctx, workspace_id)
    if title is not None:
        title = clean_name(title, "thread title")
    thread_id: Id[Thread] = ctx.db.insert(Thread(workspace_id=workspace_id, title=title, creator_id=member.user_id,
                                                 status="active"))
    return thread_id


@query
def get(ctx: QueryCtx, thread_id: Id[Thread]) -> Thread | None:
    """A thread, for members of its workspace; null otherwise."""
    thread: Thread | None = authz.readable(ctx, ctx.db.get(thread_id))
    return thread


# `list` (Convex's idiom) shadows the builtin in this module.
@query
def list(ctx: QueryCtx, workspace_id: Id[Workspace], paginationOpts: PaginationOpts) -> dict[str, Any]:  # noqa: N803 - Convex's name
    """A workspace's threads, newest first (members)."""
    authz.require_member(ctx, workspace_id)
    page: dict[str, Any] = ctx.db.query(Thread).with_index("by_workspace", lambda q: q.eq("workspace_id", workspace_id)) \
        .order("desc").paginate(dict(paginationOpts))
    return page
