"""Live queries: commit → subscriber-update latency, against HTTP polling in the same run.

1,000 subscriptions to `messages:latest {room}` over 100 rooms (default: 1,000 sockets with
one subscription each, like 1,000 browser tabs each showing one room; `--sockets 100` puts
ten subscriptions on each socket instead). A writer commits 20 messages a second to random
rooms; each message body carries the writer's send time (a monotonic clock shared by every
task of this one client process), and every subscriber of that room records
`receive time − send time` when the message first appears in its query result.

Same-run baseline: 100 HTTP clients polling the same query (one room each) every 100 ms with
`POST /api/query`; latency is the first poll that returns the message minus its send time.

Cases: SQLite (gated in the full run: p50 ≤ 10 ms and p99 ≤ 50 ms), PostgreSQL, and, with no
gate, all 1,000 subscriptions watching one room.

    python -m bench.live_queries [--quick] [--json] [--sockets 1000|100] [--seconds S]
                                 [--postgres URL|''] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    CPUS,
    CpuMeter,
    HttpConnection,
    NodeProcess,
    Profiler,
    SyncConnection,
    close_all,
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
    verdict,
)

SUBSCRIPTIONS = 1000
ROOMS = 100
RATE = 20.0  # messages a second
POLLERS = 100
POLL_INTERVAL = 0.1
GATE_P50_MS = 10.0
GATE_P99_MS = 50.0
monotonic = time.monotonic


@dataclass
class Result:
    case: str
    backend: str
    clients: str
    samples: list[float] = field(default_factory=list)
    expected: int = 0
    sent: int = 0
    failed_writes: int = 0
    unacknowledged: int = 0
    commit_rate: float = float("nan")
    commit_ms: list[float] = field(default_factory=list)
    server_cpu: float = float("nan")
    client_cpu: float = float("nan")
    other_cpu: float = float("nan")
    pg_cpu: float = float("nan")
    note: str = ""
    errors: int = 0
    profile: str = ""

    def pct(self, p: float) -> float:
        """Percentile over every expected delivery; one never seen counts as slower than all seen (inf)."""
        missing = max(0, self.expected - len(self.samples))
        if not missing:
            return percentile(self.samples, p)
        if not self.samples or (len(self.samples) + missing - 1) * p / 100.0 > len(self.samples) - 1:
            return float("inf")
        return percentile(self.samples + [float("inf")] * missing, p)

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)

    @property
    def max(self) -> float:
        if self.expected > len(self.samples):
            return float("inf")
        return max(self.samples) if self.samples else float("nan")

    def figures(self) -> dict[str, Any]:
        def finite(x: float) -> float | None:
            return None if x == float("inf") else x

        return {"p50_ms": finite(self.p50), "p99_ms": finite(self.p99), "max_ms": finite(self.max),
                "max_seen_ms": max(self.samples) if self.samples else None, "delivered": len(self.samples),
                "expected": self.expected, "messages": self.sent, "failed_writes": self.failed_writes,
                "unacknowledged_writes": self.unacknowledged, "commit_p50_ms": percentile(self.commit_ms, 50),
                "commits_per_second": self.commit_rate,
                "server_cpu_cores": self.server_cpu, "client_cpu_cores": self.client_cpu,
                "other_cpu_cores": self.other_cpu, "postgres_cpu_cores": self.pg_cpu, "errors": self.errors}


def ms(value: float) -> str:
    return "> window" if value == float("inf") else fmt(value)


def _other(other: float, postgres: float) -> str:
    return f"{other:.2f} ({postgres:.2f})"


def ms_unit(value: float) -> str:
    return "not within the window" if value == float("inf") else f"{fmt(value)} ms"


def room_name(i: int) -> str:
    return f"room-{i}"


class Observer:
    """What one subscription (or poller) has seen of its room: records each new message's latency."""

    __slots__ = ("seen", "samples", "ready")

    def __init__(self, samples: list[float]) -> None:
        self.seen: set[str] | None = None
        self.samples = samples
        self.ready = False

    def observe(self, docs: list[dict[str, Any]], now: float) -> None:
        ids = set()
        seen = self.seen
        for doc in docs:
            doc_id = doc["_id"]
            ids.add(doc_id)
            if seen is not None and doc_id not in seen:
                body = doc["body"]
                self.samples.append((now - float(body[:body.index(" ")])) * 1000.0)
        self.seen = ids
        self.ready = True


