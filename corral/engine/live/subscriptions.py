"""Live queries: which subscriptions a commit invalidates, and re-running them in rounds.

Each subscription keeps the read set of its last run and two timestamps: `valid_ts` (the
snapshot it was computed at) and `invalid_ts` (the newest commit known to touch its read set).
Commits are checked against read sets on the thread that publishes them, under the store's
publish lock; a snapshot is pinned under the same lock, so when a round looks at a pinned
snapshot S every commit ≤ S has already marked what it invalidates. A round re-runs every
stale subscription of the clients that need one at S — each distinct (query, args, caller)
once — and sends each such client one Transition to S.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from ..auth import Caller
from ..errors import ConvexError, FunctionError
from ..functions import FunctionSpec
from ..metrics import SYNC_ROUNDS
from ..runtime import Engine
from ..storage import StoreConn
from ..values import ReadSet, WriteSet, encode, ts_to_wire

log = structlog.get_logger("corral.sync")


@dataclass(eq=False)
class Subscription:
    query_id: int
    path: str
    args: dict[str, Any]
    args_key: bytes
    spec: FunctionSpec | None
    error: FunctionError | None
    journal: str | None = None
    read_set: ReadSet | None = None
    ranges_by_table: dict[str, list[Any]] = field(default_factory=dict)
    valid_ts: int = -1
    invalid_ts: int = 0
    last_hash: bytes | None = None
    removed: bool = False


@dataclass(eq=False)
class ClientState:
    """One WebSocket's view: its query set, identity and the versions it has been sent."""

    send: Callable[[dict[str, Any]], None]
    caller: Caller = field(default_factory=Caller.anonymous)
    query_set_version: int = 0
    identity_version: int = 0
    sent_query_set: int = 0
    sent_identity: int = 0
    sent_ts: int = 0
    queries: dict[int, Subscription] = field(default_factory=dict)
    pending_mods: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (query-set version, modification)
    awaiting_ts: int = 0  # a mutation's commit ts that the next Transition must reach
    force_transition: bool = False  # send a Transition after a MutationResponse, even an empty one
    closed: bool = False


@dataclass
class _Capture:
    client: ClientState
    query_set_version: int
    identity_version: int
    caller: Caller
    subs: list[tuple[Subscription, tuple[Any, ...]]]
    mods: list[dict[str, Any]]
    forced: bool


