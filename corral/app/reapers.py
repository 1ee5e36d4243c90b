"""Reapers: the runs no sandbox timer ends. Found as `corral/reapers:<name>`; a cron every 30 s.

A run's idle timeout and maximum duration are its sandbox's (end_at and its own idle policy), so
the sandbox crons end those runs with their sandboxes (lib/run_ends.py). What is left here: runs
still booting past their boot timeout (the action that started them died, or its sandbox never
came up), and, as a backstop, running runs past their deadline whose sandbox timer did not fire.

A tick reads only candidates, through the (status, deadline) index; one that finds none writes
nothing. Candidates are ended in bounded batches (one workspace's runs each), several at once, and
a batch that fails is retried run by run so that one failure never stops the rest.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from annotated_types import Ge, Le

from corral import (
    ActionCtx,
    Id,
    MutationCtx,
    QueryCtx,
    internal_action,
    internal_mutation,
    internal_query,
)

from .lib.run_ends import end_run
from .lib.state_machines import sandbox_transition
from .schema import Sandbox, SandboxRun

CANDIDATES = 1000  # runs one tick looks at; the next tick takes the rest
BATCH = 100  # runs ended per transaction
PARALLEL = 4  # transactions in flight at once (of different workspaces)


@internal_query
def candidates(ctx: QueryCtx, limit: Annotated[int, Ge(1), Le(10_000)] = CANDIDATES) -> list[list[str]]:
    """[run id, workspace id] of runs booting or running past their deadline, oldest deadline first."""
    now = float(ctx.now)
    found: list[list[str]] = []
    for status in ("booting", "running"):
        found += [[str(r["_id"]), str(r["workspace_id"])] for r in ctx.db.query(SandboxRun).with_index(
            "by_status_deadline", lambda q, s=status: q.eq("status", s).lte("deadline", now)).take(limit - len(found))]  # type: ignore[misc]
        if len(found) >= limit:
            break
    return found


def _reap(ctx: Any, run: Any) -> bool:
    now = float(ctx.now)
    if run is None or run["status"] not in ("booting", "running") or run["deadline"] > now:
        return False  # ended or moved meanwhile
    sandbox = None
    if run["sandbox_id"]:
        sandbox = ctx.db.query(Sandbox).with_index("by_sandbox_id", lambda q: q.eq("sandbox_id", run["sandbox_id"])).first()
    if run["status"] == "booting":
        seconds = (now - run["history"][0]["at"]) / 1000.0
        end_run(ctx, run, "failed", "boot_timeout",
                {"code": "BootTimeout", "message": f"its sandbox did not start within {seconds:g} s"}, sandbox)
    else:
        end_run(ctx, run, "failed", "max_duration",
                {"code": "MaxDuration", "message": f"the run reached its maximum duration of {run['max_duration_ms'] / 1000.0:g} s"},
                sandbox)
    if sandbox is not None and sandbox["state"] != "killed":
        sandbox_transition(ctx, sandbox, "killed", reason="reaped")
    return True


@internal_mutation
def end_batch(ctx: MutationCtx, run_ids: list[Id[SandboxRun]]) -> int:
    """End each of these runs that is still past its deadline; how many it ended."""
    return sum(_reap(ctx, ctx.db.get(run_id)) for run_id in run_ids)


@internal_action
async def tick(ctx: ActionCtx) -> dict[str, int]:
    """One reaper pass: {"candidates", "ended", "failed"}."""
    found: list[list[str]] = await ctx.run_query("corral/reapers:candidates", {})
    if not found:
        return {"candidates": 0, "ended": 0, "failed": 0}
    # A batch holds runs of one workspace: the batches in flight then never contend for the same
    # workspace's usage document.
    by_workspace: dict[str, list[str]] = {}
    for run_id, workspace_id in found:
        by_workspace.setdefault(workspace_id, []).append(run_id)
    batches = [ids[i:i + BATCH] for ids in by_workspace.values() for i in range(0, len(ids), BATCH)]
    gate = asyncio.Semaphore(PARALLEL)
    ended = failed = 0

    async def one(batch: list[str]) -> None:
        nonlocal ended, failed
        async with gate:
            try:
                done = await ctx.run_mutation("corral/reapers:end_batch", {"run_ids": batch})
                ended += done
                return
            except Exception:  # noqa: BLE001 - one bad run must not keep the others alive: retry one by one
                pass
            for run_id in batch:
                try:
                    done = await ctx.run_mutation("corral/reapers:end_batch", {"run_ids": [run_id]})
                    ended += done
                except Exception:  # noqa: BLE001
                    failed += 1

    await asyncio.gather(*(one(batch) for batch in batches))
    return {"candidates": len(found), "ended": ended, "failed": failed}