async def _writer(url: str, rooms: int, duration: float, rng: random.Random, result: Result, grace: float) -> dict[int, int]:
    """Send RATE messages a second to random rooms for `duration` seconds, then wait up to `grace`
    seconds for their MutationResponses; returns messages sent per room (less those that failed)."""
    conn = await SyncConnection.open(url)
    sent_at: dict[int, tuple[float, int]] = {}
    per_room: dict[int, int] = {}
    all_sent = False
    settled = asyncio.Event()

    async def responses() -> None:
        while True:
            message = await conn.recv()
            if message["type"] != "MutationResponse":
                continue
            sent, room = sent_at.pop(message["requestId"])
            if message["success"]:
                now = monotonic()
                result.commit_ms.append((now - sent) * 1000.0)
                result.commit_rate = len(result.commit_ms) / max(now - t0, 1e-9)
            else:
                result.failed_writes += 1
                per_room[room] -= 1
            if all_sent and not sent_at:
                settled.set()

    t0 = monotonic()
    reader = asyncio.create_task(responses())
    try:
        count = int(duration * RATE)
        t0 = monotonic()
        for i in range(count):
            delay = t0 + i / RATE - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            room = rng.randrange(rooms)
            sent = monotonic()
            conn.next_request += 1
            sent_at[conn.next_request] = (sent, room)
            per_room[room] = per_room.get(room, 0) + 1
            await conn.ws.send(f'{{"type":"Mutation","requestId":{conn.next_request},"udfPath":"messages:send",'
                               f'"args":[{{"room":"{room_name(room)}","author":"writer","body":"{sent:.6f} {i}"}}]}}')
            result.sent += 1
        all_sent = True
        if not sent_at:
            settled.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), grace)
        result.unacknowledged = len(sent_at)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await conn.close()
    return per_room


