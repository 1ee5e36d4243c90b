"""Scheduler throughput: 10,000 jobs (--quick: 2,000) all due at once, drained by the dispatcher.

The client schedules the jobs with `jobs:schedule` (1,000 per mutation, `ctx.scheduler.run_at`),
all due at one instant D a little after the scheduling is done, then waits until every job has
run. Each job is a scheduled mutation that records `ctx.now` when it started; so per job,
latency = start − D, and jobs per second = N ÷ (last start − D). Cases: one Corral node on
SQLite, one on PostgreSQL, and two nodes on one PostgreSQL schema (each job records the node
that ran it).

Same-run baseline, per database: a bare loop in this process that claims and completes the
same number of rows with direct SQL, one transaction per job like the scheduler's (select the
earliest due pending row — `FOR UPDATE SKIP LOCKED` on PostgreSQL — mark it done, insert the
run's row, commit), on a table shaped like the queue. The ratio is Corral ÷ bare loop.

    python -m bench.scheduler [--quick] [--json] [--jobs N] [--postgres URL|'']
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    HttpConnection,
    NodeProcess,
    emit_json,
    engine_version,
    fmt,
    log,
    machine_busy_seconds,
    parse_args,
    percentile,
    postgres_available,
    postgres_schema,
    print_table,
    processes_cpu_seconds,
    run_main,
    self_cpu_seconds,
)

BATCH = 250  # jobs per scheduling mutation: well inside the 1 s function limit on PostgreSQL too
FULL_JOBS = 10_000
QUICK_JOBS = 2_000
monotonic = time.monotonic


@dataclass
class Case:
    system: str
    backend: str
    nodes: int
    jobs: int = 0
    latencies: list[float] = field(default_factory=list)  # ms, due → start
    drain_seconds: float = float("nan")  # due → last start
    by_node: dict[str, int] = field(default_factory=dict)
    server_cpu: float = float("nan")  # cores: the node processes, while draining
    client_cpu: float = float("nan")  # cores: this process (the bare loop runs here)
    pg_cpu: float = float("nan")  # cores: PostgreSQL's processes
    other_cpu: float = float("nan")  # cores: everything else on the machine (PostgreSQL, other users' work)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.jobs / self.drain_seconds if self.drain_seconds and self.drain_seconds == self.drain_seconds else float("nan")

    def figures(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "p50_ms": percentile(self.latencies, 50), "p99_ms": percentile(self.latencies, 99),
                "jobs_per_second": self.rate, "drain_seconds": self.drain_seconds, "by_node": self.by_node,
                "server_cpu_cores": self.server_cpu, "client_cpu_cores": self.client_cpu,
                "postgres_cpu_cores": self.pg_cpu, "other_cpu_cores": self.other_cpu}


class Meter:
    """CPU use over a stretch of wall time, in cores: the nodes, this process, PostgreSQL, the rest."""

    def __init__(self, procs: list[NodeProcess]) -> None:
        self.procs = procs
        self.t0 = monotonic()
        self.nodes0 = sum(p.cpu_seconds() for p in procs)
        self.client0 = self_cpu_seconds()
        self.pg0 = processes_cpu_seconds("postgres")
        self.machine0 = machine_busy_seconds()

    def stop(self, case: Case) -> None:
        wall = max(monotonic() - self.t0, 1e-9)
        nodes = sum(p.cpu_seconds() for p in self.procs) - self.nodes0
        client = self_cpu_seconds() - self.client0
        pg = processes_cpu_seconds("postgres") - self.pg0
        machine = machine_busy_seconds() - self.machine0
        case.server_cpu = nodes / wall if self.procs else float("nan")
        case.client_cpu = client / wall
        case.pg_cpu = pg / wall
        case.other_cpu = max(0.0, machine - nodes - client) / wall  # PostgreSQL included


# -- Corral ----------------------------------------------------------------------------------

async def _call(conn: HttpConnection, kind: str, path: str, args: dict[str, Any]) -> Any:
    try:
        status, body = await conn.post(f"/api/{kind}", {"path": path, "args": args})
    except (asyncio.IncompleteReadError, ConnectionError):  # the server closed an idle keep-alive connection
        await conn.close()
        status, body = await conn.post(f"/api/{kind}", {"path": path, "args": args})
    if status != 200 or body.get("status") != "success":
        raise RuntimeError(f"{path} failed: {status} {body}")
    return body["value"]


async def corral_case(label: str, database: str | None, nodes: int, jobs: int) -> Case:
    case = Case("Corral", label, nodes)
    procs = [NodeProcess.corral(database=database, label=f"corral {label} #{i}", extra_env={"CORRAL_ENV_BENCH_NODE": f"node{i + 1}"})
             for i in range(nodes)]
    try:
        for proc in procs:
            proc.start()
        conns = [HttpConnection(p.port) for p in procs]
        # Warm up and measure how fast jobs are scheduled (these 200 are due in a day: never run here).
        t = monotonic()
        await _call(conns[0], "mutation", "jobs:schedule", {"start": -200, "count": 200, "due": (time.time() + 86400) * 1000})
        per_job = (monotonic() - t) / 200
        lead = max(1.5, per_job * jobs * 1.5 + 0.5)
        due = (time.time() + lead) * 1000.0
        log(f"Corral {label}, {nodes} node(s): scheduling {jobs:,} jobs due in {lead:.1f} s")
        t = monotonic()
        batches = [(start, min(BATCH, jobs - start)) for start in range(0, jobs, BATCH)]
        # Spread the scheduling over the nodes; each connection sends its batches in turn.
        async def send(conn: HttpConnection, mine: list[tuple[int, int]]) -> None:
            for start, count in mine:
                await _call(conn, "mutation", "jobs:schedule", {"start": start, "count": count, "due": due})

        await asyncio.gather(*(send(conns[i % nodes], batches[i::nodes]) for i in range(nodes)))
        scheduled_at = time.time() * 1000.0
        if scheduled_at > due:
            case.note = f"scheduling ended {scheduled_at - due:.0f} ms after the due time"
        await asyncio.sleep(max(0.0, due / 1000.0 - time.time()))
        meter = Meter(procs)
        deadline = monotonic() + max(120.0, jobs / 20)
        while await _call(conns[0], "query", "jobs:left", {"due": due}):
            if monotonic() > deadline:
                case.note = "not every job ran in time"
                break
            await asyncio.sleep(0.1)
        meter.stop(case)
        log(f"Corral {label}: drained in {monotonic() - t:.1f} s since scheduling began")
        rows: list[list[Any]] = []
        cursor = None
        while True:
            page = await _call(conns[0], "query", "jobs:runs", {"due": due, "cursor": cursor})
            rows += page["rows"]
            if page["done"]:
                break
            cursor = page["cursor"]
        case.jobs = len(rows)
        case.latencies = [started - due for _n, started, _node in rows]
        if rows:
            case.drain_seconds = (max(started for _n, started, _node in rows) - due) / 1000.0
        for _n, _started, node in rows:
            case.by_node[node] = case.by_node.get(node, 0) + 1
        duplicates = len(rows) - len({n for n, _s, _node in rows})
        if duplicates:
            case.note = (case.note + "; " if case.note else "") + f"{duplicates} jobs ran twice"
        for conn in conns:
            await conn.close()
    finally:
        for proc in procs:
            proc.stop()
    return case


# -- the bare loop -------------------------------------------------------------------------

BARE_SCHEMA = [
    "CREATE TABLE bare_jobs (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, state TEXT NOT NULL, due DOUBLE PRECISION NOT NULL,"
    " completed DOUBLE PRECISION)",
    "CREATE INDEX bare_jobs_by_state_due ON bare_jobs (state, due)",
    "CREATE TABLE bare_runs (n INTEGER NOT NULL, due DOUBLE PRECISION NOT NULL, started DOUBLE PRECISION NOT NULL)",
]


def _bare_loop(conn: Any, param: str, lock: str, jobs: int, due: float, begin: str, case: Case) -> tuple[list[float], float]:
    """Claim the earliest due job, complete it and record its run, one transaction per job."""
    p = param
    claim = f"SELECT id, n FROM bare_jobs WHERE state = 'pending' AND due <= {p} ORDER BY state, due LIMIT 1{lock}"
    finish = f"UPDATE bare_jobs SET state = 'success', completed = {p} WHERE id = {p}"
    record = f"INSERT INTO bare_runs (n, due, started) VALUES ({p}, {p}, {p})"
    while time.time() * 1000.0 < due:
        time.sleep(0.001)
    meter = Meter([])
    latencies: list[float] = []
    last = due
    while True:
        if begin:
            conn.execute(begin)
        now = time.time() * 1000.0
        row = conn.execute(claim, (now,)).fetchone()
        if row is None:
            conn.execute("COMMIT")
            if len(latencies) >= jobs:
                break
            continue
        conn.execute(record, (row[1], due, now))
        conn.execute(finish, (time.time() * 1000.0, row[0]))
        conn.execute("COMMIT")
        latencies.append(now - due)
        last = now
    meter.stop(case)
    return latencies, (last - due) / 1000.0


def bare_sqlite(jobs: int) -> Case:
    case = Case("bare SQL loop", "SQLite", 1)
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "bare.sqlite3", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in BARE_SCHEMA:
            conn.execute(statement.replace("DOUBLE PRECISION", "REAL"))
        due = (time.time() + 0.5) * 1000.0
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO bare_jobs (n, state, due) VALUES (?, 'pending', ?)", [(n, due) for n in range(jobs)])
        conn.execute("COMMIT")
        case.latencies, case.drain_seconds = _bare_loop(conn, "?", "", jobs, due, "BEGIN IMMEDIATE", case)
        conn.close()
    case.jobs = len(case.latencies)
    return case


def bare_postgres(url: str, jobs: int) -> Case:
    import psycopg

    case = Case("bare SQL loop", "PostgreSQL", 1)
    with postgres_schema(url) as schema_url, psycopg.connect(schema_url, autocommit=True) as conn:
        for statement in BARE_SCHEMA:
            conn.execute(statement.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY"))
        due = (time.time() + 0.5) * 1000.0
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany("INSERT INTO bare_jobs (n, state, due) VALUES (%s, 'pending', %s)", [(n, due) for n in range(jobs)])
        case.latencies, case.drain_seconds = _bare_loop(conn, "%s", " FOR UPDATE SKIP LOCKED", jobs, due,
                                                        "BEGIN ISOLATION LEVEL SERIALIZABLE", case)
    case.jobs = len(case.latencies)
    return case


# -- main ------------------------------------------------------------------------------------

def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=None, help=f"jobs per case (default {FULL_JOBS:,}; --quick {QUICK_JOBS:,})")


async def main(args: argparse.Namespace) -> list[Case]:
    jobs = args.jobs or (QUICK_JOBS if args.quick else FULL_JOBS)
    cases: list[Case] = []
    log(f"bare SQL loop, SQLite: {jobs:,} jobs")
    cases.append(await asyncio.to_thread(bare_sqlite, jobs))
    cases.append(await corral_case("SQLite", None, 1, jobs))
    why_not = postgres_available(args.postgres)
    if why_not is None:
        log(f"bare SQL loop, PostgreSQL: {jobs:,} jobs")
        cases.append(await asyncio.to_thread(bare_postgres, args.postgres, jobs))
        with postgres_schema(args.postgres) as url:
            cases.append(await corral_case("PostgreSQL", url, 1, jobs))
        with postgres_schema(args.postgres) as url:
            cases.append(await corral_case("PostgreSQL", url, 2, jobs))
    else:
        log(f"skipping the PostgreSQL cases: {why_not}")
    return cases


def report(cases: list[Case], as_json: bool) -> None:
    print(f"engine: {engine_version()}")
    rows = []
    for c in cases:
        split = " / ".join(f"{c.by_node[k]:,}" for k in sorted(c.by_node)) if c.nodes > 1 else ""
        rows.append([c.system, c.backend, c.nodes, c.jobs, percentile(c.latencies, 50), percentile(c.latencies, 99),
                     c.rate, c.server_cpu, c.client_cpu, f"{fmt(c.other_cpu, 2)} ({fmt(c.pg_cpu, 2)})", split, c.note])
    print_table("due time → start, jobs all due at once (CPU in cores while draining; 'other' includes PostgreSQL, in brackets)",
                ["system", "backend", "nodes", "jobs", "p50 ms", "p99 ms", "jobs/s", "node CPU", "client CPU",
                 "other CPU (PG)", "jobs per node", "note"], rows)
    bare = {c.backend: c for c in cases if c.system == "bare SQL loop"}
    ratios = []
    for c in cases:
        if c.system == "Corral" and c.backend in bare:
            ratio = c.rate / bare[c.backend].rate if bare[c.backend].rate else float("nan")
            ratios.append([f"Corral {c.backend}, {c.nodes} node{'s' if c.nodes > 1 else ''}", fmt(c.rate, 0),
                           fmt(bare[c.backend].rate, 0), f"{ratio:.3f}×"])
    print_table("jobs per second: Corral ÷ the bare SQL loop on the same database (same run)",
                ["case", "Corral jobs/s", "bare loop jobs/s", "ratio"], ratios)
    if as_json:
        emit_json("scheduler", {f"{c.system.split()[0].lower()}_{c.backend.lower()}_{c.nodes}": c.figures() for c in cases})


def run(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], _args, argv)
    cases = run_main(main(args))
    report(cases, args.json)


if __name__ == "__main__":
    run()
