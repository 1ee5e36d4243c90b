"""File storage: upload URLs, storage records, `ctx.storage`, and garbage collection of blobs.

Convex's model. A mutation or an action calls `ctx.storage.generate_upload_url()`; the client
POSTs the file's raw bytes to that URL and gets `{"storageId": …}`; functions keep the id in
their documents and turn it into a download URL with `ctx.storage.get_url(id)`. Actions can
also store bytes directly with `ctx.storage.store(data)`.

Bytes stream into a `BlobStore` (`blobs.py`), hashed on the way, and are kept once per
sha256. What exists is decided by the database, in three tables this module creates next
to the documents:

    _storage(id, ct, sha256, size, content_type)   one row per storage id
    _storage_blobs(sha256, size, refs)             one row per blob: how many storage ids name it
    _storage_tokens(token, expires)                upload tokens already used, until they expire

`_storage` is not a table of the schema, but reads of it are recorded like document reads
(table `_storage`, index `by_id`), so a live query that called `get_url` or `get_metadata`
is re-run when that file is stored or deleted.

Blob files are created and removed only inside a transaction that holds the blob's
`_storage_blobs` row, so a blob is never removed while a committed record names it, even
with several nodes sharing one directory: an upload takes the row (refs + 1) before it
places the file; a collection takes the row and removes the file only if refs is 0.
Deleting a record decrements refs and queues a collection, which waits for that row.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import secrets
import threading
from collections.abc import AsyncIterable, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import structlog

from ..clock import Clock
from ..errors import CorralError, FunctionError, LimitExceeded
from ..schema import Id
from ..settings import Settings
from ..storage import Store, StoreConn, WriteOutcome
from ..values import WriteSet, ids
from ..values import index_keys as keys
from .blobs import BlobStore, LocalBlobStore, StagedBlob

if TYPE_CHECKING:
    from ..database import DatabaseReader, DatabaseWriter
    from ..runtime import Engine

log = structlog.get_logger("corral.files")

TABLE = "_storage"  # the name reads and writes are recorded under, and the ids' table
META_KEY = "storage_upload_key"
TOKEN_VERSION = 1
_TOKEN_LEN = 1 + 16 + 8 + 32  # version, token id, expiry (ms, big-endian), HMAC-SHA256
WRITE_BATCH = 1 << 20  # bytes handed to the writing thread at a time

TABLES = (
    "CREATE TABLE IF NOT EXISTS _storage (id TEXT PRIMARY KEY, ct DOUBLE PRECISION NOT NULL,"
    " sha256 TEXT NOT NULL, size BIGINT NOT NULL, content_type TEXT)",
    "CREATE TABLE IF NOT EXISTS _storage_blobs (sha256 TEXT PRIMARY KEY, size BIGINT NOT NULL, refs BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS _storage_tokens (token TEXT PRIMARY KEY, expires DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS _storage_tokens_by_expiry ON _storage_tokens (expires)",
)


class StoredFile:
    """Stands for the files of `ctx.storage` where a table would: `Id[StoredFile]` is a storage id."""

    __table_name__ = TABLE


StorageId = Id[StoredFile]  # annotate arguments and fields that hold a storage id: `file: StorageId`


class UploadRejected(CorralError):
    """An upload refused before it could store anything: answered with `status` and `code`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code


@dataclass(frozen=True)
class FileRecord:
    storage_id: str
    sha256: str
    size: int
    content_type: str | None
    creation_time: float

    def metadata(self) -> dict[str, Any]:
        """Convex's `FileMetadata`: storageId, sha256 (hex), size (bytes), contentType (or None)."""
        return {"storageId": self.storage_id, "sha256": self.sha256, "size": self.size, "contentType": self.content_type}


def is_storage_id(value: object) -> bool:
    return ids.is_id_of(value, TABLE)


