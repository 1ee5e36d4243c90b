"""Shared helpers of the engine benchmarks.

- `NodeProcess`: a Corral node (or any server command) in its own process, on a free
  loopback port, with a temporary data directory; peak RSS and CPU time from /proc.
- `postgres_schema()`: a fresh PostgreSQL schema for one node, dropped afterwards.
- `SyncConnection`: a minimal client of Convex's WebSocket sync protocol over `websockets`
  (Connect, ModifyQuerySet Add, Mutation; it checks that Transitions chain and tracks the
  version), lean enough to drive thousands of messages a second from one asyncio process.
- `HttpConnection`: a minimal keep-alive HTTP/1.1 client for `POST /api/query`.
- percentiles, table printing and the final `--json` line.

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = Path(__file__).resolve().parent / "functions"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
CPUS = os.cpu_count() or 1
_TICKS = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


# -- command line and output ---------------------------------------------------

def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short run (under a minute)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of named figures")
    parser.add_argument("--postgres", default=os.environ.get("CORRAL_BENCH_POSTGRES_URL", DEFAULT_POSTGRES),
                        help="PostgreSQL URL for the PostgreSQL cases ('' to skip them)")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def run_main(coro: Awaitable[T]) -> T:
    """Run the benchmark's coroutine on uvloop when it is installed (a leaner client)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type,no-any-return]


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile of unsorted values (p in 0..100); NaN when empty."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    rank = (len(data) - 1) * p / 100.0
    lo = int(rank)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (rank - lo))


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print()
    print(title)
    line = "  ".join("-" * w for w in widths)
    print(line)
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print(line)
    print(line)


def emit_json(name: str, figures: dict[str, Any]) -> None:
    """The final line of a `--json` run: {"bench": name, ...figures}."""
    def clean(value: Any) -> Any:
        if isinstance(value, float):
            return None if value != value else round(value, 3)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    print(json.dumps({"bench": name, **clean(figures)}, sort_keys=False))


