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

    python -m bench.live_queries [--quick] [--json] [--sockets N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from .common import (
    CPUS,
    CpuMeter,
    HttpConnection,
    NodeProcess,
    SyncConnection,
    close_all,
    emit_json,
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
    commit_ms: list[float] = field(default_factory=list)
    server_cpu: float = float("nan")
    client_cpu: float = float("nan")
    other_cpu: float = float("nan")
    note: str = ""
    errors: int = 0

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    def figures(self) -> dict[str, Any]:
        return {"p50_ms": self.p50, "p99_ms": self.p99, "max_ms": self.max, "samples": len(self.samples),
                "expected": self.expected, "messages": self.sent, "failed_writes": self.failed_writes,
                "commit_p50_ms": percentile(self.commit_ms, 50), "server_cpu_cores": self.server_cpu,
                "client_cpu_cores": self.client_cpu, "errors": self.errors}


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


async def _writer(url: str, rooms: int, duration: float, rng: random.Random, result: Result) -> dict[int, int]:
    """Commit RATE messages a second to random rooms for `duration` seconds; returns commits per room."""
    conn = await SyncConnection.open(url)
    sent_at: dict[int, tuple[float, int]] = {}
    per_room: dict[int, int] = {}
    outstanding = asyncio.Event()
    outstanding.set()

    async def responses() -> None:
        while True:
            message = await conn.recv()
            if message["type"] != "MutationResponse":
                continue
            sent, room = sent_at.pop(message["requestId"])
            if message["success"]:
                result.commit_ms.append((monotonic() - sent) * 1000.0)
                per_room[room] = per_room.get(room, 0) + 1
            else:
                result.failed_writes += 1
            if not sent_at:
                outstanding.set()

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
            outstanding.clear()
            await conn.ws.send(f'{{"type":"Mutation","requestId":{conn.next_request},"udfPath":"messages:send",'
                               f'"args":[{{"room":"{room_name(room)}","author":"writer","body":"{sent:.6f} {i}"}}]}}')
            result.sent += 1
        await asyncio.wait_for(outstanding.wait(), 30)
    finally:
        reader.cancel()
        await conn.close()
    return per_room


async def live_case(node: NodeProcess, case: str, backend: str, sockets: int, rooms: int, duration: float,
                    seed: int) -> Result:
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
        per_room = await _writer(node.ws_url, rooms, duration, random.Random(seed), result)
        result.expected = sum(n * subscribers[r] for r, n in per_room.items())
        drain = monotonic() + 10
        while len(result.samples) < result.expected and monotonic() < drain:
            await asyncio.sleep(0.05)
        result.server_cpu, result.client_cpu, result.other_cpu = meter.read3()
        result.errors += sum(c.chain_errors for c in conns)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await close_all(conns)
    return result


async def poll_case(node: NodeProcess, backend: str, rooms: int, duration: float, seed: int) -> Result:
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
        per_room = await _writer(node.ws_url, rooms, duration, random.Random(seed), result)
        subscribers = [0] * rooms
        for i in range(POLLERS):
            subscribers[i % rooms] += 1
        result.expected = sum(n * subscribers[r] for r, n in per_room.items())
        drain = monotonic() + 10
        while len(result.samples) < result.expected and monotonic() < drain:
            await asyncio.sleep(0.05)
        result.server_cpu, result.client_cpu, result.other_cpu = meter.read3()
        result.note = f"{polls[0] / (monotonic() - t0):,.0f} polls/s"
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    return result


async def run_backend(label: str, database: str | None, args: argparse.Namespace, duration: float,
                      one_room: bool) -> tuple[list[Result], float]:
    results: list[Result] = []
    node = NodeProcess.corral(database=database, label=f"corral ({label})")
    node.start()
    try:
        log(f"{label}: node pid {node.pid} on port {node.port}")
        results.append(await live_case(node, "live queries, 100 rooms", label, args.sockets, ROOMS, duration, 1))
        results.append(await poll_case(node, label, ROOMS, duration, 1))
        if one_room:
            results.append(await live_case(node, "live queries, 1 room", label, args.sockets, 1, duration, 2))
        return results, node.peak_rss_mb()
    finally:
        node.stop()


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sockets", type=int, default=1000, choices=[100, 1000],
                        help="sockets holding the 1,000 subscriptions (1000: one each; 100: ten each)")
    parser.add_argument("--seconds", type=float, default=None, help="writer duration per case")


async def main(args: argparse.Namespace) -> int:
    duration = args.seconds or (6.0 if args.quick else 30.0)
    mode = "quick" if args.quick else "full"
    t_start = monotonic()
    results, rss = [], {}
    sqlite_results, rss["sqlite"] = await run_backend("SQLite", None, args, duration, one_room=True)
    results += sqlite_results
    pg_skip = postgres_available(args.postgres)
    if pg_skip is None:
        with postgres_schema(args.postgres) as url:
            pg_results, rss["postgresql"] = await run_backend("PostgreSQL", url, args, duration, one_room=False)
        results += pg_results
    else:
        log(f"PostgreSQL cases skipped: {pg_skip}")

    per_socket = SUBSCRIPTIONS // args.sockets
    print(f"\nbench.live_queries ({mode}): {SUBSCRIPTIONS} subscriptions to messages:latest on {args.sockets} sockets "
          f"({per_socket} each), writer {RATE:g} msg/s for {duration:g} s per case; machine: {CPUS} cores "
          f"(client and node share them)")
    rows = []
    for r in results:
        rows.append([r.case, r.backend, r.clients, r.p50, r.p99, r.max, f"{len(r.samples):,}/{r.expected:,}",
                     percentile(r.commit_ms, 50), f"{r.server_cpu:.2f}", f"{r.client_cpu:.2f}",
                     (r.note + (f" errors={r.errors}" if r.errors else "") + (f" failed={r.failed_writes}" if r.failed_writes else "")).strip()])
    print_table("commit → update latency (writer send time → subscriber/poller receive time), ms",
                ["case", "backend", "clients", "p50", "p99", "max", "seen/expected", "commit p50", "node CPU", "client CPU", "note"],
                rows)

    figures: dict[str, Any] = {"mode": mode, "seconds": duration, "sockets": args.sockets,
                               "subscriptions": SUBSCRIPTIONS, "rate": RATE, "cpus": CPUS}
    keys = {("live queries, 100 rooms"): "live", "HTTP polling, 100 rooms": "poll", "live queries, 1 room": "live_one_room"}
    for r in results:
        figures[f"{r.backend.lower()}_{keys[r.case]}"] = r.figures()
    print()
    for backend in ("SQLite", "PostgreSQL"):
        live = next((r for r in results if r.backend == backend and r.case.startswith("live queries, 100")), None)
        poll = next((r for r in results if r.backend == backend and r.case.startswith("HTTP")), None)
        if live and poll:
            r50, r99 = poll.p50 / live.p50, poll.p99 / live.p99
            figures[f"{backend.lower()}_poll_over_live_p50"] = r50
            figures[f"{backend.lower()}_poll_over_live_p99"] = r99
            print(f"{backend}: polling / live-query latency: p50 {r50:.1f}×, p99 {r99:.1f}× "
                  f"(live {fmt(live.p50)} / {fmt(live.p99)} ms vs polling {fmt(poll.p50)} / {fmt(poll.p99)} ms)")
    sqlite_live = next(r for r in results if r.backend == "SQLite" and r.case.startswith("live queries, 100"))
    ok = sqlite_live.p50 <= GATE_P50_MS and sqlite_live.p99 <= GATE_P99_MS and len(sqlite_live.samples) >= sqlite_live.expected
    figures["sqlite_gate"] = verdict(ok)
    note = "" if not args.quick else " (quick run: indicative only; the gate applies to the full run)"
    print(f"gate (SQLite, 100 rooms): p50 {fmt(sqlite_live.p50)} ms ≤ {GATE_P50_MS:g} and p99 {fmt(sqlite_live.p99)} ms ≤ "
          f"{GATE_P99_MS:g}, every update delivered: {verdict(ok)}{note}")
    for backend, mb in rss.items():
        figures[f"{backend}_peak_rss_mb"] = mb
        print(f"peak RSS of the node ({backend}, all its cases): {mb:,.0f} MiB")
    figures["wall_seconds"] = monotonic() - t_start
    print(f"wall time: {figures['wall_seconds']:.0f} s")
    if args.json:
        emit_json("live_queries", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main(parse_args(__doc__.splitlines()[0], _extra))))
