"""What removing a workspace deletes, in order, a bounded batch at a time.

Each step deletes up to `limit` documents of one kind belonging to the workspace and returns how
many it deleted: 0 means that kind is gone and the next step starts. `workspaces:purge` runs the
steps, one batch per transaction, rescheduling itself until the workspace itself is deleted:
artifacts and their stored files, runs (killing their sandboxes), threads, invitations, members,
audit entries, the workspace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..schema import AuditEntry, Invitation, Thread, WorkspaceMember


def _deleting(query: Any) -> Callable[[Any, Any, int], int]:
    def step(ctx: Any, workspace_id: Any, limit: int) -> int:
        docs = query(ctx, workspace_id).take(limit)
        for doc in docs:
            ctx.db.delete(doc["_id"])
        return len(docs)

    return step


Step = tuple[str, Callable[[Any, Any, int], int]]

# After the runs and artifacts (sandbox_runs.remove_batch, first): the tenancy's own documents.
TENANCY_STEPS: list[Step] = [
    ("threads", _deleting(lambda ctx, w: ctx.db.query(Thread).with_index("by_workspace", lambda q: q.eq("workspace_id", w)))),
    ("invitations", _deleting(lambda ctx, w: ctx.db.query(Invitation).with_index(
        "by_workspace_email", lambda q: q.eq("workspace_id", w)))),
    ("members", _deleting(lambda ctx, w: ctx.db.query(WorkspaceMember).with_index(
        "by_workspace_user", lambda q: q.eq("workspace_id", w)))),
    ("audit entries", _deleting(lambda ctx, w: ctx.db.query(AuditEntry).with_index(
        "by_workspace_at", lambda q: q.eq("workspace_id", w)))),
]


def remove_batch(ctx: Any, workspace_id: Any, limit: int, steps: list[Step]) -> str | None:
    """Delete one batch of the first kind in `steps` the workspace still has, or the workspace
    itself when nothing else is left; returns the kind deleted ("workspace" last), None when all is gone."""
    for kind, step in steps:
        if step(ctx, workspace_id, limit):
            return kind
    if ctx.db.get(workspace_id) is None:
        return None
    ctx.db.delete(workspace_id)
    return "workspace"
