"""A workspace's audit trail (lib/audit_log.py writes it). Found as `corral/audit:<name>`."""

from __future__ import annotations

from typing import Any

from corral import Id, QueryCtx, query

from .lib import authz
from .lib.validators import PaginationOpts
from .schema import AuditEntry, Workspace


# `list` (Convex's idiom) shadows the builtin in this module.
@query
def list(ctx: QueryCtx, workspace_id: Id[Workspace], paginationOpts: PaginationOpts) -> dict[str, Any]:  # noqa: N803 - Convex's name
    """The workspace's privileged acts, newest first (owner or admin)."""
    authz.require_role(ctx, workspace_id, "admin")
    page: dict[str, Any] = ctx.db.query(AuditEntry).with_index(
        "by_workspace_at", lambda q: q.eq("workspace_id", workspace_id)).order("desc").paginate(dict(paginationOpts))
    return page
