"""Reaper ticks: cost follows candidates, not table size.

A Corral node in this process on SQLite (and PostgreSQL when reachable) whose database holds N
running runs (100,000; --quick: 20,000), and, in the same run, one on a database of 1,000: in each,
100 runs are idle (their sandboxes' idle deadlines passed) and 100 are stuck booting past their boot
timeout. Timed: the idle sweep (`corral/sandboxes:pause_idle`: select the idle run sandboxes
through the (state, idle_at) index, kill each and end its run in the same transaction) and the
reaper tick (`corral/reapers:tick`: select the overdue runs through the (status, deadline) index,
end them in parallel batches). Selection and marking only: the runner kills the sandboxes it
holds after the commit (bench.sandboxes measures that); no runner holds these. Each figure is the
median of 7 rounds after a warm-up one, fresh candidates seeded (untimed) before each. The ratio big ÷ small
must stay under 2.

    python -m bench.reapers [--quick] [--json] [--postgres URL|'']
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corral import MutationCtx, internal_mutation
from corral.app.schema import Sandbox, SandboxRun, Thread, Workspace
from corral.engine.auth import Caller
from corral.engine.clock import Clock
from corral.engine.settings import Settings

from .common import (
    emit_json,
    engine_version,
    fmt,
    log,
    parse_args,
    postgres_available,
    postgres_schema,
    print_table,
    run_main,
)

ADMIN = Caller.admin()
FULL_RUNS = 100_000
QUICK_RUNS = 20_000
SMALL_RUNS = 1_000
CANDIDATES = 100
ROUNDS = 7
SEED_BATCH = 500
LIMIT_RATIO = 2.0
HOUR = 3_600_000.0


@internal_mutation
def seed_workspace(ctx: MutationCtx) -> list[str]:
    workspace = ctx.db.insert(Workspace(name="bench", owner_id="bench|owner"))
    thread = ctx.db.insert(Thread(workspace_id=workspace, title="bench", creator_id="bench|owner", status="active"))
    return [workspace, thread]


@internal_mutation
def seed_runs(ctx: MutationCtx, workspace_id: str, thread_id: str, start: int, count: int, kind: str) -> None:
    """`count` runs: `running` (busy sandboxes), `idle` (sandboxes idle past their deadline) or `stuck` (booting, overdue)."""
    now = float(ctx.now)
    for i in range(start, start + count):
        sandbox_id = f"b{workspace_id[:6]}{kind[0]}{i}"
        booting = kind == "stuck"
        ctx.db.insert(SandboxRun(
            workspace_id=workspace_id, thread_id=thread_id, kind="job", status="booting" if booting else "running",
            template="base", sandbox_id=None if booting else sandbox_id, error=None,
            history=[{"status": "booting", "at": now - HOUR, "reason": "created"}], max_duration_ms=2 * HOUR,
            idle_timeout_ms=900_000.0, deadline=now - 1.0 if booting else now + HOUR, cpu_count=2, memory_mb=512,
            created_by="bench|owner", started_at=None if booting else now - HOUR, ended_at=None, month="2026-01",
            cost={"running_ms": 0.0, "paused_ms": 0.0, "usd": 0.0}))
        if booting:
            continue
        active = now - (HOUR if kind == "idle" else 1.0)
        ctx.db.insert(Sandbox(
            sandbox_id=sandbox_id, owner=f"workspace|{workspace_id}", template="base", runner="bench", state="running",
            generation=1, live=True, state_since=now - HOUR, end_at=now + HOUR, timeout=2 * HOUR, on_timeout="kill",
            auto_resume=False, last_activity=active, metadata={},
            limits={"cpu_count": 2, "memory_mb": 512, "disk_mb": 1024, "pids": 512}, allow_internet=False,
            access_token="", started_at=now - HOUR, paused_at=None, ended_at=None, memory_kept=True,
            idle_timeout=900_000.0, on_idle="kill", idle_at=active + 900_000.0))


class Bench:
    def __init__(self, database: str | None, data_dir: Path) -> None:
        from corral.node import Node

        settings = Settings(data_dir=data_dir, database_url=database, runner_embedded=False, function_timeout=30.0)
        self.node = Node(settings, clock=Clock())
        self.node.registry.add_module("bench_reapers", sys.modules[__name__], "bench/reapers.py")
        self.node.start(serving=False)
        self.engine = self.node.engine
        self.seeded = 0

    async def mutation(self, path: str, args: dict[str, Any] | None = None) -> Any:
        return await self.engine.call_mutation(path, args or {}, ADMIN, internal_ok=True)

    async def workspace(self, runs: int) -> tuple[str, str]:
        workspace, thread = await self.mutation("bench_reapers:seed_workspace")
        await self.seed(workspace, thread, runs, "running")
        return workspace, thread

    async def seed(self, workspace: str, thread: str, count: int, kind: str) -> None:
        for start in range(0, count, SEED_BATCH):
            await self.mutation("bench_reapers:seed_runs", {"workspace_id": workspace, "thread_id": thread,
                                                            "start": self.seeded + start, "count": min(SEED_BATCH, count - start),
                                                            "kind": kind})
        self.seeded += count

    async def round(self, workspace: str, thread: str) -> tuple[float, float]:
        """(idle sweep ms, reaper tick ms) with CANDIDATES fresh candidates of each."""
        await self.seed(workspace, thread, CANDIDATES, "idle")
        await self.seed(workspace, thread, CANDIDATES, "stuck")
        t = time.perf_counter()
        ended = await self.mutation("corral/sandboxes:pause_idle")
        idle_ms = (time.perf_counter() - t) * 1000.0
        t = time.perf_counter()
        ticked = await self.engine.call_action("corral/reapers:tick", {}, ADMIN, internal_ok=True)
        tick_ms = (time.perf_counter() - t) * 1000.0
        if ended != CANDIDATES or ticked["ended"] != CANDIDATES:
            raise RuntimeError(f"expected {CANDIDATES} of each ended, got {ended} idle and {ticked}")
        return idle_ms, tick_ms

    def close(self) -> None:
        self.node.stop()


async def measure(label: str, database: str | None, runs: int) -> dict[str, Any]:
    """One node on its own database holding `runs` running runs: the median tick times."""
    with tempfile.TemporaryDirectory(prefix="bench-reapers-") as tmp:
        bench = Bench(database, Path(tmp) / "data")
        try:
            log(f"{label}: seeding {runs:,} running runs")
            workspace, thread = await bench.workspace(runs)
            await bench.round(workspace, thread)  # warm-up: caches, prepared statements
            rounds = [await bench.round(workspace, thread) for _ in range(ROUNDS)]
            return {"runs": runs, "idle_sweep_ms": statistics.median(r[0] for r in rounds),
                    "reaper_tick_ms": statistics.median(r[1] for r in rounds)}
        finally:
            bench.close()


async def case(label: str, database: Any, big: int) -> dict[str, Any]:
    """`database`: None for SQLite, or a callable giving a fresh PostgreSQL schema's URL per table."""
    figures: dict[str, Any] = {}
    for name, runs in (("small", SMALL_RUNS), ("big", big)):
        if database is None:
            figures[name] = await measure(label, None, runs)
        else:
            with database() as url:
                figures[name] = await measure(label, url, runs)
    for what in ("idle_sweep_ms", "reaper_tick_ms"):
        figures[what.replace("_ms", "_ratio")] = figures["big"][what] / figures["small"][what]
    return {"backend": label, **figures}


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    big = QUICK_RUNS if args.quick else FULL_RUNS
    cases = [await case("SQLite", None, big)]
    why_not = postgres_available(args.postgres) if args.postgres else "no PostgreSQL URL given"
    if why_not is None:
        cases.append(await case("PostgreSQL", lambda: postgres_schema(args.postgres), big))
    else:
        log(f"skipping the PostgreSQL case: {why_not}")
    return cases