def engine_version() -> str:
    """The commit the node runs, and whether `corral/` has uncommitted changes (the engine is edited concurrently)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "corral"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" + uncommitted changes in corral/" if dirty else "")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class NodeProcess:
    """A server in its own process on a free loopback port, with a temporary directory."""

    def __init__(self, label: str, command: Callable[[int, Path], list[str]], ready: Callable[[NodeProcess], bool] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.label = label
        self._command = command
        self._ready = ready
        self._env = env
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @classmethod
    def corral(cls, database: str | None = None, functions: Path = FUNCTIONS, label: str = "corral",
               switch_interval: float | None = None, extra_env: dict[str, str] | None = None) -> NodeProcess:
        """`python -m corral serve` on a free port; `switch_interval` (seconds) runs it with
        `sys.setswitchinterval(...)` first, to experiment with GIL hand-off (default: Python's 5 ms);
        `extra_env` adds variables (such as `CORRAL_ENV_*`) to the node's environment."""
        def command(port: int, data_dir: Path) -> list[str]:
            if switch_interval is None:
                cmd = [sys.executable, "-m", "corral"]
            else:
                cmd = [sys.executable, "-c", f"import runpy, sys; sys.setswitchinterval({switch_interval!r}); "
                       "sys.argv[0] = 'corral'; runpy.run_module('corral', run_name='__main__', alter_sys=True)"]
            cmd += ["serve", "--port", str(port), "--data-dir", str(data_dir / "data"), "--functions", str(functions)]
            if database:
                cmd += ["--database", database]
            return cmd

        def ready(node: NodeProcess) -> bool:
            assert node.dir is not None
            return (node.dir / "data" / "node.json").exists() and _port_open(node.port)

        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        return cls(label, command, ready, {**env, **(extra_env or {})})

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/sync"

    def start(self, timeout: float = 60.0) -> NodeProcess:
        self.dir = Path(tempfile.mkdtemp(prefix="corral-bench-"))
        self.port = free_port()
        self._log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self._command(self.port, self.dir), cwd=self.dir, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self._env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            if (self._ready(self) if self._ready else _port_open(self.port)):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.label} did not become ready within {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.dir is None:
            return ""
        with contextlib.suppress(OSError):
            return "\n".join((self.dir / "server.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def peak_rss_mb(self) -> float:
        """VmHWM of the server process (its peak resident set), in MiB."""
        return _status_kb(self.pid, "VmHWM") / 1024.0

    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024.0

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (all its threads) so far."""
        return proc_cpu_seconds(self.pid)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine (all cores) since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICKS


def processes_cpu_seconds(name: str) -> float:
    """User + system CPU seconds of every process whose command name is `name` (e.g. PostgreSQL's backends)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        if comm == name:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


class CpuMeter:
    """CPU use, in cores, over a stretch of wall time: of the server, of this (client) process,
    and of everything else on the machine (other users' work competing for the same cores)."""

    def __init__(self, node: NodeProcess | None) -> None:
        self.node = node
        self.start()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.server0 = self.node.cpu_seconds() if self.node else 0.0
        self.client0 = self_cpu_seconds()
        self.machine0 = machine_busy_seconds()
        self.postgres0 = processes_cpu_seconds("postgres")

    def read(self) -> tuple[float, float]:
        server, client, _other = self.read3()
        return server, client

    def read3(self) -> tuple[float, float, float]:
        """(server, client, other) cores; `postgres` (PostgreSQL's processes, part of other) is set too."""
        wall = max(time.monotonic() - self.t0, 1e-9)
        server = ((self.node.cpu_seconds() - self.server0) / wall) if self.node else 0.0
        client = (self_cpu_seconds() - self.client0) / wall
        machine = (machine_busy_seconds() - self.machine0) / wall
        self.postgres = (processes_cpu_seconds("postgres") - self.postgres0) / wall
        return server if self.node else float("nan"), client, max(0.0, machine - server - client)


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A URL of `base_url` whose search_path is a fresh schema, dropped on exit."""
    import psycopg

    schema = "corral_bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(base_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{sep}options={quote('-csearch_path=' + schema, safe='')}"
    finally:
        with psycopg.connect(base_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def postgres_available(base_url: str) -> str | None:
    """None when PostgreSQL answers at `base_url`, else why not."""
    if not base_url:
        return "no PostgreSQL URL given"
    try:
        import psycopg

        with psycopg.connect(base_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means: skip the PostgreSQL cases
        return f"{type(exc).__name__}: {exc}".strip()
    return None


# -- the sync protocol -----------------------------------------------------------

ZERO_TS = base64.b64encode(bytes(8)).decode()
_b64decode = base64.b64decode


def ts_from_wire(text: str) -> int:
    """EncodedTS (base64 of a little-endian u64) → int nanoseconds."""
    return int.from_bytes(_b64decode(text), "little")


class ProtocolViolation(Exception):
    pass


class SyncConnection:
    """One WebSocket speaking Convex's sync protocol; one task reads it at a time.

    `recv()` returns the next parsed server message and, for a Transition, first checks
    that its startVersion is the version this client holds (as the Convex clients do)
    and moves to its endVersion. Violations are counted in `chain_errors`.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.query_set = 0
        self.identity = 0
        self.ts = 0
        self.ts_wire = ZERO_TS
        self.next_request = 0
        self.next_query = 0
        self.query_set_requested = 0
        self.chain_errors = 0
        self.transitions = 0

    @classmethod
    async def open(cls, url: str, open_timeout: float = 30.0) -> SyncConnection:
        ws = await connect(url, compression=None, max_size=None, ping_interval=None, proxy=None,
                           open_timeout=open_timeout, close_timeout=2)
        conn = cls(ws)
        await conn.send({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0,
                         "lastCloseReason": None, "clientTs": int(time.time() * 1000)})
        return conn

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    def apply_transition(self, message: dict[str, Any]) -> None:
        start = message["startVersion"]
        end = message["endVersion"]
        if start["querySet"] != self.query_set or start["identity"] != self.identity or start["ts"] != self.ts_wire:
            self.chain_errors += 1
        self.query_set = end["querySet"]
        self.identity = end["identity"]
        if end["ts"] != self.ts_wire:
            self.ts_wire = end["ts"]
            self.ts = ts_from_wire(end["ts"])
        self.transitions += 1

    async def recv(self) -> dict[str, Any]:
        message: dict[str, Any] = orjson.loads(await self.ws.recv())
        kind = message["type"]
        if kind == "Transition":
            self.apply_transition(message)
        elif kind == "FatalError":
            raise ProtocolViolation(f"server sent FatalError: {message.get('error')}")
        elif kind == "TransitionChunk":
            raise ProtocolViolation("TransitionChunk is not handled by the benchmark client")
        return message

    async def add_queries(self, queries: Sequence[tuple[str, dict[str, Any]]]) -> list[int]:
        """ModifyQuerySet: Add each (udfPath, args); returns their query ids."""
        ids = list(range(self.next_query, self.next_query + len(queries)))
        self.next_query += len(queries)
        base = self.query_set_requested
        self.query_set_requested = base + 1
        await self.send({"type": "ModifyQuerySet", "baseVersion": base, "newVersion": base + 1,
                         "modifications": [{"type": "Add", "queryId": qid, "udfPath": path, "args": [args]}
                                           for qid, (path, args) in zip(ids, queries, strict=True)]})
        return ids

    async def send_mutation(self, path: str, args: dict[str, Any]) -> int:
        self.next_request += 1
        rid = self.next_request
        await self.ws.send(orjson.dumps({"type": "Mutation", "requestId": rid, "udfPath": path, "args": [args]}).decode())
        return rid

    async def mutation(self, path: str, args: dict[str, Any], timeout: float = 60.0) -> Any:
        """Run a mutation and return its result once a Transition has revealed it (raises on failure)."""
        async def run() -> Any:
            rid = await self.send_mutation(path, args)
            response: dict[str, Any] | None = None
            response_ts = 0
            while True:
                message = await self.recv()
                kind = message["type"]
                if kind == "MutationResponse" and message["requestId"] == rid:
                    if not message["success"]:
                        raise RuntimeError(f"{path} failed: {message['result']}")
                    response, response_ts = message, ts_from_wire(message["ts"])
                if response is not None and self.ts >= response_ts:
                    return response["result"]

        return await asyncio.wait_for(run(), timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)


async def open_many(url: str, count: int, parallel: int = 50) -> list[SyncConnection]:
    """Open `count` sync connections, at most `parallel` handshakes at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one() -> SyncConnection:
        async with gate:
            return await SyncConnection.open(url)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def close_all(conns: Sequence[SyncConnection]) -> None:
    await asyncio.gather(*(c.close() for c in conns))


def decode_int(value: Any) -> Any:
    """A Convex-encoded int64 ({"$integer": base64}) → int; other values unchanged."""
    if isinstance(value, dict) and "$integer" in value:
        return int.from_bytes(_b64decode(value["$integer"]), "little", signed=True)
    return value


# -- HTTP ---------------------------------------------------------------------------

class HttpConnection:
    """One keep-alive HTTP/1.1 connection; just enough for JSON POSTs to a Corral node."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        payload = orjson.dumps(body)
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(payload), payload))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"connection" and value.strip().lower() == b"close":
                close = True
        data = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, orjson.loads(data) if data else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


# -- profiling (optional: needs py-spy, `.venv/bin/pip install py-spy`) ---------------

PROFILE_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("live-query rounds: running queries", ("SyncHub._execute",)),
    ("live-query rounds: _apply (encode, hash, re-index)", ("SyncHub._apply",)),
    ("commit invalidation (_on_commit)", ("SyncHub._on_commit",)),
    ("live-query rounds: other", ("SyncHub._round", "SyncHub._run_rounds", "SyncHub._capture")),
    ("mutation function body incl. ctx.db", ("transfer (accounts.py", "send (messages.py", "seed (accounts.py")),
    ("mutation job wrapper (session dedup, checks)", ("Engine._mutation_job",)),
    ("store writer: batch, SQL commit, publish", ("SqliteStore._run_batch", "PostgresStore._run_job", "SqliteStore._write_loop")),
    ("PostgreSQL commit follower", ("PostgresStore._follow",)),
    ("sync session: mutation loop (args, futures)", ("SyncSession._mutation_loop",)),
    ("sync session: write loop (orjson + send_text)", ("SyncSession._write_loop",)),
    ("sync session: read loop (receive, parse)", ("SyncSession._read_loop",)),
    ("HTTP query API", ("FunctionApi", "Engine.run_query")),
    ("uvicorn WebSocket/HTTP protocol", ("websockets_sansio_impl", "httptools_impl")),
    ("watchdog", ("Watchdog._loop",)),
]


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


class Profiler:
    """`py-spy record --gil` of a server for a stretch of time, in collapsed-stack form."""

    def __init__(self, pid: int, path: Path, seconds: float, gil: bool = True) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.path = path
        cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "200",
               "--format", "raw", "--nonblocking", "-o", str(path)]
        if gil:
            cmd.append("--gil")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def finish(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
        return summarize_profile(self.path)


def summarize_profile(path: Path, top: int = 12) -> str:
    """Share of samples per engine component, and the hottest leaf functions."""
    buckets: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            name = next((label for label, keys in PROFILE_BUCKETS if any(k in stack for k in keys)), "event loop / other")
            buckets[name] = buckets.get(name, 0) + n
            leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])
            leaves[leaf] = leaves.get(leaf, 0) + n
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in sorted(buckets.items(), key=lambda kv: -kv[1])]
    lines.append("  hottest functions (self):")
    lines += [f"  {100 * n / total:5.1f}%  {leaf}" for leaf, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    print("bench.common holds the benchmarks' shared helpers; run `python -m bench.live_queries` or `python -m bench.transfers`.")
