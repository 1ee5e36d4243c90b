"""SQLite: one file in WAL mode, one ordered writer thread with group commit, pooled readers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import structlog

from ..clock import Clock
from ..schema import Schema
from ..values import WriteSet
from .base import Dialect, Store, StoreConn, WriteJob, WriteOutcome

log = structlog.get_logger("corral.storage")


class SqliteConn(StoreConn):
    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self.raw.execute(sql, params)

    def interrupt(self) -> None:
        self.raw.interrupt()


class SqliteStore(Store):
    dialect_name = "sqlite"

    def __init__(self, path: Path, *, clock: Clock | None = None, readers: int = 4, group_commit_max: int = 64) -> None:
        super().__init__()
        self.path = Path(path)
        self.clock = clock or Clock()
        self.dialect = Dialect()
        self._readers: queue.LifoQueue[SqliteConn] = queue.LifoQueue()
        self._reader_count = readers
        self._jobs: queue.SimpleQueue[tuple[WriteJob, Waiter] | None] = queue.SimpleQueue()
        self._group_commit_max = group_commit_max
        self._writer_thread: threading.Thread | None = None
        self._writer: SqliteConn | None = None
        self._last_ts = 0

    def _connect(self) -> sqlite3.Connection:
        raw = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
        raw.execute("PRAGMA foreign_keys=OFF")
        raw.execute("PRAGMA cache_size=-16384")
        return raw

    def open(self, schema: Schema) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private_database(self.path)
        self.schema = schema
        writer = SqliteConn(self._connect(), self.dialect)
        writer.execute("BEGIN IMMEDIATE")
        try:
            writer.execute("CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            writer.execute("CREATE TABLE IF NOT EXISTS _tables (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, indexes TEXT NOT NULL)")
            writer.execute("CREATE TABLE IF NOT EXISTS _session_requests (session_id TEXT NOT NULL, request_id INTEGER NOT NULL,"
                           " result TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (session_id, request_id))")
            writer.execute("INSERT OR IGNORE INTO _meta (key, value) VALUES ('ts', '0')")
            self._sync_schema(writer, schema)
            writer.execute("COMMIT")
        except BaseException:
            writer.execute("ROLLBACK")
            writer.raw.close()
            raise
        self._writer = writer
        self._last_ts = int(writer.execute("SELECT value FROM _meta WHERE key = 'ts'").fetchone()[0])
        self.published_ts = self._last_ts
        for _ in range(self._reader_count):
            self._readers.put(SqliteConn(self._connect(), self.dialect))
        self._writer_thread = threading.Thread(target=self._write_loop, name="corral-sqlite-writer", daemon=True)
        self._writer_thread.start()

    def close(self) -> None:
        if self._writer_thread is not None:
            self._jobs.put(None)
            self._writer_thread.join(timeout=10)
            self._writer_thread = None
        if self._writer is not None:
            self._writer.raw.close()
            self._writer = None
        while not self._readers.empty():
            self._readers.get_nowait().raw.close()

    def latest_ts(self) -> int:
        return self.published_ts

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[tuple[StoreConn, int]]:
        conn = self._readers.get()
        try:
            # Holding the publish lock while the snapshot is pinned guarantees that every commit
            # it contains has already been announced to listeners.
            with self._publish_lock:
                conn.execute("BEGIN")
                ts = int(conn.execute("SELECT value FROM _meta WHERE key = 'ts'").fetchone()[0])
            try:
                yield conn, ts
            finally:
                conn.execute("COMMIT") if conn.raw.in_transaction else None
        finally:
            self._readers.put(conn)

    def submit(self, job: WriteJob) -> Future[WriteOutcome]:
        future: Future[WriteOutcome] = Future()
        self._jobs.put((job, future))
        return future

    async def run(self, job: WriteJob) -> WriteOutcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WriteOutcome] = loop.create_future()
        self._jobs.put((job, (loop, future)))
        return await future

    def _next_ts(self) -> int:
        self._last_ts = max(self.clock.now_ns(), self._last_ts + 1)
        return self._last_ts

    def _write_loop(self) -> None:
        assert self._writer is not None
        conn = self._writer
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._group_commit_max:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._jobs.put(None)
                    break
                batch.append(item)
            self._run_batch(conn, batch)

    def _run_batch(self, conn: SqliteConn, batch: list[tuple[WriteJob, Waiter]]) -> None:
        outcomes: list[WriteOutcome] = []
        saved_ts = self._last_ts
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job, _future in batch:
                outcome = WriteOutcome()
                conn.execute("SAVEPOINT m")
                try:
                    outcome.ts = self._next_ts()
                    conn.current_ts = outcome.ts  # type: ignore[attr-defined]
                    outcome.value, outcome.writes = job(conn)
                    conn.execute("RELEASE m")
                except BaseException as exc:  # noqa: BLE001 - a failed mutation leaves no trace
                    outcome.error = exc
                    outcome.ts = 0
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK TO m")
                        conn.execute("RELEASE m")
                outcomes.append(outcome)
            committed = [o for o in outcomes if o.error is None]
            if committed:
                conn.execute("UPDATE _meta SET value = ? WHERE key = 'ts'", (str(self._last_ts),))
            with self._publish_lock:
                conn.execute("COMMIT")
                for outcome in committed:
                    self._publish(outcome.ts, outcome.writes if outcome.writes else WriteSet())
        except BaseException as exc:  # noqa: BLE001 - commit failed: every job in the batch failed
            log.error("sqlite.batch_failed", error=str(exc))
            self._last_ts = saved_ts
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            _resolve([(waiter, WriteOutcome(error=exc)) for _job, waiter in batch])
            return
        _resolve([(waiter, outcome) for (_job, waiter), outcome in zip(batch, outcomes, strict=True)])

    def get_meta(self, key: str) -> str | None:
        with self.snapshot() as (conn, _ts):
            row = conn.execute("SELECT value FROM _meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta_if_absent(self, key: str, value: str) -> str:
        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            conn.execute("INSERT OR IGNORE INTO _meta (key, value) VALUES (?, ?)", (key, value))
            return conn.execute("SELECT value FROM _meta WHERE key = ?", (key,)).fetchone()[0], WriteSet()

        outcome = self.submit(job).result()
        if outcome.error:
            raise outcome.error
        return str(outcome.value)


# Who waits for a write: a thread (a concurrent Future) or a coroutine (its loop and future).
Waiter = Future[WriteOutcome] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[WriteOutcome]"]


def _resolve(results: list[tuple[Waiter, WriteOutcome]]) -> None:
    """Hand a batch's outcomes back, waking each event loop once for the whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[WriteOutcome], WriteOutcome]]] = {}
    for waiter, outcome in results:
        if isinstance(waiter, Future):
            waiter.set_result(outcome)
        else:
            loop, future = waiter
            by_loop.setdefault(loop, []).append((future, outcome))
    for loop, pairs in by_loop.items():
        if not loop.is_closed():
            loop.call_soon_threadsafe(_set_results, pairs)


def _set_results(pairs: list[tuple[asyncio.Future[WriteOutcome], WriteOutcome]]) -> None:
    for future, outcome in pairs:
        if not future.done():
            future.set_result(outcome)


DATABASE_MODE = 0o600


def _private_database(path: Path) -> None:
    """The database file and its -wal/-shm readable by their owner alone (they hold envd access tokens).

    The file is made 0600 before SQLite opens it, which then creates -wal and -shm with the same mode;
    files made before this rule are tightened here too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, DATABASE_MODE)
    os.close(fd)
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"),
                 path.with_name(path.name + "-journal")):
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name)
            if st.st_uid == os.geteuid() and st.st_mode & 0o777 != DATABASE_MODE:
                os.chmod(name, DATABASE_MODE)