async def live_case(node: NodeProcess, case: str, backend: str, sockets: int, rooms: int, duration: float,
                    seed: int, grace: float, profile: Path | None = None) -> Result:
    per_socket = max(1, SUBSCRIPTIONS // sockets)
    result = Result(case, backend, f"{sockets} sockets × {per_socket} subs")
    t_open = monotonic()
    conns = await open_many(node.ws_url, sockets)
    observers: list[dict[int, Observer]] = []
    subscribers = [0] * rooms
    for i, conn in enumerate(conns):
        wanted = [(i * per_socket + j) % rooms for j in range(per_socket)]
        ids = await conn.add_queries([("messages:latest", {"room": room_name(r)}) for r in wanted])
        observers.append({qid: Observer(result.samples) for qid in ids})
        for r in wanted:
            subscribers[r] += 1

    async def reader(conn: SyncConnection, mine: dict[int, Observer]) -> None:
        try:
            await read(conn, mine)
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a broken socket is counted, the case goes on
            result.errors += 1
            log(f"subscriber socket failed: {type(exc).__name__}: {exc}")

    async def read(conn: SyncConnection, mine: dict[int, Observer]) -> None:
        while True:
            message = await conn.recv()
            if message["type"] != "Transition":
                continue
            now = monotonic()
            for mod in message["modifications"]:
                if mod["type"] == "QueryUpdated":
                    mine[mod["queryId"]].observe(mod["value"], now)
                elif mod["type"] == "QueryFailed":
                    result.errors += 1

    readers = [asyncio.create_task(reader(c, o)) for c, o in zip(conns, observers, strict=True)]
    try:
        deadline = monotonic() + 60
        while not all(o.ready for obs in observers for o in obs.values()):
            if monotonic() > deadline:
                raise RuntimeError("subscriptions did not all receive their first result within 60 s")
            await asyncio.sleep(0.05)
        log(f"{case} ({backend}): {sockets} sockets, {sockets * per_socket} subscriptions ready in {monotonic() - t_open:.1f} s")
        del result.samples[:]
        meter = CpuMeter(node)
        profiler = Profiler(node.pid, profile, duration) if profile else None
        per_room = await _writer(node.ws_url, rooms, duration, random.Random(seed), result, grace)
        result.expected = sum(n * subscribers[r] for r, n in per_room.items())
        await _drain(result, grace)
        if profiler is not None:
            result.profile = await profiler.finish()
        result.server_cpu, result.client_cpu, result.other_cpu = meter.read3()
        result.pg_cpu = meter.postgres
        result.errors += sum(c.chain_errors for c in conns)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await close_all(conns)
    return result


async def _drain(result: Result, grace: float) -> None:
    """Wait (at most `grace` s) for the deliveries still on their way."""
    deadline = monotonic() + grace
    while len(result.samples) < result.expected and monotonic() < deadline:
        await asyncio.sleep(0.05)


async def poll_case(node: NodeProcess, backend: str, rooms: int, duration: float, seed: int, grace: float) -> Result:
    result = Result("HTTP polling, 100 rooms", backend, f"{POLLERS} pollers / {POLL_INTERVAL * 1000:.0f} ms")
    stop = asyncio.Event()
    polls = [0]
    observers = [Observer(result.samples) for _ in range(POLLERS)]
    rng = random.Random(seed)

    async def poller(i: int) -> None:
        http = HttpConnection(node.port)
        body = {"path": "messages:latest", "args": {"room": room_name(i % rooms)}, "format": "json"}
        observer = observers[i]
        await asyncio.sleep(rng.random() * POLL_INTERVAL)
        try:
            while not stop.is_set():
                start = monotonic()
                status, reply = await http.post("/api/query", body)
                now = monotonic()
                if status == 200 and reply.get("status") == "success":
                    observer.observe(reply["value"], now)
                    polls[0] += 1
                else:
                    result.errors += 1
                delay = start + POLL_INTERVAL - monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await http.close()

    tasks = [asyncio.create_task(poller(i)) for i in range(POLLERS)]
    try:
        deadline = monotonic() + 60
        while not all(o.ready for o in observers):
            if monotonic() > deadline:
                raise RuntimeError("pollers did not all get a first result within 60 s")
            await asyncio.sleep(0.05)
        del result.samples[:]
        polls[0] = 0
        meter = CpuMeter(node)
        t0 = monotonic()
        per_room = await _writer(node.ws_url, rooms, duration, random.Random(seed), result, grace)
        subscribers = [0] * rooms
        for i in range(POLLERS):
            subscribers[i % rooms] += 1
        result.expected = sum(n * subscribers[r] for r, n in per_room.items())
        await _drain(result, grace)
        result.server_cpu, result.client_cpu, result.other_cpu = meter.read3()
        result.pg_cpu = meter.postgres
        result.note = f"{polls[0] / (monotonic() - t0):,.0f} polls/s"
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    return result


async def run_backend(label: str, database: str | None, args: argparse.Namespace, duration: float,
                      one_room: bool) -> tuple[list[Result], float]:
    results: list[Result] = []
    grace = 4.0 if args.quick else 15.0
    node = NodeProcess.corral(database=database, label=f"corral ({label})", switch_interval=args.switch_interval)
    node.start()
    try:
        log(f"{label}: node pid {node.pid} on port {node.port}")
        prof = (lambda name: args.profile / f"live-{label.lower()}-{name}.txt") if args.profile else (lambda name: None)
        for case in (live_case(node, "live queries, 100 rooms", label, args.sockets, ROOMS, duration, 1, grace,
                               prof("100-rooms")),
                     poll_case(node, label, ROOMS, duration, 1, grace)):
            results.append(await case)
            log(f"{results[-1].case} ({label}): p50 {ms_unit(results[-1].p50)}, p99 {ms_unit(results[-1].p99)}")
        if one_room:
            results.append(await live_case(node, "live queries, 1 room", label, args.sockets, 1, duration, 2, grace,
                                           prof("1-room")))
            log(f"{results[-1].case} ({label}): p50 {ms_unit(results[-1].p50)}, p99 {ms_unit(results[-1].p99)}")
        return results, node.peak_rss_mb()
    finally:
        node.stop()


def _engine_line(before: str) -> str:
    after = engine_version()
    return before if after == before else f"{before} at the start, {after} at the end (the engine changed during the run)"


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sockets", type=int, default=1000, choices=[100, 1000],
                        help="sockets holding the 1,000 subscriptions (1000: one each; 100: ten each)")
    parser.add_argument("--seconds", type=float, default=None, help="writer duration per case")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record a py-spy --gil profile of the node during each live-query case into DIR")
    parser.add_argument("--switch-interval", type=float, default=None, metavar="SECONDS",
                        help="experiment: run the Corral node with sys.setswitchinterval(SECONDS) (Python's default: 0.005)")


