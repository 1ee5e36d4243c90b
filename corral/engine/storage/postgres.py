"""PostgreSQL: SERIALIZABLE transactions with bounded retries, commits announced across nodes.

Commit timestamps come from a sequence advanced under a transaction-scoped advisory lock
taken just before COMMIT, so commits become visible in timestamp order: once any node has
seen commit T, no commit below T can still appear. Each commit writes its write set to
`_commit_log` and NOTIFYs `corral_commits`; every node follows the log in order.
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson
import psycopg
import structlog
from psycopg import errors as pg_errors

from ..clock import Clock
from ..errors import ConfigError, SerializationConflict
from ..schema import Schema
from ..values import WriteSet
from .base import Dialect, Store, StoreConn, WriteJob, WriteOutcome

log = structlog.get_logger("corral.storage")

COMMIT_LOCK = 0x636F7272  # "corr"
SCHEMA_LOCK = 0x636F7273
LANE_LOCK = 0x636F7274  # held (per session) by transactions retrying one at a time
LANE_AFTER = 2  # optimistic attempts before a transaction retries in the serial lane
CHANNEL = "corral_commits"
# One round trip, just before COMMIT: take the commit lock (held until the transaction ends),
# draw the next timestamp, log the write set and notify every node.
STAMP_COMMIT = f"""
WITH locked AS (SELECT pg_advisory_xact_lock(%s)),
     stamp AS (SELECT setval('corral_ts', GREATEST(%s, nextval('corral_ts'))) AS ts FROM locked),
     logged AS (INSERT INTO _commit_log (ts, writes) SELECT ts, %s FROM stamp RETURNING ts)