def _checked_id(storage_id: Any) -> str:
    if not is_storage_id(storage_id):
        raise FunctionError(f"{storage_id!r} is not a storage id; storage ids come from an upload URL's "
                            "response ({\"storageId\": …}) or from ctx.storage.store()")
    return str(storage_id)


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FileStorage:
    """The engine's file storage: records in the database, bytes in a blob store."""

    def __init__(self, settings: Settings, store: Store, clock: Clock, blobs: BlobStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        root = settings.storage_dir or Path(settings.data_dir) / "storage"
        self.blobs: BlobStore = blobs or LocalBlobStore(Path(root), clock, settings.storage_stale_upload_age)
        # The URL clients reach this node at; the node sets it (get_url and upload URLs start with it).
        self.origin = f"http://{settings.host}:{settings.port}"
        self._key = b""
        self._pending: set[Future[WriteOutcome]] = set()
        self._pending_lock = threading.Lock()
        self._next_prune = 0.0

    # -- lifecycle
    def start(self) -> None:
        """Create the tables, load the signing key, collect blobs left unreferenced by a crash."""
        self.blobs.start()

        def create(conn: StoreConn) -> tuple[Any, WriteSet]:
            for statement in TABLES:
                conn.execute(statement)
            return None, WriteSet()

        self._wait(self.store.submit(create))
        # Kept in the database, so every node on one PostgreSQL accepts the others' upload URLs.
        self._key = bytes.fromhex(self.store.set_meta_if_absent(META_KEY, secrets.token_hex(32)))
        now = self.clock.now_ms()
        self._wait(self.store.submit(self._prune_job(now)))
        self._next_prune = now + self.settings.upload_url_lifetime * 1000.0
        for sha256 in self._unreferenced():
            self._wait(self.store.submit(self._collect_job(sha256)))

    @staticmethod
    def _wait(future: Future[WriteOutcome]) -> Any:
        outcome = future.result()
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def _unreferenced(self) -> list[str]:
        with self.store.snapshot() as (conn, _ts):
            return [str(r[0]) for r in conn.execute("SELECT sha256 FROM _storage_blobs WHERE refs <= 0").fetchall()]

    # -- upload URLs
    def url_for(self, storage_id: str) -> str:
        return f"{self.origin}/api/storage/{storage_id}"

    def new_upload_url(self) -> str:
        """A single-use URL to POST one file to, valid for `upload_url_lifetime` seconds."""
        expires = int(self.clock.now_ms() + self.settings.upload_url_lifetime * 1000.0)
        payload = bytes([TOKEN_VERSION]) + secrets.token_bytes(16) + expires.to_bytes(8, "big")
        token = base64.urlsafe_b64encode(payload + self._sign(payload)).rstrip(b"=").decode("ascii")
        return f"{self.origin}/api/storage/upload?token={token}"

    def _sign(self, payload: bytes) -> bytes:
        if not self._key:
            raise FunctionError("file storage is not started")
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def check_token(self, token: str | None) -> tuple[str, float]:
        """(token id, expiry in ms) of a token this deployment signed that has not expired."""
        if not token:
            raise UploadRejected(400, "MissingUploadToken", "the upload URL has no token; get one from ctx.storage.generate_upload_url()")
        try:
            raw = _b64decode(token)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != _TOKEN_LEN or raw[0] != TOKEN_VERSION or not hmac.compare_digest(raw[25:], self._sign(raw[:25])):
            raise UploadRejected(403, "InvalidUploadToken", "this upload URL was not issued by this deployment or has been altered; "
                                 "get a new one from ctx.storage.generate_upload_url()")
        expires = float(int.from_bytes(raw[17:25], "big"))
        if expires < self.clock.now_ms():
            raise UploadRejected(403, "UploadUrlExpired", "this upload URL has expired (they are valid for "
                                 f"{self.settings.upload_url_lifetime:g} s); get a new one from ctx.storage.generate_upload_url()")
        return raw[1:17].hex(), expires

    @staticmethod
    def _used(token_id: str) -> UploadRejected:
        return UploadRejected(403, "UploadUrlUsed", "this upload URL has already been used; each upload needs its own URL "
                              "from ctx.storage.generate_upload_url()")

    async def check_unused(self, engine: Engine, token_id: str) -> None:
        """Refuse a token already used, before receiving any byte (the claim at commit decides races)."""
        def read(conn: StoreConn, _ts: int) -> bool:
            p = conn.dialect.param
            return conn.execute(f"SELECT 1 FROM _storage_tokens WHERE token = {p}", (token_id,)).fetchone() is not None

        if await engine.in_snapshot(read):
            raise self._used(token_id)

    # -- records, on a connection inside a transaction
    @staticmethod
    def read_record(conn: StoreConn, storage_id: str) -> FileRecord | None:
        p = conn.dialect.param
        row = conn.execute(f"SELECT sha256, size, content_type, ct FROM _storage WHERE id = {p}", (storage_id,)).fetchone()
        if row is None:
            return None
        return FileRecord(storage_id, str(row[0]), int(row[1]), row[2], float(row[3]))

    @staticmethod
    def _written(storage_id: str) -> WriteSet:
        writes = WriteSet()
        writes.add(TABLE, "by_id", keys.id_key(storage_id))
        return writes

    def delete_record(self, conn: StoreConn, storage_id: str) -> str:
        """Delete a record; returns its blob's sha256, to collect once this transaction commits."""
        record = self.read_record(conn, storage_id)
        if record is None:
            raise FunctionError(f"cannot delete file {storage_id}: it does not exist (already deleted?)")
        p = conn.dialect.param
        conn.execute(f"DELETE FROM _storage WHERE id = {p}", (storage_id,))
        conn.execute(f"UPDATE _storage_blobs SET refs = refs - 1 WHERE sha256 = {p}", (record.sha256,))
        return record.sha256

    def _create_job(self, staged: StagedBlob, sha256: str, content_type: str | None,
                    token: tuple[str, float] | None) -> Callable[[StoreConn], tuple[Any, WriteSet]]:
        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            p = conn.dialect.param
            # Take the blob's row first: a collection of the same blob waits for (or conflicts with) us.
            conn.execute(f"INSERT INTO _storage_blobs (sha256, size, refs) VALUES ({p}, {p}, 1)"
                         " ON CONFLICT (sha256) DO UPDATE SET refs = _storage_blobs.refs + 1", (sha256, staged.size))
            if token is not None:
                claimed = conn.execute(f"INSERT INTO _storage_tokens (token, expires) VALUES ({p}, {p}) ON CONFLICT DO NOTHING",
                                       token)
                if claimed.rowcount != 1:
                    raise self._used(token[0])
            storage_id = ids.new_id(TABLE)
            conn.execute(f"INSERT INTO _storage (id, ct, sha256, size, content_type) VALUES ({p}, {p}, {p}, {p}, {p})",
                         (storage_id, self.clock.now_ms(), sha256, staged.size, content_type))
            self.blobs.place(staged, sha256)
            return storage_id, self._written(storage_id)

        return job

    def _collect_job(self, sha256: str) -> Callable[[StoreConn], tuple[Any, WriteSet]]:
        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            p = conn.dialect.param
            # Take the row, creating it if need be, so that an upload of the same bytes that has
            # not committed yet makes one of us wait and retry.
            row = conn.execute(f"INSERT INTO _storage_blobs (sha256, size, refs) VALUES ({p}, 0, 0)"
                               " ON CONFLICT (sha256) DO UPDATE SET refs = _storage_blobs.refs RETURNING refs",
                               (sha256,)).fetchone()
            if row is not None and int(row[0]) > 0:
                return False, WriteSet()
            conn.execute(f"DELETE FROM _storage_blobs WHERE sha256 = {p}", (sha256,))
            self.blobs.delete(sha256)
            return True, WriteSet()

        return job

    def _prune_job(self, now_ms: float) -> Callable[[StoreConn], tuple[Any, WriteSet]]:
        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            p = conn.dialect.param
            conn.execute(f"DELETE FROM _storage_tokens WHERE expires < {p}", (now_ms,))
            return None, WriteSet()

        return job

    # -- background work
    def _track(self, future: Future[WriteOutcome]) -> None:
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._untrack)

    def _untrack(self, future: Future[WriteOutcome]) -> None:
        with self._pending_lock:
            self._pending.discard(future)
        with contextlib.suppress(Exception):
            outcome = future.result()
            if outcome.error is not None:
                log.warning("files.background_job_failed", error=str(outcome.error))

    def collect_later(self, sha256: str) -> None:
        """Queue the removal of a blob, which happens only if no record names it by then.

        Safe to call inside a transaction that has not committed: on SQLite the job runs after
        it; on PostgreSQL it waits for the blob's row, which that transaction holds.
        """
        self._track(self.store.submit(self._collect_job(sha256)))

    async def drain(self) -> None:
        """Wait for the collections and clean-ups queued so far (tests use it; no timing involved)."""
        while True:
            with self._pending_lock:
                pending = list(self._pending)
            if not pending:
                return
            await asyncio.gather(*(asyncio.wrap_future(f) for f in pending))

    def _maybe_prune(self) -> None:
        now = self.clock.now_ms()
        if now >= self._next_prune:
            self._next_prune = now + self.settings.upload_url_lifetime * 1000.0
            self._track(self.store.submit(self._prune_job(now)))

    # -- storing bytes
    async def receive(self, chunks: AsyncIterable[bytes], content_type: str | None,
                      token: tuple[str, float] | None = None) -> StorageId:
        """Stream bytes into a new file and record it; returns its storage id.

        Raises UploadRejected (nothing kept) if the bytes pass `max_upload_bytes` or the token
        was used meanwhile.
        """
        loop = asyncio.get_running_loop()
        limit = self.settings.max_upload_bytes
        staged = await loop.run_in_executor(None, self.blobs.stage)
        pending: asyncio.Future[None] | None = None
        try:
            buffer: list[bytes] = []
            buffered = 0
            total = 0
            async for chunk in chunks:
                if not chunk:
                    continue
                total += len(chunk)
                if total > limit:
                    raise self.too_large()
                buffer.append(chunk)
                buffered += len(chunk)
                if buffered >= WRITE_BATCH:
                    if pending is not None:
                        await pending
                    data = b"".join(buffer)
                    buffer.clear()
                    buffered = 0
                    # The next chunks are received while this one is hashed and written.
                    pending = loop.run_in_executor(None, staged.write, data)
            if pending is not None:
                await pending
            if buffer:
                await loop.run_in_executor(None, staged.write, b"".join(buffer))
            sha256 = await loop.run_in_executor(None, staged.finish)
            return await self._record(staged, sha256, content_type, token)
        finally:
            if pending is not None and not pending.done():
                pending.add_done_callback(_consume)  # its outcome no longer matters
            staged.discard()  # waits for a write in progress; a placed blob stays

    def too_large(self) -> UploadRejected:
        limit = self.settings.max_upload_bytes
        return UploadRejected(413, "UploadTooLarge", f"the file is over the limit of {limit:,} bytes "
                              "(setting max_upload_bytes); nothing was stored")

    async def _record(self, staged: StagedBlob, sha256: str, content_type: str | None,
                      token: tuple[str, float] | None) -> StorageId:
        outcome = await self.store.run(self._create_job(staged, sha256, content_type, token))
        if outcome.error is not None:
            if not isinstance(outcome.error, UploadRejected):
                self.collect_later(sha256)  # the blob may have been placed before the failure
            raise outcome.error
        if token is not None:
            self._maybe_prune()
        return cast(StorageId, outcome.value)

    async def store_data(self, data: Any, content_type: str | None = None) -> StorageId:
        """`ctx.storage.store`: bytes, a binary file object, or a (sync or async) iterable of bytes."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            chunks: AsyncIterable[bytes] = _async_chunks([bytes(data)])
        elif isinstance(data, str):
            raise FunctionError("ctx.storage.store() takes bytes, not str; encode the text first (text.encode())")
        elif hasattr(data, "read"):
            chunks = _file_chunks(data)
        elif isinstance(data, AsyncIterable):
            chunks = data
        elif isinstance(data, Iterable):
            chunks = _async_chunks(data)
        else:
            raise FunctionError(f"ctx.storage.store() takes bytes, a binary file or an iterable of bytes, not {type(data).__name__}")
        try:
            return await self.receive(_only_bytes(chunks), content_type)
        except UploadRejected as exc:
            raise LimitExceeded(exc.message) from None

    async def delete(self, storage_id: str) -> None:
        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            sha256 = self.delete_record(conn, storage_id)
            self.collect_later(sha256)
            return None, self._written(storage_id)

        outcome = await self.store.run(job)
        if outcome.error is not None:
            raise outcome.error

    def open_blob(self, record: FileRecord) -> BinaryIO | None:
        return self.blobs.open(record.sha256)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _async_chunks(items: Iterable[Any]) -> Any:
    for item in items:
        yield item


async def _file_chunks(handle: Any) -> Any:
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.run_in_executor(None, handle.read, WRITE_BATCH)
        if not data:
            return
        yield data


async def _only_bytes(chunks: AsyncIterable[Any]) -> Any:
    async for chunk in chunks:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise FunctionError(f"ctx.storage.store() got a chunk of type {type(chunk).__name__}; chunks must be bytes")
        yield bytes(chunk)


# -- ctx.storage ------------------------------------------------------------------

class StorageReader:
    """`ctx.storage` in queries: reads are recorded, so a live query follows the file."""

    def __init__(self, files: FileStorage | None, db: DatabaseReader) -> None:
        self._files = files
        self._db = db

    def _service(self) -> FileStorage:
        if self._files is None:
            raise FunctionError("file storage is not available to this function")
        return self._files

    def _record(self, storage_id: Any) -> FileRecord | None:
        files = self._service()
        storage_id = _checked_id(storage_id)
        key = keys.id_key(storage_id)
        self._db._begin_read(TABLE, "by_id", key, key + b"\x00")
        return files.read_record(self._db._conn, storage_id)

    def get_url(self, storage_id: Any) -> str | None:
        """The URL that downloads the file (GET), or None if there is no such file."""
        record = self._record(storage_id)
        return self._service().url_for(record.storage_id) if record is not None else None

    def get_metadata(self, storage_id: Any) -> dict[str, Any] | None:
        """`{"storageId", "sha256" (hex), "size" (bytes), "contentType" (or None)}`, or None."""
        record = self._record(storage_id)
        return record.metadata() if record is not None else None


class StorageWriter(StorageReader):
    """`ctx.storage` in mutations: also upload URLs and deletion, in the mutation's transaction."""

    _db: DatabaseWriter

    def generate_upload_url(self) -> str:
        """A URL to POST one file to (raw body, its Content-Type kept); single use, expires."""
        return self._service().new_upload_url()

    def delete(self, storage_id: Any) -> None:
        """Delete the file when this mutation commits (its blob too, once no record names it)."""
        files = self._service()
        storage_id = _checked_id(storage_id)
        sha256 = files.delete_record(self._db._conn, storage_id)
        self._db.writes.add(TABLE, "by_id", keys.id_key(storage_id))
        self._db._count_written()
        files.collect_later(sha256)


