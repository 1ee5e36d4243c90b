"""`ctx.db`: documents, index ranges and pagination over a store connection.

Reads record what they touched (index key ranges) so live queries know when to re-run;
writes record the keys they changed so commits know whom to wake.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Generator, Iterator
from typing import Any

import orjson

from ..errors import DocumentValidationError, FunctionError, LimitExceeded, ReadOnlyViolation
from ..schema import SYSTEM_INDEXES, Schema, TableDef, ValidationFailure
from ..storage.base import CT_INDEX, StoreConn
from ..values import (
    MAX_DOCUMENT_BYTES,
    KeyRange,
    ReadSet,
    ValueError_,
    WriteSet,
    check_value,
    decode,
    encode,
    ids,
)
from ..values import index_keys as keys

BATCH = 128


def _table_name(table: Any) -> str:
    if isinstance(table, str):
        return table
    name = getattr(table, "__table_name__", None)
    if name is None:
        raise FunctionError(f"{table!r} is not a table; pass a table name or a Table class")
    return str(name)


class IndexRange:
    """Builds a range over an index's fields, in order: `eq` on a prefix, then bounds on the next field."""

    def __init__(self, table: str, index: str, fields: tuple[str, ...]) -> None:
        self._table = table
        self._index = index
        self._fields = (*fields, "_creationTime")
        self._prefix = b""
        self._used = 0
        self._lower: tuple[bytes, bool] | None = None
        self._upper: tuple[bytes, bool] | None = None
        self._bound_field: str | None = None

    def _expect(self, field: str, op: str) -> None:
        if self._lower is not None or self._upper is not None:
            if op == "eq" or field != self._bound_field:
                raise FunctionError(f"index range on '{self._index}': '{op}({field!r})' after a bound; ranges are eq… then at most one lower and one upper bound on the next field")
            return
        if self._used >= len(self._fields) or self._fields[self._used] != field:
            expected = self._fields[self._used] if self._used < len(self._fields) else "nothing more"
            raise FunctionError(f"index '{self._index}' of table '{self._table}' has fields {list(self._fields)}; expected '{expected}' next, got '{field}'")

    def _encode(self, value: Any) -> bytes:
        try:
            return keys.encode_component(value)
        except TypeError as exc:
            raise FunctionError(f"index range value {value!r}: {exc}") from exc

    def eq(self, field: str, value: Any) -> IndexRange:
        self._expect(field, "eq")
        self._prefix += self._encode(value)
        self._used += 1
        return self

    def _bound(self, field: str, op: str, value: Any, lower: bool, inclusive: bool) -> IndexRange:
        self._expect(field, op)
        self._bound_field = field
        bound = (self._prefix + self._encode(value), inclusive)
        if lower:
            if self._lower is not None:
                raise FunctionError(f"index range on '{self._index}' has two lower bounds")
            self._lower = bound
        else:
            if self._upper is not None:
                raise FunctionError(f"index range on '{self._index}' has two upper bounds")
            self._upper = bound
        return self

    def gt(self, field: str, value: Any) -> IndexRange:
        return self._bound(field, "gt", value, True, False)

    def gte(self, field: str, value: Any) -> IndexRange:
        return self._bound(field, "gte", value, True, True)

    def lt(self, field: str, value: Any) -> IndexRange:
        return self._bound(field, "lt", value, False, False)

    def lte(self, field: str, value: Any) -> IndexRange:
        return self._bound(field, "lte", value, False, True)

    def bounds(self) -> tuple[bytes, bytes | None]:
        lo = self._prefix
        hi = keys.successor(self._prefix) if self._prefix else None
        if self._lower is not None:
            key, inclusive = self._lower
            lo = key if inclusive else (keys.successor(key) or key)
        if self._upper is not None:
            key, inclusive = self._upper
            hi = keys.successor(key) if inclusive else key
        return lo, hi