class SyncHub:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self.lock = threading.RLock()
        self.clients: set[ClientState] = set()
        self._by_table: dict[str, set[Subscription]] = {}
        self._owner: dict[Subscription, ClientState] = {}
        self._ring: deque[tuple[int, WriteSet]] = deque()
        self._ring_ns = int(engine.settings.live_query_ring * 1e9)  # commit timestamps are the engine clock's ns
        self._dirty: set[ClientState] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._round_task: asyncio.Task[None] | None = None
        self._again = False
        self.rounds = 0
        self.store.add_listener(self._on_commit)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- commits (called on the publishing thread, under the store's publish lock)
    def _on_commit(self, ts: int, writes: WriteSet) -> None:
        with self.lock:
            self._ring.append((ts, writes))
            horizon = ts - self._ring_ns
            while self._ring and self._ring[0][0] < horizon:
                self._ring.popleft()
            woke = False
            for table in writes.keys:
                for sub in self._by_table.get(table, ()):
                    if sub.invalid_ts < ts and writes.intersects(sub.ranges_by_table.get(table, ())):
                        sub.invalid_ts = ts
                        client = self._owner.get(sub)
                        if client is not None:
                            self._dirty.add(client)
                            woke = True
        if woke:
            self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.schedule)

    # -- query-set bookkeeping (loop thread)
    def add_client(self, client: ClientState) -> None:
        with self.lock:
            self.clients.add(client)

    def remove_client(self, client: ClientState) -> None:
        with self.lock:
            client.closed = True
            self.clients.discard(client)
            self._dirty.discard(client)
            for sub in client.queries.values():
                self._unindex(sub)
            client.queries.clear()

    def _index(self, sub: Subscription) -> None:
        for table in sub.ranges_by_table:
            self._by_table.setdefault(table, set()).add(sub)

    def _unindex(self, sub: Subscription) -> None:
        self._owner.pop(sub, None)
        for table in sub.ranges_by_table:
            subs = self._by_table.get(table)
            if subs is not None:
                subs.discard(sub)

    def add_query(self, client: ClientState, sub: Subscription) -> None:
        with self.lock:
            old = client.queries.get(sub.query_id)
            if old is not None:
                self._unindex(old)
            client.queries[sub.query_id] = sub
            self._owner[sub] = client
            sub.invalid_ts = max(sub.invalid_ts, 1)
            self._dirty.add(client)

    def remove_query(self, client: ClientState, query_id: int, version: int) -> None:
        with self.lock:
            sub = client.queries.pop(query_id)
            sub.removed = True
            self._unindex(sub)
            client.pending_mods.append((version, {"type": "QueryRemoved", "queryId": query_id}))
            self._dirty.add(client)

    def invalidate_all(self, client: ClientState) -> None:
        """After an identity change every query re-runs as the new caller."""
        with self.lock:
            for sub in client.queries.values():
                sub.invalid_ts = max(sub.invalid_ts, sub.valid_ts + 1, 1)
            self._dirty.add(client)

    def request_transition(self, client: ClientState, ts: int) -> None:
        """Send `client` a Transition reaching at least `ts` (its mutation's commit), even an empty one."""
        with self.lock:
            client.awaiting_ts = max(client.awaiting_ts, ts)
            client.force_transition = True
            self._dirty.add(client)
        self.schedule()

    # -- rounds
    def schedule(self) -> None:
        if self._round_task is None or self._round_task.done():
            self._round_task = asyncio.get_running_loop().create_task(self._run_rounds())
        else:
            self._again = True

    async def _run_rounds(self) -> None:
        while True:
            self._again = False
            with self.lock:
                if not self._dirty:
                    return
            try:
                await self._round()
            except Exception as exc:  # noqa: BLE001 - a failed round must not stop live queries
                log.exception("sync.round_failed", error=str(exc))
                await asyncio.sleep(0.05)
            if not self._again and not self._dirty:
                return

    async def _round(self) -> None:
        engine = self.engine
        store = self.store
        with self.lock:
            published = store.published_ts
            if not any(client.awaiting_ts > published or any(sub.invalid_ts > sub.valid_ts for sub in client.queries.values())
                       for client in self._dirty):
                # Nothing to re-run (say, only mutation acknowledgements): every subscription is
                # still valid at the newest announced commit, so no snapshot is needed.
                self._finish_round(published, self._capture(published), {})
                return

        def work(conn: StoreConn, ts: int) -> tuple[int, list[_Capture], dict[tuple[Any, ...], Any]]:
            if ts > store.published_ts:
                store.catch_up(conn, ts)
            captures = self._capture(ts)
            results: dict[tuple[Any, ...], Any] = {}
            for cap in captures:
                for sub, key in cap.subs:
                    if key in results or sub.spec is None:
                        continue
                    results[key] = self._execute(conn, sub, cap.caller)
            return ts, captures, results

        ts, captures, results = await engine.in_snapshot(work)
        self._finish_round(ts, captures, results)

    def _finish_round(self, ts: int, captures: list[_Capture], results: dict[tuple[Any, ...], Any]) -> None:
        self.rounds += 1
        SYNC_ROUNDS.inc()
        rendered: dict[tuple[Any, ...], tuple[dict[str, Any], bytes]] = {}
        with self.lock:
            for cap in captures:
                self._apply(cap, ts, results, rendered)

    def _capture(self, ts: int) -> list[_Capture]:
        with self.lock:
            dirty, self._dirty = self._dirty, set()
            captures = []
            for client in dirty:
                if client.closed:
                    continue
                if client.awaiting_ts > ts:
                    # its mutation committed after this snapshot was pinned: the next round serves it
                    self._dirty.add(client)
                    continue
                subs = []
                for sub in client.queries.values():
                    if sub.invalid_ts > sub.valid_ts:
                        subs.append((sub, (sub.path, sub.args_key, client.caller.key)))
                mods = [m for v, m in client.pending_mods if v <= client.query_set_version]
                client.pending_mods = [(v, m) for v, m in client.pending_mods if v > client.query_set_version]
                captures.append(_Capture(client, client.query_set_version, client.identity_version, client.caller,
                                         subs, mods, client.force_transition))
                client.force_transition = False
            return captures

    def _execute(self, conn: StoreConn, sub: Subscription, caller: Caller) -> tuple[bool, Any, ReadSet]:
        assert sub.spec is not None
        read_set = ReadSet()
        try:
            value, read_set = self.engine.execute_query(conn, sub.spec, sub.args, caller)
            return True, value, read_set
        except FunctionError as exc:
            # A failed query stays subscribed to what it read (a refusal ends when a grant is written).
            return False, exc, exc.read_set or read_set

    def _apply(self, cap: _Capture, ts: int, results: dict[tuple[Any, ...], Any],
               rendered: dict[tuple[Any, ...], tuple[dict[str, Any], bytes]]) -> None:
        client = cap.client
        if client.closed:
            return
        mods = list(cap.mods)
        for sub, key in cap.subs:
            if sub.spec is None:
                ok, outcome, read_set = False, sub.error, ReadSet()
            else:
                ok, outcome, read_set = results[key]
            if not sub.removed:
                if sub.read_set is None or sub.read_set.ranges != read_set.ranges:
                    self._unindex(sub)
                    sub.ranges_by_table = read_set.by_table()
                    self._owner[sub] = client
                    self._index(sub)
                sub.read_set = read_set
                if cap.identity_version == client.identity_version:
                    sub.valid_ts = ts
                # else: it ran as the caller before an Authenticate that came meanwhile; it stays
                # invalid (invalidate_all), so the next round runs it as the new caller
                for commit_ts, writes in reversed(self._ring):  # commits after the snapshot, newest first
                    if commit_ts <= ts:
                        break
                    if writes.intersects(read_set.ranges):
                        sub.invalid_ts = max(sub.invalid_ts, commit_ts)
                        self._dirty.add(client)
                if self._ring and self._ring[0][0] > ts + 1 and self.store.published_ts > ts:
                    sub.invalid_ts = max(sub.invalid_ts, self.store.published_ts)
                    self._dirty.add(client)
            # Every subscriber of the same (query, args, caller) shares one rendering of the result.
            cached = rendered.get(key)
            if cached is None:
                body = _result_body(ok, outcome)
                serialized = orjson.dumps(body)
                # Serialized once per round; every socket's Transition embeds these bytes as they are.
                fragments = {k: orjson.Fragment(orjson.dumps(v)) for k, v in body.items()}
                cached = rendered[key] = (fragments, hashlib.blake2b(serialized, digest_size=16).digest())
            body, digest = cached
            if digest != sub.last_hash:
                sub.last_hash = digest
                mods.append({**body, "queryId": sub.query_id, "journal": sub.journal})
        changed_versions = cap.query_set_version != client.sent_query_set or cap.identity_version != client.sent_identity
        if not (mods or changed_versions or cap.forced):
            return
        end_ts = max(ts, client.sent_ts)
        message = {
            "type": "Transition",
            "startVersion": {"querySet": client.sent_query_set, "identity": client.sent_identity, "ts": ts_to_wire(client.sent_ts)},
            "endVersion": {"querySet": cap.query_set_version, "identity": cap.identity_version, "ts": ts_to_wire(end_ts)},
            "modifications": mods,
        }
        client.sent_query_set = cap.query_set_version
        client.sent_identity = cap.identity_version
        client.sent_ts = end_ts
        client.send(message)


def _result_body(ok: bool, outcome: Any) -> dict[str, Any]:
    """A QueryUpdated or QueryFailed modification, without its queryId and journal."""
    if ok:
        return {"type": "QueryUpdated", "value": encode(outcome), "logLines": []}
    body: dict[str, Any] = {"type": "QueryFailed", "errorMessage": outcome.message, "logLines": []}
    if isinstance(outcome, ConvexError):
        body["errorData"] = encode(outcome.data)
    return body