class ActionStorage:
    """`ctx.storage` in actions: every method is a coroutine; each call is its own transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def _files(self) -> FileStorage:
        return self._engine.files

    async def _record(self, storage_id: Any) -> FileRecord | None:
        storage_id = _checked_id(storage_id)
        files = self._files
        return await self._engine.in_snapshot(lambda conn, _ts: files.read_record(conn, storage_id))  # type: ignore[no-any-return]

    async def generate_upload_url(self) -> str:
        return self._files.new_upload_url()

    async def get_url(self, storage_id: Any) -> str | None:
        record = await self._record(storage_id)
        return self._files.url_for(record.storage_id) if record is not None else None

    async def get_metadata(self, storage_id: Any) -> dict[str, Any] | None:
        record = await self._record(storage_id)
        return record.metadata() if record is not None else None

    async def store(self, data: Any, content_type: str | None = None) -> StorageId:
        """Store bytes (or a binary file, or an iterable of bytes chunks); returns the storage id."""
        return await self._files.store_data(data, content_type)

    async def get(self, storage_id: Any) -> bytes | None:
        """The file's bytes, read whole (for large files, download its URL in chunks instead)."""
        record = await self._record(storage_id)
        if record is None:
            return None
        loop = asyncio.get_running_loop()
        handle = await loop.run_in_executor(None, self._files.open_blob, record)
        if handle is None:
            return None
        with handle:
            return await loop.run_in_executor(None, handle.read)

    async def delete(self, storage_id: Any) -> None:
        await self._files.delete(_checked_id(storage_id))