class Query:
    def __init__(self, db: DatabaseReader, table: TableDef) -> None:
        self._db = db
        self._table = table
        self._index = CT_INDEX
        self._lo: bytes = b""
        self._hi: bytes | None = None
        self._descending = False
        self._filters: list[Callable[[Any], Any]] = []
        self._ordered = False

    def with_index(self, name: str, range_fn: Callable[[IndexRange], IndexRange] | None = None) -> Query:
        if name == CT_INDEX:
            fields: tuple[str, ...] = ()
        elif name in self._table.indexes:
            fields = self._table.indexes[name]
        else:
            known = ", ".join([CT_INDEX, *self._table.indexes])
            raise FunctionError(f"table '{self._table.name}' has no index '{name}'; its indexes are: {known}")
        self._index = name
        if range_fn is not None:
            rng = range_fn(IndexRange(self._table.name, name, fields))
            if not isinstance(rng, IndexRange):
                raise FunctionError("the index range function must return the range it was given (q.eq(...)...)")
            self._lo, self._hi = rng.bounds()
        return self

    def order(self, direction: str) -> Query:
        if direction not in ("asc", "desc"):
            raise FunctionError(f"order must be 'asc' or 'desc', not {direction!r}")
        self._descending = direction == "desc"
        return self

    def filter(self, predicate: Callable[[Any], Any]) -> Query:
        self._filters.append(predicate)
        return self

    def _rows(self, lo: bytes, hi: bytes | None, limit_hint: int | None) -> Generator[tuple[bytes, Any], None, None]:
        """Yield (key, document) in order, recording the range actually read."""
        read = self._db._begin_read(self._table.name, self._index, lo, hi)
        batch = limit_hint if (limit_hint and not self._filters) else BATCH
        cur_lo, cur_hi = lo, hi
        while True:
            rows = self._db._conn.scan(self._table.name, self._index, cur_lo, cur_hi, self._descending, batch)
            self._db._count_scanned(len(rows))
            for key, doc_id, ct, text in rows:
                if self._descending:
                    read.lo = key
                else:
                    read.hi = key + b"\x00"
                doc = self._db._decode(self._table, doc_id, ct, text)
                if all(f(doc) for f in self._filters):
                    yield key, doc
            if len(rows) < batch:
                read.lo, read.hi = (lo if self._descending else read.lo), (read.hi if self._descending else hi)
                return
            last = rows[-1][0]
            if self._descending:
                cur_hi = last
            else:
                cur_lo = last + b"\x00"
            batch = min(batch * 2, 1024)

    def __iter__(self) -> Iterator[Any]:
        for _key, doc in self._rows(self._lo, self._hi, None):
            yield doc

    def collect(self) -> list[Any]:
        return list(self)

    def take(self, n: int) -> list[Any]:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise FunctionError(f"take() needs a non-negative integer, not {n!r}")
        out: list[Any] = []
        if n == 0:
            return out
        for _key, doc in self._rows(self._lo, self._hi, n):
            out.append(doc)
            if len(out) >= n:
                break
        return out

    def first(self) -> Any | None:
        found = self.take(1)
        return found[0] if found else None

    def unique(self) -> Any | None:
        found = self.take(2)
        if len(found) > 1:
            raise FunctionError(f"unique() found more than one document in table '{self._table.name}' ({found[0]['_id']}, {found[1]['_id']})")
        return found[0] if found else None

    def paginate(self, opts: dict[str, Any] | None = None, *, num_items: int | None = None,
                 cursor: str | None = None, end_cursor: str | None = None) -> dict[str, Any]:
        """Convex pagination: `{"numItems": n, "cursor": c|None}` → `{page, isDone, continueCursor}`."""
        if opts is not None:
            if not isinstance(opts, dict):
                raise FunctionError("paginate() takes {'numItems': n, 'cursor': c}")
            num_items = opts.get("numItems", num_items)
            cursor = opts.get("cursor", cursor)
            end_cursor = opts.get("endCursor", end_cursor)
        if isinstance(num_items, float) and num_items.is_integer():
            num_items = int(num_items)
        if not isinstance(num_items, int) or isinstance(num_items, bool) or num_items < 0:
            raise FunctionError(f"paginationOpts.numItems must be a non-negative integer, not {num_items!r}")
        lo, hi = self._lo, self._hi
        if cursor:
            start = _decode_cursor(cursor)
            if self._descending:
                hi = start if hi is None else min(hi, start)
            else:
                lo = max(lo, start + b"\x00")
        end_key = _decode_cursor(end_cursor) if end_cursor else None
        page: list[Any] = []
        last_key: bytes | None = None
        done = True
        rows = self._rows(lo, hi, None if end_key else num_items + 1)
        for key, doc in rows:
            if end_key is not None:
                if (key > end_key) if not self._descending else (key < end_key):
                    done = False
                    break
            elif len(page) >= num_items:
                done = False
                break
            page.append(doc)
            last_key = key
        rows.close()
        if last_key is None:
            last_key = end_key or ((lo or b"") if not self._descending else (hi or b"\xff"))
        return {"page": page, "isDone": done, "continueCursor": _encode_cursor(last_key)}


def _encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def _decode_cursor(cursor: Any) -> bytes:
    if not isinstance(cursor, str):
        raise FunctionError(f"a pagination cursor is a string from continueCursor, not {cursor!r}")
    try:
        return base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise FunctionError("this pagination cursor is not one Corral issued; pass null to start from the beginning") from exc


