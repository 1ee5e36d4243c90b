"""API keys for machines: created once and shown once, stored as SHA-256 hashes, revocable.

A key is `e2b_` followed by 40 lowercase hex digits (160 random bits), the shape every version of
the official e2b SDK accepts as `E2B_API_KEY`. It is sent as `Authorization: Bearer <key>`,
`X-API-Key: <key>` or, over the sync socket, as the `value` of `Authenticate`.

Kinds: a `client` key calls functions as the machine it names (its identity is
`api-key|<key id>`); a `runner` key only lets a runner register and report, so every function
not made for runners refuses it.

Keys live in the SQL table `_api_keys`, beside the documents (so every node of a PostgreSQL
deployment sees the same keys, and a revocation takes effect on all of them at once).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from ..clock import Clock
from ..errors import BadRequest, Unauthenticated
from ..storage import Store, StoreConn
from ..values import WriteSet
from .callers import MachineKey

PREFIX = "e2b_"
KEY_RE = re.compile(r"^e2b_[0-9a-f]{40}$")
KINDS = ("client", "runner")
MAX_NAME = 100
TABLE = "_api_keys"


def looks_like_api_key(value: str) -> bool:
    """Whether a credential has the shape of an API key (rather than of a JWT)."""
    return value.startswith(PREFIX)


def new_secret() -> str:
    return PREFIX + secrets.token_hex(20)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKeyRecord:
    """What is kept about a key: never the key itself."""

    id: str
    name: str
    kind: str
    hint: str  # `e2b_1a2b…9f0e`, to recognise a key without revealing it
    created: float  # ms since the epoch
    revoked: float | None  # ms since the epoch

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "hint": self.hint,
                "created": self.created, "revoked": self.revoked}

    def machine(self) -> MachineKey:
        return MachineKey(id=self.id, name=self.name, kind=self.kind)


_COLUMNS = "id, name, kind, hint, created, revoked"


def _record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(id=row[0], name=row[1], kind=row[2], hint=row[3], created=float(row[4]),
                        revoked=None if row[5] is None else float(row[5]))


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("an API key needs a name, e.g. --name ci-runner", code="InvalidApiKey")
    name = name.strip()
    if len(name) > MAX_NAME or not name.isprintable():
        raise BadRequest(f"an API key's name must be printable and at most {MAX_NAME} characters", code="InvalidApiKey")
    return name


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise BadRequest(f"an API key's kind is 'client' or 'runner', not {kind!r}", code="InvalidApiKey")
    return str(kind)


class ApiKeys:
    """The deployment's API keys, in its store. Every method but `ensure_table` runs in an event loop."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def ensure_table(self) -> None:
        """Create `_api_keys` if it is missing (at start; several nodes may race, the store retries)."""
        real = self.store.dialect.real

        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
                         f" name TEXT NOT NULL, kind TEXT NOT NULL, hint TEXT NOT NULL, created {real} NOT NULL,"
                         f" revoked {real})")
            return None, WriteSet()

        outcome = self.store.submit(job).result()
        if outcome.error is not None:
            raise outcome.error

    async def _read(self, work: Any) -> Any:
        def run() -> Any:
            with self.store.snapshot() as (conn, _ts):
                return work(conn)

        return await asyncio.get_running_loop().run_in_executor(None, run)

    async def _write(self, work: Any) -> Any:
        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            return work(conn), WriteSet()

        outcome = await self.store.run(job)
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    # -- management (admin only: the HTTP endpoints and the CLI check that)
    async def create(self, name: Any, kind: Any = "client") -> tuple[str, ApiKeyRecord]:
        """A new key: returns the secret (shown once, never stored) and its record."""
        name, kind = check_name(name), check_kind(kind)
        secret = new_secret()
        record = ApiKeyRecord(id=secrets.token_hex(6), name=name, kind=kind, hint=f"{secret[:8]}…{secret[-4:]}",
                              created=self.clock.now_ms(), revoked=None)
        p = self.store.dialect.param

        def work(conn: StoreConn) -> ApiKeyRecord:
            taken = conn.execute(f"SELECT id FROM {TABLE} WHERE name = {p} AND revoked IS NULL", (name,)).fetchone()
            if taken is not None:
                raise BadRequest(f"an active API key is already named {name!r} (id {taken[0]}); choose another name "
                                 "or revoke that key first", code="ApiKeyExists")
            conn.execute(f"INSERT INTO {TABLE} (id, hash, name, kind, hint, created, revoked) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, NULL)",
                         (record.id, hash_secret(secret), record.name, record.kind, record.hint, record.created))
            return record

        return secret, await self._write(work)

    async def list(self) -> list[ApiKeyRecord]:
        def work(conn: StoreConn) -> list[ApiKeyRecord]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY created, id").fetchall()
            return [_record(r) for r in rows]

        return await self._read(work)  # type: ignore[no-any-return]

    async def revoke(self, ref: Any) -> tuple[ApiKeyRecord, bool]:
        """Revoke the key named by its id, its name (if one active key has it) or the key itself.

        Returns the record and whether this call revoked it (False: it already was)."""
        if not isinstance(ref, str) or not ref.strip():
            raise BadRequest("name the key to revoke by its id, its name or the key itself", code="InvalidApiKey")
        ref = ref.strip()
        p = self.store.dialect.param
        now = self.clock.now_ms()

        def work(conn: StoreConn) -> tuple[ApiKeyRecord, bool]:
            if KEY_RE.match(ref):
                rows = conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE hash = {p}", (hash_secret(ref),)).fetchall()
            else:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE id = {p}", (ref,)).fetchall()
                if not rows:
                    rows = conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE name = {p} AND revoked IS NULL", (ref,)).fetchall()
                    if not rows:
                        rows = conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE name = {p}", (ref,)).fetchall()
            if not rows:
                raise BadRequest(f"no API key has the id or name {ref!r}; `corral api-key list` shows them", code="ApiKeyNotFound")
            if len(rows) > 1:
                ids = ", ".join(r[0] for r in rows)
                raise BadRequest(f"{len(rows)} API keys are named {ref!r} (ids {ids}); revoke one by its id", code="ApiKeyAmbiguous")
            record = _record(rows[0])
            if record.revoked is not None:
                return record, False
            conn.execute(f"UPDATE {TABLE} SET revoked = {p} WHERE id = {p}", (now, record.id))
            return ApiKeyRecord(record.id, record.name, record.kind, record.hint, record.created, now), True

        return await self._write(work)  # type: ignore[no-any-return]

    # -- checking a presented key
    async def verify(self, secret: str) -> MachineKey:
        if not KEY_RE.match(secret):
            raise Unauthenticated("the API key is malformed: an API key is e2b_ followed by 40 lowercase hex digits")
        digest = hash_secret(secret)
        p = self.store.dialect.param

        def work(conn: StoreConn) -> ApiKeyRecord | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE hash = {p}", (digest,)).fetchone()
            return _record(row) if row else None

        record = await self._read(work)
        if record is None:
            raise Unauthenticated("this API key is not one of this deployment's keys; create one with `corral api-key create`")
        _refuse_revoked(record)
        return record.machine()  # type: ignore[no-any-return]

    async def still_valid(self, key_id: str) -> None:
        """Raise Unauthenticated if the key was revoked (or deleted) since it was presented."""
        p = self.store.dialect.param

        def work(conn: StoreConn) -> ApiKeyRecord | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE id = {p}", (key_id,)).fetchone()
            return _record(row) if row else None

        record = await self._read(work)
        if record is None:
            raise Unauthenticated("this API key no longer exists")
        _refuse_revoked(record)


def _refuse_revoked(record: ApiKeyRecord) -> None:
    if record.revoked is not None:
        raise Unauthenticated(f"the API key '{record.name}' ({record.hint}) was revoked; create a new one with `corral api-key create`")