def report(cases: list[dict[str, Any]], as_json: bool) -> bool:
    print(f"engine: {engine_version()}")
    rows = []
    ok = True
    for c in cases:
        for what, title in (("idle_sweep", "idle sweep"), ("reaper_tick", "reaper tick")):
            ratio = c[f"{what}_ratio"]
            ok = ok and ratio < LIMIT_RATIO
            rows.append([c["backend"], title, f"{c['small'][f'{what}_ms']:.2f}", f"{c['big']['runs']:,}",
                         f"{c['big'][f'{what}_ms']:.2f}", f"{ratio:.2f}×", "PASS" if ratio < LIMIT_RATIO else "FAIL"])
    print_table(f"one tick, {CANDIDATES} candidates, median of {ROUNDS} (ms): {SMALL_RUNS:,} runs against a bigger table "
                f"(selection and marking; sandbox kills apart)",
                ["backend", "tick", f"{fmt(SMALL_RUNS)} runs ms", "big table runs", "big ms", "ratio", f"< {LIMIT_RATIO:g}×"], rows)
    if as_json:
        emit_json("reapers", {c["backend"].lower(): c for c in cases})
    return ok


def run(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], None, argv)
    cases = run_main(main(args))
    if not report(cases, args.json):
        raise SystemExit(1)


if __name__ == "__main__":
    run()
