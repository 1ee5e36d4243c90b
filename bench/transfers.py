"""Fund transfers: SpacetimeDB's keynote-2 workload, as used to compare with Convex.

100,000 accounts (--quick: 10,000); 50 concurrent sync-protocol connections, each looping:
send a `accounts:transfer` Mutation between two distinct accounts drawn (a) uniformly or
(b) from a Zipf distribution with alpha 1.5 (high contention: the hottest account is in
about 40 % of draws). A transfer is done when its MutationResponse and a Transition whose
endVersion.ts ≥ the response's ts have both arrived (what a Convex client waits for before
resolving the mutation's promise). TPS = transfers done inside a fixed window, after a warm-up.

Same-run baselines:
  direct SQL  — the same transfers as SQL transactions (BEGIN IMMEDIATE; 2 SELECT; 2 UPDATE;
                COMMIT) from this one process on a SQLite file: the storage ceiling;
  bare WS     — a Starlette WebSocket endpoint under uvicorn running each transfer as one
                SQLite transaction, no engine, driven by the same 50-connection client: the
                transport ceiling.

Target: Corral ≥ 1,500 TPS at both contention levels on SQLite. Convex's published figures
(keynote-2): 438 TPS low contention, 58 TPS high contention.

    python -m bench.transfers [--quick] [--json] [--seconds S] [--accounts N] [--postgres URL|'']
                              [--only corral-sqlite|corral-postgres|baselines] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import itertools
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .common import (
    CPUS,
    CpuMeter,
    HttpConnection,
    NodeProcess,
    Profiler,
    SyncConnection,
    close_all,
    decode_int,
    emit_json,
    engine_version,
    fmt,
    log,
    open_many,
    parse_args,
    percentile,
    postgres_available,
    postgres_schema,
    print_table,
    run_main,
    ts_from_wire,
    verdict,
)

CONNECTIONS = 50
ALPHA = 1.5
INITIAL_BALANCE = 1_000_000
AMOUNT = 1
SEED_BATCH = 1_000  # inserts per seeding mutation: well inside the 1 s function time limit, also on PostgreSQL
TARGET_TPS = 1_500
CONVEX_TPS = {"uniform": 438, "zipf": 58}
monotonic = time.monotonic

Picker = Callable[[], tuple[int, int]]


def make_picker(kind: str, n: int, seed: int) -> Picker:
    """Two distinct account indexes, drawn uniformly or from Zipf(alpha) over ranks 0..n-1."""
    rng = random.Random(seed)
    rand = rng.random
    if kind == "uniform":
        randrange = rng.randrange

        def one() -> int:
            return randrange(n)
    else:
        cdf = _zipf_cdf(n, ALPHA)
        search = bisect.bisect_left

        def one() -> int:
            return search(cdf, rand())

    def pick() -> tuple[int, int]:
        a = one()
        b = one()
        while b == a:
            b = one()
        return a, b

    return pick


_CDF_CACHE: dict[tuple[int, float], list[float]] = {}


def _zipf_cdf(n: int, alpha: float) -> list[float]:
    key = (n, alpha)
    if key not in _CDF_CACHE:
        weights = [1.0 / (i + 1) ** alpha for i in range(n)]
        total = sum(weights)
        cdf = list(itertools.accumulate(w / total for w in weights))
        cdf[-1] = 1.0
        _CDF_CACHE[key] = cdf
    return _CDF_CACHE[key]


@dataclass
class Case:
    system: str
    backend: str
    contention: str
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = float("nan")
    client_cpu: float = float("nan")
    other_cpu: float = float("nan")
    pg_cpu: float = float("nan")
    chain_errors: int = 0
    note: str = ""
    profile: str = ""

    @property
    def tps(self) -> float:
        return self.done / self.seconds if self.seconds else float("nan")

    def figures(self) -> dict[str, Any]:
        return {"tps": self.tps, "done": self.done, "failed": self.failed, "seconds": self.seconds,
                "p50_ms": percentile(self.latencies, 50), "p99_ms": percentile(self.latencies, 99),
                "server_cpu_cores": self.server_cpu, "client_cpu_cores": self.client_cpu,
                "other_cpu_cores": self.other_cpu, "postgres_cpu_cores": self.pg_cpu, "chain_errors": self.chain_errors}


# -- the sync-protocol load generator ---------------------------------------------

async def seed_accounts(url: str, n: int) -> list[str]:
    conn = await SyncConnection.open(url)
    try:
        ids: list[str] = []
        while len(ids) < n:
            count = min(SEED_BATCH, n - len(ids))
            ids += await conn.mutation("accounts:seed", {"count": count, "balance": INITIAL_BALANCE}, timeout=120)
        return ids
    finally:
        await conn.close()


async def drive(url: str, ids: list[str], case: Case, kind: str, duration: float, warmup: float,
                meter_node: NodeProcess | None, profile: Path | None = None) -> Case:
    """50 connections, each looping transfer → (MutationResponse + Transition) for `duration` s after `warmup`."""
    conns = await open_many(url, CONNECTIONS)
    n = len(ids)
    begin = monotonic() + 0.2
    measure_from = begin + warmup
    stop_at = measure_from + duration
    dumps, loads = orjson.dumps, orjson.loads
    latencies = case.latencies

    async def worker(conn: SyncConnection, seed: int) -> None:
        pick = make_picker(kind, n, seed)
        send, recv = conn.ws.send, conn.ws.recv
        apply_transition = conn.apply_transition
        request_id = 0
        delay = begin - monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        while True:
            start = monotonic()
            if start >= stop_at:
                return
            a, b = pick()
            request_id += 1
            await send(dumps({"type": "Mutation", "requestId": request_id, "udfPath": "accounts:transfer",
                              "args": [{"from_id": ids[a], "to_id": ids[b], "amount": AMOUNT}]}).decode())
            response_ts = -1
            ok = True
            while True:
                message = loads(await recv())
                kind_ = message["type"]
                if kind_ == "Transition":
                    apply_transition(message)
                    if 0 <= response_ts <= conn.ts:
                        break
                elif kind_ == "MutationResponse":
                    if not message["success"]:
                        ok = False
                        break
                    response_ts = ts_from_wire(message["ts"])
                    if response_ts <= conn.ts:
                        break
                elif kind_ == "FatalError":
                    raise RuntimeError(f"server sent FatalError: {message.get('error')}")
            end = monotonic()
            if measure_from <= end < stop_at:
                if ok:
                    case.done += 1
                    latencies.append((end - start) * 1000.0)
                else:
                    case.failed += 1

    async def meter() -> None:
        await asyncio.sleep(max(0.0, measure_from - monotonic()))
        cpu = CpuMeter(meter_node)
        profiler = Profiler(meter_node.pid, profile, duration) if profile and meter_node else None
        await asyncio.sleep(max(0.0, stop_at - monotonic()))
        case.server_cpu, case.client_cpu, case.other_cpu = cpu.read3()
        case.pg_cpu = cpu.postgres
        if profiler is not None:
            case.profile = await profiler.finish()

    tasks = [asyncio.create_task(meter())] + [asyncio.create_task(worker(c, 1000 + i)) for i, c in enumerate(conns)]
    try:
        # Every worker stops by itself after stop_at; one stuck waiting for the server is cancelled.
        finished, stuck = await asyncio.wait(tasks, timeout=max(0.0, stop_at - monotonic()) + 20)
        for task in stuck:
            task.cancel()
        if stuck:
            case.note = f"{len(stuck)} connections still waiting 20 s after the window"
        for task in finished:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        case.chain_errors = sum(c.chain_errors for c in conns)
        await close_all(conns)
    case.seconds = duration
    return case


async def corral_backend(label: str, database: str | None, n: int, duration: float, warmup: float,
                         switch_interval: float | None, profile_dir: Path | None) -> tuple[list[Case], float, str]:
    node = NodeProcess.corral(database=database, label=f"corral ({label})", switch_interval=switch_interval)
    node.start()
    try:
        log(f"Corral {label}: node pid {node.pid} on port {node.port}; seeding {n:,} accounts")
        t = monotonic()
        ids = await seed_accounts(node.ws_url, n)
        log(f"Corral {label}: seeded in {monotonic() - t:.1f} s")
        cases = []
        for kind in ("uniform", "zipf"):
            profile = profile_dir / f"transfers-corral-{label.lower()}-{kind}.txt" if profile_dir else None
            case = await drive(node.ws_url, ids, Case("Corral", label, kind), kind, duration, warmup, node, profile)
            log(f"Corral {label} {kind}: {case.tps:,.0f} TPS ({case.failed} failed)")
            cases.append(case)
        check = await _conservation(node, ids)
        return cases, node.peak_rss_mb(), check
    finally:
        node.stop()


async def _conservation(node: NodeProcess, ids: list[str]) -> str:
    """Transfers move money, never make it: the balances must still sum to n × the initial balance."""
    http = HttpConnection(node.port)
    total = 0
    try:
        for start in range(0, len(ids), 500):
            status, reply = await http.post("/api/query", {"path": "accounts:balances", "args": {"ids": ids[start:start + 500]},
                                                           "format": "convex_encoded_json"})
            if status != 200 or reply.get("status") != "success":
                return f"conservation check failed to run: {reply}"
            total += decode_int(reply["value"])
    finally:
        await http.close()
    expected = len(ids) * INITIAL_BALANCE
    return "balances conserved" if total == expected else f"BALANCES NOT CONSERVED: {total} != {expected}"


async def bare_ws_backend(n: int, duration: float, warmup: float) -> tuple[list[Case], float, str]:
    def command(port: int, tmp: Path) -> list[str]:
        return [sys.executable, "-m", "bench._bare_ws", "--port", str(port), "--db", str(tmp / "bare.sqlite3")]

    server = NodeProcess("bare WS", command, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    server.start()
    try:
        assert server.dir is not None
        db_path = server.dir / "bare.sqlite3"
        ids = await seed_accounts(server.ws_url, n)
        cases = []
        for kind in ("uniform", "zipf"):
            case = await drive(server.ws_url, ids, Case("bare WS", "SQLite", kind), kind, duration, warmup, server)
            log(f"bare WS {kind}: {case.tps:,.0f} TPS")
            cases.append(case)
        with sqlite3.connect(db_path) as db:
            total = db.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
        check = "balances conserved" if total == n * INITIAL_BALANCE else f"BALANCES NOT CONSERVED: {total}"
        return cases, server.peak_rss_mb(), check
    finally:
        server.stop()


# -- the storage ceiling ------------------------------------------------------------

def direct_sql(n: int, duration: float) -> tuple[list[Case], str]:
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-sql-"))
    path = tmp / "direct.sqlite3"
    try:
        db = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
        ids = [base64.b32encode(os.urandom(20)).decode().lower() for _ in range(n)]
        db.execute("BEGIN")
        db.executemany("INSERT INTO accounts (id, balance) VALUES (?, ?)", [(i, INITIAL_BALANCE) for i in ids])
        db.execute("COMMIT")
        cases = []
        execute = db.execute
        for kind in ("uniform", "zipf"):
            pick = make_picker(kind, n, 7)
            case = Case("direct SQL", "SQLite", kind)
            t0 = time.perf_counter()
            cpu = CpuMeter(None)
            deadline = t0 + duration
            done = 0
            while True:
                for _ in range(64):
                    a, b = pick()
                    src, dst = ids[a], ids[b]
                    execute("BEGIN IMMEDIATE")
                    bal_a = execute("SELECT balance FROM accounts WHERE id = ?", (src,)).fetchone()[0]
                    bal_b = execute("SELECT balance FROM accounts WHERE id = ?", (dst,)).fetchone()[0]
                    if bal_a >= AMOUNT:
                        execute("UPDATE accounts SET balance = ? WHERE id = ?", (bal_a - AMOUNT, src))
                        execute("UPDATE accounts SET balance = ? WHERE id = ?", (bal_b + AMOUNT, dst))
                    execute("COMMIT")
                done += 64
                if time.perf_counter() >= deadline:
                    break
            case.seconds = time.perf_counter() - t0
            case.done = done
            _nan, case.client_cpu, case.other_cpu = cpu.read3()
            case.pg_cpu = cpu.postgres
            log(f"direct SQL {kind}: {case.tps:,.0f} TPS")
            cases.append(case)
        total = execute("SELECT sum(balance) FROM accounts").fetchone()[0]
        db.close()
        return cases, ("balances conserved" if total == n * INITIAL_BALANCE else f"BALANCES NOT CONSERVED: {total}")
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


# -- main -----------------------------------------------------------------------------

def _engine_line(before: str) -> str:
    after = engine_version()
    return before if after == before else f"{before} at the start, {after} at the end (the engine changed during the run)"


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per case")
    parser.add_argument("--accounts", type=int, default=None, help="number of accounts")
    parser.add_argument("--only", choices=["corral-sqlite", "corral-postgres", "baselines"], default=None,
                        help="run one part only (for profiling); ratios need the full set")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record a py-spy --gil profile of the Corral node during each measured case into DIR")
    parser.add_argument("--switch-interval", type=float, default=None, metavar="SECONDS",
                        help="experiment: run the Corral node with sys.setswitchinterval(SECONDS) (Python's default: 0.005)")


async def main(args: argparse.Namespace) -> int:
    mode = "quick" if args.quick else "full"
    n = args.accounts or (10_000 if args.quick else 100_000)
    duration = args.seconds or (5.0 if args.quick else 20.0)
    warmup = 0.5 if args.quick else 2.0
    t_start = monotonic()
    load_before = os.getloadavg()
    version_before = engine_version()
    cases: list[Case] = []
    rss: dict[str, float] = {}
    checks: dict[str, str] = {}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "baselines"):
        sql_cases, checks["direct SQL"] = direct_sql(n, min(duration, 2.0) if args.quick else duration)
        cases += sql_cases
        bare_cases, rss["bare WS server"], checks["bare WS"] = await bare_ws_backend(n, duration, warmup)
        cases += bare_cases
    if args.only in (None, "corral-sqlite"):
        c, rss["Corral SQLite"], checks["Corral SQLite"] = await corral_backend("SQLite", None, n, duration, warmup, args.switch_interval, args.profile)
        cases += c
    if args.only in (None, "corral-postgres"):
        pg_skip = postgres_available(args.postgres)
        if pg_skip is None:
            with postgres_schema(args.postgres) as url:
                c, rss["Corral PostgreSQL"], checks["Corral PostgreSQL"] = await corral_backend("PostgreSQL", url, n, duration, warmup, args.switch_interval, args.profile)
            cases += c
        else:
            log(f"PostgreSQL cases skipped: {pg_skip}")

    print(f"\nbench.transfers ({mode}): {n:,} accounts; {CONNECTIONS} sync-protocol connections from one client "
          f"process (uvloop, orjson), one transfer in flight per connection; {duration:g} s measured per case after "
          f"{warmup:g} s warm-up; Zipf alpha {ALPHA}; machine: {CPUS} cores shared by client, server, PostgreSQL and "
          f"anything else running")
    rows = []
    for c in cases:
        notes = [c.note] if c.note else []
        if c.chain_errors:
            notes.append(f"Transition chain errors={c.chain_errors}")
        rows.append([c.system, c.backend, "low (uniform)" if c.contention == "uniform" else f"high (zipf {ALPHA})",
                     fmt(c.tps, 0), percentile(c.latencies, 50), percentile(c.latencies, 99), c.failed,
                     f"{c.server_cpu:.2f}" if c.server_cpu == c.server_cpu else "-", f"{c.client_cpu:.2f}",
                     f"{c.other_cpu:.2f} ({c.pg_cpu:.2f})", "; ".join(notes)])
    print_table("transfers per second (done = MutationResponse + a Transition at or past its ts)",
                ["system", "backend", "contention", "TPS", "p50 ms", "p99 ms", "failed", "server CPU", "client CPU",
                 "other CPU (PG)", "note"], rows)
    print("direct SQL runs in the client process (its CPU is the client column); 'failed': the mutation returned "
          "an error (PostgreSQL: serialization conflicts left after the engine's retries). CPU columns: cores used "
          "during the case by the server, by this client process, and by everything else on the machine (in brackets: "
          "PostgreSQL's processes, part of it).")

    figures: dict[str, Any] = {"mode": mode, "accounts": n, "connections": CONNECTIONS, "seconds": duration,
                               "alpha": ALPHA, "cpus": CPUS}
    for c in cases:
        figures[f"{c.system.lower().replace(' ', '_')}_{c.backend.lower()}_{c.contention}"] = c.figures()
    print()
    find = {(c.system, c.backend, c.contention): c for c in cases}
    verdicts = []
    for contention in ("uniform", "zipf"):
        label = "low contention (uniform)" if contention == "uniform" else f"high contention (zipf {ALPHA})"
        for backend in ("SQLite", "PostgreSQL"):
            corral = find.get(("Corral", backend, contention))
            if corral is None:
                continue
            parts = []
            for base in ("direct SQL", "bare WS"):
                ref = find.get((base, "SQLite", contention))
                if ref is not None:
                    ratio = corral.tps / ref.tps
                    figures[f"corral_{backend.lower()}_{contention}_over_{base.lower().replace(' ', '_')}"] = ratio
                    parts.append(f"{ratio:.3f}× {base} ({fmt(ref.tps, 0)})")
            convex = corral.tps / CONVEX_TPS[contention]
            figures[f"corral_{backend.lower()}_{contention}_over_convex_published"] = convex
            parts.append(f"{convex:.1f}× Convex's published {CONVEX_TPS[contention]}")
            print(f"Corral {backend}, {label}: {fmt(corral.tps, 0)} TPS = " + ", ".join(parts))
        corral_sqlite = find.get(("Corral", "SQLite", contention))
        if corral_sqlite is not None:
            ok = corral_sqlite.tps >= TARGET_TPS and corral_sqlite.chain_errors == 0
            verdicts.append(ok)
            figures[f"target_sqlite_{contention}"] = verdict(ok)
            print(f"  target: Corral SQLite ≥ {TARGET_TPS:,} TPS at {label}: {verdict(ok)}")
    for c in cases:
        if c.profile:
            print(f"\nprofile of the node, Corral {c.backend} {c.contention} (share of samples holding the GIL):\n{c.profile}")
    for name, check in checks.items():
        print(f"{name}: {check}")
        figures[f"check_{name.lower().replace(' ', '_')}"] = check
    for name, mb in rss.items():
        print(f"peak RSS of the {name} process: {mb:,.0f} MiB")
        figures[f"peak_rss_mb_{name.lower().replace(' ', '_')}"] = mb
    figures["wall_seconds"] = monotonic() - t_start
    figures["engine"] = _engine_line(version_before)
    print(f"engine: {figures['engine']}")
    figures["loadavg_before"], figures["loadavg_after"] = load_before[0], os.getloadavg()[0]
    print(f"load average before/after: {load_before[0]:.2f} / {figures['loadavg_after']:.2f}; "
          f"wall time: {figures['wall_seconds']:.0f} s")
    if args.json:
        emit_json("transfers", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main(parse_args(__doc__.splitlines()[0], _extra))))