SELECT ts, pg_notify('{CHANNEL}', '') FROM logged
"""
RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.UniqueViolation)


class PgDialect(Dialect):
    param = "%s"
    blob = "BYTEA"
    real = "DOUBLE PRECISION"


class PgConn(StoreConn):
    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self.raw.execute(sql, params, prepare=True)

    def interrupt(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.cancel_safe(timeout=1.0)


class PostgresStore(Store):
    dialect_name = "postgresql"
    retryable_errors = RETRYABLE

    def __init__(self, url: str, *, clock: Clock | None = None, readers: int = 4, writers: int = 4,
                 retries: int = 8, retention: float = 300.0, cleanup_interval: float = 10.0) -> None:
        super().__init__()
        self.url = url
        self.clock = clock or Clock()
        self.dialect = PgDialect()
        self._reader_count = readers
        self._writer_count = writers
        self._retries = retries
        self._retention = retention
        self._cleanup_interval = cleanup_interval  # seconds of the engine clock between trims of the commit log
        self._readers: queue.LifoQueue[PgConn] = queue.LifoQueue()
        self._writers: queue.LifoQueue[PgConn] = queue.LifoQueue()
        self._pool: ThreadPoolExecutor | None = None
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()

    def _connect(self, autocommit: bool = False) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=autocommit)

    def _reader(self) -> PgConn:
        raw = self._connect()
        raw.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        raw.read_only = True
        return PgConn(raw, self.dialect)

    def _writer(self) -> PgConn:
        # The isolation level rides on the transaction's implicit BEGIN: no round trip of its own.
        raw = self._connect()
        raw.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        return PgConn(raw, self.dialect)

    def open(self, schema: Schema) -> None:
        self.schema = schema
        try:
            first = self._connect()
        except psycopg.OperationalError as exc:
            raise ConfigError(unreachable_message(self.url, exc)) from None
        with first as raw:
            conn = PgConn(raw, self.dialect)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS _tables (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, indexes TEXT NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS _session_requests (session_id TEXT NOT NULL, request_id BIGINT NOT NULL,"
                         " result TEXT NOT NULL, ts BIGINT NOT NULL, PRIMARY KEY (session_id, request_id))")
            conn.execute("CREATE TABLE IF NOT EXISTS _commit_log (ts BIGINT PRIMARY KEY, writes TEXT NOT NULL)")
            conn.execute("CREATE SEQUENCE IF NOT EXISTS corral_ts MINVALUE 0 START 0")
            self._sync_schema(conn, schema)
            raw.commit()
        self.published_ts = self.latest_ts()
        for _ in range(self._reader_count):
            self._readers.put(self._reader())
        for _ in range(self._writer_count):
            self._writers.put(self._writer())
        self._pool = ThreadPoolExecutor(self._writer_count, thread_name_prefix="corral-pg-writer")
        self._stop.clear()
        self._follower = threading.Thread(target=self._follow, name="corral-pg-follower", daemon=True)
        self._follower.start()

    def close(self) -> None:
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._follower is not None:
            self._follower.join(timeout=10)
            self._follower = None
        for pool in (self._readers, self._writers):
            while not pool.empty():
                with contextlib.suppress(Exception):
                    pool.get_nowait().raw.close()

    def latest_ts(self) -> int:
        with self._connect(autocommit=True) as raw:
            row = raw.execute("SELECT coalesce(max(ts), 0) FROM _commit_log").fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[tuple[StoreConn, int]]:
        conn = self._readers.get()
        try:
            if conn.raw.closed or conn.raw.broken:
                conn = self._reader()
            ts = int(conn.execute("SELECT coalesce(max(ts), 0) FROM _commit_log").fetchone()[0])
            try:
                yield conn, ts
            finally:
                conn = self._recovered(conn, self._reader)
        finally:
            self._readers.put(conn)

    def writes_between(self, conn: StoreConn, after: int, upto: int) -> list[tuple[int, WriteSet]]:
        rows = conn.execute("SELECT ts, writes FROM _commit_log WHERE ts > %s AND ts <= %s ORDER BY ts", (after, upto)).fetchall()
        return [(int(ts), WriteSet.from_wire(orjson.loads(w))) for ts, w in rows]

    def submit(self, job: WriteJob) -> Future[WriteOutcome]:
        assert self._pool is not None, "store is not open"
        return self._pool.submit(self._run_job, job)

    def _run_job(self, job: WriteJob) -> WriteOutcome:
        """Run a write job optimistically; after repeated conflicts, retry it in the serial lane."""
        conn = self._writers.get()
        in_lane = False
        try:
            for attempt in range(self._retries + 1):
                if conn.raw.closed or conn.raw.broken:
                    conn, in_lane = self._writer(), False
                if attempt >= LANE_AFTER and not in_lane:
                    self._session_lock(conn, "pg_advisory_lock")
                    in_lane = True
                outcome = WriteOutcome()
                try:
                    conn.current_ts = 0  # type: ignore[attr-defined]
                    outcome.value, outcome.writes = job(conn)
                    ts = int(conn.execute(STAMP_COMMIT, (COMMIT_LOCK, self.clock.now_ns(),
                                                         orjson.dumps(outcome.writes.to_wire()).decode())).fetchone()[0])
                    conn.raw.commit()
                    outcome.ts = ts
                    return outcome
                except RETRYABLE:
                    conn.raw.rollback()
                    if attempt == self._retries:
                        outcome.error = SerializationConflict(
                            f"the transaction kept conflicting with concurrent writes after {self._retries} retries; try again")
                        return outcome
                    time.sleep(random.uniform(0, min(0.001 * (2 ** attempt), 0.02)))
                except BaseException as exc:  # noqa: BLE001 - the job failed: roll back, report
                    recovered = self._recovered(conn, self._writer)
                    if recovered is not conn:
                        in_lane = False  # a closed session released its lane lock
                    conn = recovered
                    outcome.error = exc
                    return outcome
            raise AssertionError("unreachable")
        finally:
            if in_lane:
                with contextlib.suppress(Exception):
                    self._session_lock(conn, "pg_advisory_unlock")
            self._writers.put(conn)

    @staticmethod
    def _recovered(conn: PgConn, make: Any) -> PgConn:
        """Roll back; a connection interrupted mid-command (a time limit) is replaced instead."""
        try:
            conn.raw.rollback()
            return conn
        except Exception:  # noqa: BLE001
            with contextlib.suppress(Exception):
                conn.raw.close()
            return make()  # type: ignore[no-any-return]

    def _session_lock(self, conn: PgConn, function: str) -> None:
        """Take or release the serial lane's lock, outside any transaction.

        Transactions that keep losing serialization races retry one at a time in the lane, so a
        hot row cannot starve them forever; optimistic transactions never wait for the lane.
        """
        conn.raw.autocommit = True
        try:
            conn.execute(f"SELECT {function}(%s)", (LANE_LOCK,))
        finally:
            conn.raw.autocommit = False

    def _follow(self) -> None:
        """Announce commits from every node, in timestamp order, to this node's listeners."""
        listen: psycopg.Connection[Any] | None = None
        poll: psycopg.Connection[Any] | None = None
        last_cleanup = 0.0
        while not self._stop.is_set():
            try:
                if listen is None or listen.closed:
                    listen = self._connect(autocommit=True)
                    listen.execute(f"LISTEN {CHANNEL}")
                    poll = self._connect(autocommit=True)
                assert poll is not None
                rows = poll.execute("SELECT ts, writes FROM _commit_log WHERE ts > %s ORDER BY ts LIMIT 1000",
                                    (self.published_ts,)).fetchall()
                if rows:
                    with self._publish_lock:
                        for ts, writes in rows:
                            self._publish(int(ts), WriteSet.from_wire(orjson.loads(writes)))
                    if len(rows) == 1000:
                        continue
                now = self.clock.monotonic()
                if now - last_cleanup > self._cleanup_interval:
                    last_cleanup = now
                    horizon = self.clock.now_ns() - int(self._retention * 1e9)
                    poll.execute("DELETE FROM _commit_log WHERE ts < %s AND ts < (SELECT max(ts) FROM _commit_log)", (horizon,))
                for _ in listen.notifies(timeout=0.5, stop_after=1):
                    break
            except Exception as exc:  # noqa: BLE001 - reconnect and go on following
                if self._stop.is_set():
                    break
                log.warning("postgres.follower_error", error=str(exc))
                _close_all(listen, poll)
                listen = poll = None
                time.sleep(0.5)
        _close_all(listen, poll)

    def get_meta(self, key: str) -> str | None:
        with self._connect(autocommit=True) as raw:
            row = raw.execute("SELECT value FROM _meta WHERE key = %s", (key,)).fetchone()
        return row[0] if row else None

    def set_meta_if_absent(self, key: str, value: str) -> str:
        with self._connect(autocommit=True) as raw:
            raw.execute("INSERT INTO _meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, value))
            row = raw.execute("SELECT value FROM _meta WHERE key = %s", (key,)).fetchone()
        assert row is not None
        return str(row[0])


def _close_all(*connections: psycopg.Connection[Any] | None) -> None:
    for conn in connections:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def unreachable_message(url: str, exc: psycopg.OperationalError) -> str:
    """Why the database at `url` cannot be opened, in one line, without its password."""
    authority = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    if authority.count("@") > 1:  # the password's own '@' splits the URL wrongly, and psycopg echoes the pieces
        return ("cannot open the PostgreSQL database: its URL has more than one '@' before the host; "
                "write an '@' in the password as %40")
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "cannot open the PostgreSQL database: its URL is not one PostgreSQL understands"
    where = f"postgresql://{info.get('user', '')}@{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    reason = " ".join(str(exc).split())
    reason = reason.rsplit("FATAL:", 1)[-1].strip() if "FATAL:" in reason else reason
    hint = ""
    if "does not exist" in reason and "database" in reason:
        hint = f"; create it first (createdb -h {info.get('host', 'localhost')} -U {info.get('user', 'postgres')} {info.get('dbname', '')})"
    return f"cannot open the PostgreSQL database {where}: {reason}{hint}"
