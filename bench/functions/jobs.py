"""Scheduled jobs for bench.scheduler: each records when it was due and when it started."""

from corral import MutationCtx, QueryCtx, internal_mutation, mutation, query

from .schema import JobRun

MAX_BATCH = 1000  # jobs one mutation may schedule


@mutation
def schedule(ctx: MutationCtx, start: int, count: int, due: float) -> int:
    """Schedule jobs start…start+count-1, all due at `due` (ms since the epoch)."""
    for n in range(start, start + count):
        ctx.scheduler.run_at(due / 1000.0, run, {"n": n, "due": due})
    return count


@internal_mutation
def run(ctx: MutationCtx, n: int, due: float) -> None:
    ctx.db.insert(JobRun(n=n, due=due, started=ctx.now, node=ctx.env.get("BENCH_NODE", "")))


@query
def left(ctx: QueryCtx, due: float) -> bool:
    """Whether jobs due at `due` are still waiting (a user query may read the scheduler's queue)."""
    return ctx.db.query("_scheduler_queue").with_index("by_due", lambda q: q.lte("due", due)).first() is not None


@query
def runs(ctx: QueryCtx, due: float, cursor: str | None = None) -> dict:
    page = ctx.db.query(JobRun).paginate({"numItems": 2000, "cursor": cursor})
    return {"rows": [[r.n, r.started, r.node] for r in page["page"] if r.due == due],
            "cursor": page["continueCursor"], "done": page["isDone"]}