class _MutableRange:
    __slots__ = ("table", "index", "lo", "hi")

    def __init__(self, table: str, index: str, lo: bytes, hi: bytes | None) -> None:
        self.table, self.index, self.lo, self.hi = table, index, lo, hi


class DatabaseReader:
    """`ctx.db` in queries."""

    MAX_SCANNED = 32_000

    def __init__(self, conn: StoreConn, schema: Schema, read_set: ReadSet | None = None) -> None:
        self._conn = conn
        self._schema = schema
        self._read_set = read_set
        self._pending: list[_MutableRange] = []
        self._scanned = 0

    def _table(self, table: Any) -> TableDef:
        name = _table_name(table)
        try:
            return self._schema.table(name)
        except KeyError:
            raise FunctionError(f"there is no table '{name}'; declare it in schema.py") from None

    def _count_scanned(self, n: int) -> None:
        self._scanned += n
        if self._scanned > self.MAX_SCANNED:
            raise LimitExceeded(f"this function read more than {self.MAX_SCANNED} documents; use an index range or paginate")

    def _begin_read(self, table: str, index: str, lo: bytes, hi: bytes | None) -> _MutableRange:
        entry = _MutableRange(table, index, lo, hi)
        if self._read_set is not None:
            self._pending.append(entry)
        return entry

    def finish_read_set(self) -> ReadSet | None:
        if self._read_set is not None:
            for entry in self._pending:
                self._read_set.ranges.append(KeyRange(entry.table, entry.index, entry.lo, entry.hi))
            self._pending.clear()
        return self._read_set

    def _decode(self, tdef: TableDef, doc_id: str, ct: float, text: str) -> Any:
        doc = decode(orjson.loads(text))
        doc["_id"] = doc_id
        doc["_creationTime"] = ct
        return tdef.wrap(doc)

    def get(self, doc_id: Any) -> Any | None:
        tdef = self._schema.table_of_id(doc_id)
        if tdef is None:
            if isinstance(doc_id, str):
                return None
            raise FunctionError(f"db.get() takes a document id string, not {type(doc_id).__name__}")
        key = keys.id_key(doc_id)
        self._begin_read(tdef.name, "by_id", key, key + b"\x00")
        row = self._conn.get(tdef.name, doc_id)
        if row is None:
            return None
        self._remember(doc_id, row[0], row[1])
        return self._decode(tdef, doc_id, row[0], row[1])

    def _remember(self, doc_id: str, ct: float, text: str) -> None:
        """Writers keep the rows they read, so a patch after a get does not read again."""

    def query(self, table: Any) -> Query:
        return Query(self, self._table(table))

    def normalize_id(self, table: Any, doc_id: Any) -> str | None:
        return doc_id if ids.is_id_of(doc_id, self._table(table).name) else None

    def insert(self, *_a: Any, **_k: Any) -> Any:
        raise ReadOnlyViolation("queries cannot write; do this in a mutation")

    patch = replace = delete = insert


