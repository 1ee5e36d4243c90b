"""What the engine needs of a database, and the SQL both dialects share.

Each table `name` is a SQL table `t_name(id, ct, doc, k__ct, k_<index>…)`: the document as
Convex-encoded JSON text and, per index, its order-preserving key (see `keys.py`) in a
column with a real SQL index. A range of an index is a range of that column.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import SchemaError
from ..schema import Schema, TableDef
from ..values import WriteSet

CommitListener = Callable[[int, WriteSet], None]

CT_INDEX = "by_creation_time"


def key_column(index: str) -> str:
    return "k__ct" if index == CT_INDEX else f"k_{index}"


@dataclass
class WriteOutcome:
    value: Any = None
    error: BaseException | None = None
    ts: int = 0
    writes: WriteSet = field(default_factory=WriteSet)


# A write job runs inside a transaction on a store connection and returns (value, writes).
WriteJob = Callable[["StoreConn"], tuple[Any, WriteSet]]


class Dialect:
    param = "?"
    blob = "BLOB"
    real = "REAL"

    def __init__(self) -> None:
        self._sql: dict[tuple[str, ...], str] = {}

    def sql(self, kind: str, table: str, *extra: str) -> str:
        cache_key = (kind, table, *extra)
        text = self._sql.get(cache_key)
        if text is None:
            text = self._build(kind, table, *extra)
            self._sql[cache_key] = text
        return text

    def _build(self, kind: str, table: str, *extra: str) -> str:
        p = self.param
        t = f"t_{table}"
        if kind == "get":
            return f"SELECT ct, doc FROM {t} WHERE id = {p}"
        if kind == "scan":
            column, direction, has_lo, has_hi, has_limit = extra
            where = []
            if has_lo == "1":
                where.append(f"{column} >= {p}")
            if has_hi == "1":
                where.append(f"{column} < {p}")
            clause = (" WHERE " + " AND ".join(where)) if where else ""
            limit = f" LIMIT {p}" if has_limit == "1" else ""
            return f"SELECT {column}, id, ct, doc FROM {t}{clause} ORDER BY {column} {direction}{limit}"
        if kind == "insert":
            columns = ["id", "ct", "doc", *extra]
            return f"INSERT INTO {t} ({', '.join(columns)}) VALUES ({', '.join([p] * len(columns))})"
        if kind == "update":
            sets = ", ".join(f"{c} = {p}" for c in ("doc", *extra))
            return f"UPDATE {t} SET {sets} WHERE id = {p}"
        if kind == "delete":
            return f"DELETE FROM {t} WHERE id = {p}"
        raise ValueError(kind)


class StoreConn:
    """One database connection, used by one thread at a time, inside a transaction."""

    dialect: Dialect

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect

    # Subclasses: execute(sql, params) -> cursor-like with fetchone/fetchall; interrupt().
    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self.raw.execute(sql, params)

    def interrupt(self) -> None:
        raise NotImplementedError

    def get(self, table: str, doc_id: str) -> tuple[float, str] | None:
        row = self.execute(self.dialect.sql("get", table), (doc_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def scan(self, table: str, index: str, lo: bytes | None, hi: bytes | None, descending: bool,
             limit: int | None) -> list[tuple[bytes, str, float, str]]:
        column = key_column(index)
        params: list[Any] = []
        if lo:
            params.append(lo)
        if hi is not None:
            params.append(hi)
        if limit is not None:
            params.append(limit)
        sql = self.dialect.sql("scan", table, column, "DESC" if descending else "ASC",
                               "1" if lo else "0", "1" if hi is not None else "0",
                               "1" if limit is not None else "0")
        return [(bytes(r[0]), r[1], r[2], r[3]) for r in self.execute(sql, params).fetchall()]

    def insert(self, table: str, doc_id: str, ct: float, doc: str, keys: dict[str, bytes]) -> None:
        columns = tuple(key_column(i) for i in keys)
        self.execute(self.dialect.sql("insert", table, *columns), (doc_id, ct, doc, *keys.values()))

    def update(self, table: str, doc_id: str, doc: str, keys: dict[str, bytes]) -> None:
        columns = tuple(key_column(i) for i in keys)
        self.execute(self.dialect.sql("update", table, *columns), (doc, *keys.values(), doc_id))

    def delete(self, table: str, doc_id: str) -> None:
        self.execute(self.dialect.sql("delete", table), (doc_id,))

    def session_result(self, session_id: str, request_id: int) -> tuple[str, int] | None:
        p = self.dialect.param
        row = self.execute(f"SELECT result, ts FROM _session_requests WHERE session_id = {p} AND request_id = {p}",
                           (session_id, request_id)).fetchone()
        return (row[0], int(row[1])) if row else None

    def claim_session_request(self, session_id: str, request_id: int, result: str, ts: int) -> bool:
        """Record a mutation's result under (session, request); False if one is already recorded."""
        p = self.dialect.param
        cursor = self.execute(f"INSERT INTO _session_requests (session_id, request_id, result, ts) VALUES ({p}, {p}, {p}, {p})"
                              " ON CONFLICT DO NOTHING", (session_id, request_id, result, ts))
        return bool(cursor.rowcount == 1)

    def forget_session_requests(self, before_ts: int) -> int:
        p = self.dialect.param
        cursor = self.execute(f"DELETE FROM _session_requests WHERE ts < {p}", (before_ts,))
        return int(cursor.rowcount or 0)

    def count(self, table: str) -> int:
        return int(self.execute(f"SELECT count(*) FROM t_{table}").fetchone()[0])