async def main(args: argparse.Namespace) -> int:
    duration = args.seconds or (5.0 if args.quick else 30.0)
    mode = "quick" if args.quick else "full"
    t_start = monotonic()
    load_before = os.getloadavg()
    version_before = engine_version()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    rss: dict[str, float] = {}
    sqlite_results, rss["SQLite"] = await run_backend("SQLite", None, args, duration, one_room=True)
    results += sqlite_results
    pg_skip = postgres_available(args.postgres)
    if pg_skip is None:
        with postgres_schema(args.postgres) as url:
            pg_results, rss["PostgreSQL"] = await run_backend("PostgreSQL", url, args, duration, one_room=False)
        results += pg_results
    else:
        log(f"PostgreSQL cases skipped: {pg_skip}")

    per_socket = SUBSCRIPTIONS // args.sockets
    print(f"\nbench.live_queries ({mode}): {SUBSCRIPTIONS:,} subscriptions to messages:latest {{room}} held by "
          f"{args.sockets:,} WebSocket connections ({per_socket} each); one writer commits {RATE:g} messages/s to random "
          f"rooms for {duration:g} s per case; one client process (uvloop); machine: {CPUS} cores shared by client, "
          f"node{', PostgreSQL' if 'PostgreSQL' in rss else ''} and anything else running")
    rows = []
    for r in results:
        notes = [r.note] if r.note else []
        if r.unacknowledged:
            notes.append(f"{r.unacknowledged} writes unacknowledged after the grace period; "
                         f"writer got {r.commit_rate:.1f} commits/s")
        if r.failed_writes:
            notes.append(f"{r.failed_writes} writes failed")
        if r.errors:
            notes.append(f"errors={r.errors}")
        rows.append([r.case, r.backend, r.clients, ms(r.p50), ms(r.p99), ms(r.max), f"{len(r.samples):,}/{r.expected:,}",
                     percentile(r.commit_ms, 50), f"{r.server_cpu:.2f}", f"{r.client_cpu:.2f}", _other(r.other_cpu, r.pg_cpu),
                     "; ".join(notes)])
    print_table("commit → update latency, ms (writer's send time, carried in the message body → receive time at each "
                "subscriber or poller of that room)",
                ["case", "backend", "clients", "p50", "p99", "max", "delivered/expected", "commit p50",
                 "node CPU", "client CPU", "other CPU (PG)", "note"], rows)
    print("CPU columns: cores used during the case by the node, by this client process, and by everything else on "
          "the machine (in brackets: PostgreSQL's processes, part of it). '> window': not delivered within the "
          "case's grace period.")

    figures: dict[str, Any] = {"mode": mode, "seconds": duration, "sockets": args.sockets,
                               "subscriptions": SUBSCRIPTIONS, "rate": RATE, "cpus": CPUS,
                               "loadavg_before": load_before[0], "loadavg_after": os.getloadavg()[0]}
    keys = {"live queries, 100 rooms": "live", "HTTP polling, 100 rooms": "poll", "live queries, 1 room": "live_one_room"}
    for r in results:
        figures[f"{r.backend.lower()}_{keys[r.case]}"] = r.figures()
    print()
    for backend in ("SQLite", "PostgreSQL"):
        live = next((r for r in results if r.backend == backend and r.case == "live queries, 100 rooms"), None)
        poll = next((r for r in results if r.backend == backend and r.case.startswith("HTTP")), None)
        if live and poll:
            r50, r99 = poll.p50 / live.p50, poll.p99 / live.p99
            figures[f"{backend.lower()}_poll_over_live_p50"] = r50
            figures[f"{backend.lower()}_poll_over_live_p99"] = r99
            print(f"{backend}: HTTP polling is {r50:.1f}× slower than live queries at p50 and {r99:.1f}× at p99 "
                  f"(live {ms_unit(live.p50)} / {ms_unit(live.p99)}, polling {ms_unit(poll.p50)} / {ms_unit(poll.p99)}; "
                  f"node CPU live {live.server_cpu:.2f} vs polling {poll.server_cpu:.2f} cores)")
    gated = next(r for r in results if r.backend == "SQLite" and r.case == "live queries, 100 rooms")
    ok = gated.p50 <= GATE_P50_MS and gated.p99 <= GATE_P99_MS and len(gated.samples) >= gated.expected and not gated.errors
    figures["sqlite_gate"] = verdict(ok)
    note = " (quick run: indicative; the gate applies to the full run)" if args.quick else ""
    print(f"gate, SQLite, 100 rooms: p50 {ms_unit(gated.p50)} ≤ {GATE_P50_MS:g} ms and p99 {ms_unit(gated.p99)} ≤ "
          f"{GATE_P99_MS:g} ms, every update delivered: {verdict(ok)}{note}")
    one = next((r for r in results if r.case == "live queries, 1 room"), None)
    if one is not None:
        print(f"1 room (no gate): p50 {ms_unit(one.p50)}, p99 {ms_unit(one.p99)}, {len(one.samples):,} of "
              f"{one.expected:,} updates delivered within the case; the writer's mutations (serial on its socket) "
              f"got {one.commit_rate:.1f} commits/s of the {RATE:g}/s offered, commit p50 {fmt(percentile(one.commit_ms, 50))} ms")
    for r in results:
        if r.profile:
            print(f"\nprofile of the node, {r.case} ({r.backend}) (share of samples holding the GIL):\n{r.profile}")
    for backend, mb in rss.items():
        figures[f"{backend.lower()}_peak_rss_mb"] = mb
        print(f"peak RSS of the node ({backend}; VmHWM over all its cases): {mb:,.0f} MiB")
    figures["wall_seconds"] = monotonic() - t_start
    figures["engine"] = _engine_line(version_before)
    print(f"engine: {figures['engine']}")
    print(f"load average before/after: {load_before[0]:.2f} / {figures['loadavg_after']:.2f}; wall time: "
          f"{figures['wall_seconds']:.0f} s")
    if args.json:
        emit_json("live_queries", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main(parse_args(__doc__.splitlines()[0], _extra))))