class DatabaseWriter(DatabaseReader):
    """`ctx.db` in mutations: reads see the mutation's own writes."""

    system_writes = False  # set while Corral itself writes a system table ('_scheduled_functions'…)

    def _check_writable(self, tdef: TableDef) -> None:
        if tdef.name.startswith("_") and not self.system_writes:
            raise ReadOnlyViolation(f"'{tdef.name}' is a system table: functions read it, Corral writes it (use ctx.scheduler to schedule or cancel)")

    def __init__(self, conn: StoreConn, schema: Schema, now_ms: float, max_document_bytes: int = MAX_DOCUMENT_BYTES) -> None:
        super().__init__(conn, schema, None)
        self.writes = WriteSet()
        self._now_ms = now_ms
        self._last_ct = 0.0
        self._max_bytes = max_document_bytes
        self.docs_written = 0
        self._rows: dict[str, tuple[float, str]] = {}  # id → (creation time, stored text) as of now

    def _remember(self, doc_id: str, ct: float, text: str) -> None:
        self._rows[doc_id] = (ct, text)

    def _index_keys(self, tdef: TableDef, doc: dict[str, Any], ct: float, doc_id: str) -> dict[str, bytes]:
        out = {CT_INDEX: keys.index_key(doc, (), ct, doc_id)}
        for name, fields in tdef.indexes.items():
            out[name] = keys.index_key(doc, fields, ct, doc_id)
        return out

    def _checked(self, tdef: TableDef, value: Any, what: str) -> tuple[dict[str, Any], str]:
        if not isinstance(value, dict):
            raise DocumentValidationError(f"{what}: a document is an object, not {type(value).__name__}")
        body = {k: v for k, v in value.items() if k not in ("_id", "_creationTime")}
        for key in body:
            if not isinstance(key, str) or key.startswith(("$", "_")):
                raise DocumentValidationError(f"{what}: field name {key!r} is reserved; fields may not start with '$' or '_'")
        try:
            body = tdef.validate(body)
        except ValidationFailure as exc:
            raise DocumentValidationError(f"{what} does not match the schema of table '{tdef.name}': {exc}") from None
        try:
            check_value(body, what=f"{what}")
            text = orjson.dumps(encode(body)).decode()
        except ValueError_ as exc:
            raise DocumentValidationError(f"{what}: {exc}") from None
        if len(text) > self._max_bytes:
            raise LimitExceeded(f"{what} is {len(text)} bytes, over the limit of {self._max_bytes} bytes per document")
        return body, text

    def _count_written(self) -> None:
        self.docs_written += 1
        if self.docs_written > 16_000:
            raise LimitExceeded("this mutation wrote more than 16000 documents; split the work over several mutations")

    def insert(self, table: Any, value: dict[str, Any] | None = None) -> Any:  # an Id of that table
        if value is None and isinstance(table, dict) and hasattr(type(table), "__table_name__"):
            value, table = table, type(table)
        tdef = self._table(table)
        self._check_writable(tdef)
        if value is None:
            raise FunctionError("db.insert(table, document) needs a document")
        body, text = self._checked(tdef, value, f"document inserted into '{tdef.name}'")
        doc_id = ids.new_id(tdef.name)
        ct = max(self._now_ms, self._last_ct + 0.001)
        self._last_ct = ct
        index_keys = self._index_keys(tdef, body, ct, doc_id)
        self._conn.insert(tdef.name, doc_id, ct, text, index_keys)
        self._rows[doc_id] = (ct, text)
        self._record(tdef.name, doc_id, index_keys)
        self._count_written()
        return doc_id

    def _existing(self, doc_id: Any, verb: str) -> tuple[TableDef, dict[str, Any], float]:
        tdef = self._schema.table_of_id(doc_id)
        row = self._rows.get(doc_id) if isinstance(doc_id, str) else None
        if row is None and tdef is not None:
            row = self._conn.get(tdef.name, doc_id)
        if tdef is None or row is None:
            raise FunctionError(f"cannot {verb} document {doc_id!r}: it does not exist")
        self._check_writable(tdef)
        doc = decode(orjson.loads(row[1]))
        return tdef, doc, row[0]

    def _rewrite(self, tdef: TableDef, doc_id: str, old: dict[str, Any], ct: float, new: dict[str, Any], verb: str) -> None:
        body, text = self._checked(tdef, new, f"document {doc_id} after {verb}")
        old_keys = self._index_keys(tdef, old, ct, doc_id)
        new_keys = self._index_keys(tdef, body, ct, doc_id)
        changed = {k: v for k, v in new_keys.items() if old_keys[k] != v}
        self._conn.update(tdef.name, doc_id, text, changed)
        self._rows[doc_id] = (ct, text)
        self._record(tdef.name, doc_id, old_keys)
        self._record(tdef.name, doc_id, changed)
        self._count_written()

    def patch(self, doc_id: Any, fields: dict[str, Any]) -> None:  # type: ignore[override]
        if not isinstance(fields, dict):
            raise FunctionError("db.patch(id, fields) takes an object of fields to change")
        tdef, old, ct = self._existing(doc_id, "patch")
        for key in fields:
            if key in ("_id", "_creationTime") and fields[key] not in (doc_id, ct):
                raise DocumentValidationError(f"patch of {doc_id} tries to change the system field '{key}'")
        new = dict(old)
        new.update({k: v for k, v in fields.items() if k not in ("_id", "_creationTime")})
        self._rewrite(tdef, doc_id, old, ct, new, "patch")

    def replace(self, doc_id: Any, value: dict[str, Any]) -> None:  # type: ignore[override]
        tdef, old, ct = self._existing(doc_id, "replace")
        self._rewrite(tdef, doc_id, old, ct, value, "replace")

    def delete(self, doc_id: Any) -> None:  # type: ignore[override]
        tdef, old, ct = self._existing(doc_id, "delete")
        self._conn.delete(tdef.name, doc_id)
        self._rows.pop(doc_id, None)
        self._record(tdef.name, doc_id, self._index_keys(tdef, old, ct, doc_id))
        self._count_written()

    def _record(self, table: str, doc_id: str, index_keys: dict[str, bytes]) -> None:
        writes = self.writes
        writes.add(table, "by_id", keys.id_key(doc_id))
        for index, key in index_keys.items():
            writes.add(table, index, key)


assert set(SYSTEM_INDEXES) == {"by_id", CT_INDEX}