class Store:
    """A database holding Corral's documents. Subclasses: SqliteStore, PostgresStore."""

    dialect_name = "abstract"
    dialect: Dialect
    retryable_errors: tuple[type[BaseException], ...] = ()  # lost races the store retries itself

    def __init__(self) -> None:
        self.listeners: list[CommitListener] = []
        self.schema: Schema | None = None
        self.published_ts = 0
        self._publish_lock = threading.Lock()

    # -- lifecycle
    def open(self, schema: Schema) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def add_listener(self, listener: CommitListener) -> None:
        self.listeners.append(listener)

    # -- transactions
    def snapshot(self) -> AbstractContextManager[tuple[StoreConn, int]]:
        """A read-only transaction on a consistent snapshot, with the commit ts it reflects."""
        raise NotImplementedError

    def writes_between(self, conn: StoreConn, after: int, upto: int) -> list[tuple[int, WriteSet]]:
        """Commits in (after, upto] read from inside a snapshot, for stores whose commits
        can become visible before this node has heard of them."""
        return []

    def catch_up(self, conn: StoreConn, upto: int) -> None:
        """Announce every commit up to `upto` that a snapshot sees but this node has not yet heard of."""
        with self._publish_lock:
            for ts, writes in self.writes_between(conn, self.published_ts, upto):
                self._publish(ts, writes)
            self.published_ts = max(self.published_ts, upto)

    def submit(self, job: WriteJob) -> Future[WriteOutcome]:
        raise NotImplementedError

    async def run(self, job: WriteJob) -> WriteOutcome:
        """Run a write job from a coroutine."""
        return await asyncio.wrap_future(self.submit(job))

    def latest_ts(self) -> int:
        raise NotImplementedError

    def _publish(self, ts: int, writes: WriteSet) -> None:
        if ts <= self.published_ts:
            return
        for listener in self.listeners:
            listener(ts, writes)
        # Raised only once every listener has seen the commit: whoever reads published_ts under a
        # listener's lock knows that every commit up to it has been taken into account.
        self.published_ts = ts

    # -- meta values
    def get_meta(self, key: str) -> str | None:
        raise NotImplementedError

    def set_meta_if_absent(self, key: str, value: str) -> str:
        raise NotImplementedError

    # -- schema
    def _existing_tables(self, conn: StoreConn) -> dict[str, dict[str, Any]]:
        rows = conn.execute("SELECT name, fingerprint, indexes FROM _tables").fetchall()
        return {r[0]: {"fingerprint": r[1], "indexes": orjson.loads(r[2])} for r in rows}

    def _sync_schema(self, conn: StoreConn, schema: Schema) -> None:
        """Bring the database to the schema: add tables and indexes, refuse violations."""
        from ..values import decode, encode
        from ..values import index_keys as keymod

        existing = self._existing_tables(conn)
        p = self.dialect.param
        for name, tdef in schema.tables.items():
            wanted: dict[str, list[str]] = {"by_creation_time": [], **{k: list(v) for k, v in tdef.indexes.items()}}
            if name not in existing:
                cols = ["id TEXT PRIMARY KEY", f"ct {self.dialect.real} NOT NULL", "doc TEXT NOT NULL"]
                cols += [f"{key_column(i)} {self.dialect.blob} NOT NULL" for i in wanted]
                conn.execute(f"CREATE TABLE t_{name} ({', '.join(cols)})")
                for index in wanted:
                    conn.execute(f"CREATE UNIQUE INDEX ix_{name}__{index} ON t_{name} ({key_column(index)})")
                conn.execute(f"INSERT INTO _tables (name, fingerprint, indexes) VALUES ({p}, {p}, {p})",
                             (name, tdef.fingerprint, orjson.dumps(wanted).decode()))
                continue
            have = existing[name]["indexes"]
            rows = None
            gained_defaults: list[tuple[str, float, dict[str, Any]]] = []
            if existing[name]["fingerprint"] != tdef.fingerprint:
                rows = conn.execute(f"SELECT id, ct, doc FROM t_{name}").fetchall()
                gained_defaults = _check_documents(tdef, rows)
            for index in [i for i in have if i not in wanted or have[i] != wanted[i]]:
                conn.execute(f"DROP INDEX ix_{name}__{index}")
                conn.execute(f"ALTER TABLE t_{name} DROP COLUMN {key_column(index)}")
            added = [i for i in wanted if i not in have or have[i] != wanted[i]]
            if added:
                if rows is None:
                    rows = conn.execute(f"SELECT id, ct, doc FROM t_{name}").fetchall()
                for index in added:
                    conn.execute(f"ALTER TABLE t_{name} ADD COLUMN {key_column(index)} {self.dialect.blob}")
                for doc_id, ct, text in rows:
                    doc = decode(orjson.loads(text))
                    doc["_creationTime"] = ct
                    values = [keymod.index_key(doc, wanted[i], ct, doc_id) for i in added]
                    sets = ", ".join(f"{key_column(i)} = {p}" for i in added)
                    conn.execute(f"UPDATE t_{name} SET {sets} WHERE id = {p}", (*values, doc_id))
                for index in added:
                    conn.execute(f"CREATE UNIQUE INDEX ix_{name}__{index} ON t_{name} ({key_column(index)})")
            for doc_id, ct, doc in gained_defaults:  # store (and index) the defaults new fields declare
                values = [keymod.index_key(doc, wanted[i], ct, doc_id) for i in wanted]
                sets = ", ".join(["doc = " + p, *(f"{key_column(i)} = {p}" for i in wanted)])
                conn.execute(f"UPDATE t_{name} SET {sets} WHERE id = {p}",
                             (orjson.dumps(encode(doc)).decode(), *values, doc_id))
            conn.execute(f"UPDATE _tables SET fingerprint = {p}, indexes = {p} WHERE name = {p}",
                         (tdef.fingerprint, orjson.dumps(wanted).decode(), name))


def _check_documents(tdef: TableDef, rows: list[Any]) -> list[tuple[str, float, dict[str, Any]]]:
    """Refuse a schema that existing documents violate; return the documents that gain defaults."""
    from ..schema import ValidationFailure
    from ..values import decode

    problems = []
    gained = []
    for doc_id, ct, text in rows:
        stored = decode(orjson.loads(text))
        try:
            valid = tdef.validate(stored)
        except ValidationFailure as exc:
            problems.append(f"  {tdef.name} {doc_id}: {exc}")
            continue
        if valid != stored:
            gained.append((doc_id, ct, valid))
    if problems:
        shown = problems[:20]
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise SchemaError(
            f"the schema of table '{tdef.name}' ({tdef.module}) does not fit {len(problems)} existing document(s):\n"
            + "\n".join(shown) + more
            + "\nMake the new fields optional, or change those documents before applying this schema."
        )
    return gained
