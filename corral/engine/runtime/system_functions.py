"""Built-in internal queries, found as `_system:<name>` (the admin key, or other functions, may call them).

    corral run _system:scheduled_functions '{"state": "failed"}'
    corral run _system:cron_jobs
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge, Le

from ..functions import internal_query
from .contexts import QueryCtx

JobKind = Literal["pending", "inProgress", "success", "failed", "canceled"]


@internal_query
def scheduled_functions(ctx: QueryCtx, state: JobKind | None = None, name: str | None = None,
                        limit: Annotated[int, Ge(1), Le(1000)] = 100) -> list[dict[str, Any]]:
    """Scheduled jobs, newest first: optionally only those in one state, or of one function."""
    query = ctx.db.query("_scheduled_functions").order("desc")
    if state is not None:
        query = query.filter(lambda job: job["state"]["kind"] == state)
    if name is not None:
        query = query.filter(lambda job: job["name"] == name)
    return query.take(limit)


@internal_query
def cron_jobs(ctx: QueryCtx) -> list[dict[str, Any]]:
    """Every declared cron: its schedule, function, next run and last run."""
    return ctx.db.query("_cron_jobs").collect()
