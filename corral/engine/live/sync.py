"""Convex's WebSocket sync protocol, one `SyncSession` per socket.

Client → server: Connect, ModifyQuerySet, Mutation, Action, Authenticate, Event.
Server → client: Transition, MutationResponse, ActionResponse, AuthError, FatalError, Ping.
Mutations run one at a time per socket, actions concurrently; results flow through one
outbound queue so a MutationResponse always precedes the Transition that reveals its write.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..auth import Caller
from ..errors import ConvexError, CorralError, FunctionError, Unauthenticated
from ..functions import canonical_path
from ..metrics import SYNC_CLIENTS
from ..values import ValueError_, decode, encode, ts_to_wire
from .subscriptions import ClientState, Subscription, SyncHub

log = structlog.get_logger("corral.sync")

MAX_QUEUED_MUTATIONS = 1000


class ProtocolError(Exception):
    """The client sent something that is not a valid protocol message; the socket is closed."""


class CredentialLapsed(Exception):
    """The socket's token expired or its API key was revoked: AuthError, then the socket is closed."""


def _require(message: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in message:
        raise ProtocolError(f"{message.get('type')} message is missing '{name}'")
    value = message[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{message.get('type')}.{name} has the wrong type ({type(value).__name__})")
    return value


def _int(message: dict[str, Any], name: str) -> int:
    value = _require(message, name, (int, float))
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ProtocolError(f"{message.get('type')}.{name} must be a non-negative integer")
    return int(value)


def _args(message: dict[str, Any]) -> dict[str, Any]:
    raw = message.get("args", [{}])
    if isinstance(raw, list):
        if len(raw) != 1 or not isinstance(raw[0], dict):
            raise ProtocolError("args must be a list holding one object")
        raw = raw[0]
    if not isinstance(raw, dict):
        raise ProtocolError("args must be an object")
    try:
        value = decode(raw)
    except (ValueError_, CorralError) as exc:
        raise ProtocolError(f"args are not valid Convex values: {exc}") from None
    return dict(value)


class SyncSession:
    def __init__(self, websocket: WebSocket, hub: SyncHub, authenticator: Any, ping_interval: float) -> None:
        self.ws = websocket
        self.hub = hub
        self.engine = hub.engine
        self.authenticate = authenticator
        self.ping_interval = ping_interval
        self.session_id: str | None = None
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.client = ClientState(send=self.outbox.put_nowait)
        self.mutations: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED_MUTATIONS)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.last_sent = 0.0

    async def run(self) -> None:
        await self.ws.accept()
        self.hub.add_client(self.client)
        SYNC_CLIENTS.inc()
        self.last_sent = self.engine.clock.monotonic()
        writer = asyncio.create_task(self._write_loop())
        mutator = asyncio.create_task(self._mutation_loop())
        pinger = asyncio.create_task(self._ping_loop())
        try:
            await self._read_loop()
        except ProtocolError as exc:
            self.outbox.put_nowait({"type": "FatalError", "error": f"Bad client message: {exc}"})
            self.outbox.put_nowait(None)
            await asyncio.wait_for(writer, timeout=5)
            with contextlib.suppress(Exception):
                await self.ws.close(code=1008, reason="ProtocolError")
        except CredentialLapsed as exc:
            # As Convex does: the client fetches a fresh token and reconnects.
            self.outbox.put_nowait({"type": "AuthError", "error": str(exc), "baseVersion": self.client.identity_version,
                                    "authUpdateAttempted": False})
            self.outbox.put_nowait(None)
            await asyncio.wait_for(writer, timeout=5)
            with contextlib.suppress(Exception):
                await self.ws.close(code=1008, reason="Unauthenticated")
        except WebSocketDisconnect:
            pass
        finally:
            SYNC_CLIENTS.dec()
            self.hub.remove_client(self.client)
            for task in (mutator, pinger, *self.tasks):
                task.cancel()
            if not writer.done():
                self.outbox.put_nowait(None)
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(writer, timeout=2)

    async def _write_loop(self) -> None:
        ws = self.ws
        outbox = self.outbox
        clock = self.engine.clock
        try:
            while True:
                message = await outbox.get()
                if message is None:
                    return
                self.last_sent = clock.monotonic()
                await ws.send_text(orjson.dumps(message).decode())
        except (WebSocketDisconnect, RuntimeError, OSError):
            return

    async def _ping_loop(self) -> None:
        """A Ping whenever nothing else went out for `ping_interval` seconds."""
        clock = self.engine.clock  # the engine's clock: a test that advances it gets its Ping at once
        while True:
            idle = clock.monotonic() - self.last_sent
            if idle >= self.ping_interval:
                self.outbox.put_nowait({"type": "Ping"})
                self.last_sent = clock.monotonic()
                idle = 0.0
            await clock.sleep(self.ping_interval - idle)

    async def _read_loop(self) -> None:
        while True:
            # Idle clients send nothing; a dead peer is detected by WebSocket ping/pong (see the server config).
            raw = await self.ws.receive()
            if raw["type"] == "websocket.disconnect":
                return
            text = raw.get("text")
            if text is None:
                data = raw.get("bytes")
                if data is None:
                    raise ProtocolError("empty frame")
                text = data
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise ProtocolError("frame is not JSON") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ProtocolError("frame is not a JSON object with a 'type'")
            await self._dispatch(message)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "Connect":
            self.session_id = str(_require(message, "sessionId", str))
        elif kind == "ModifyQuerySet":
            await self._check_credential()
            self._modify_query_set(message)
        elif kind == "Mutation":
            await self._check_credential()
            self._check_request(message)
            try:
                self.mutations.put_nowait(message)
            except asyncio.QueueFull:
                raise ProtocolError(f"more than {MAX_QUEUED_MUTATIONS} mutations queued on one socket") from None
        elif kind == "Action":
            await self._check_credential()
            self._check_request(message)
            task = asyncio.create_task(self._run_action(message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif kind == "Authenticate":
            await self._authenticate(message)
        elif kind == "Event":
            return
        else:
            raise ProtocolError(f"unknown message type {kind!r}")

    def _check_request(self, message: dict[str, Any]) -> None:
        _int(message, "requestId")
        _require(message, "udfPath", str)
        if message.get("componentPath") and not self.client.caller.is_admin:
            raise ProtocolError("componentPath is only for admin clients")
        message["_args"] = _args(message)

    # -- query set
    def _modify_query_set(self, message: dict[str, Any]) -> None:
        base = _int(message, "baseVersion")
        new = _int(message, "newVersion")
        mods = _require(message, "modifications", list)
        client = self.client
        if base != client.query_set_version:
            raise ProtocolError(f"BaseVersionMismatch: ModifyQuerySet baseVersion {base} does not chain from the current query set version {client.query_set_version}")
        if new <= base:
            raise ProtocolError(f"ModifyQuerySet newVersion {new} must be greater than baseVersion {base}")
        parsed: list[tuple[str, int, Any, Any, Any]] = []
        for mod in mods:
            if not isinstance(mod, dict):
                raise ProtocolError("each query-set modification must be an object")
            op = mod.get("type")
            query_id = _int(mod, "queryId")
            if op == "Add":
                path = _require(mod, "udfPath", str)
                parsed.append(("Add", query_id, path, _args(mod), mod.get("journal")))
            elif op == "Remove":
                parsed.append(("Remove", query_id, None, None, None))
            else:
                raise ProtocolError(f"unknown query-set modification {op!r}")
        pending_ids = set(client.queries)
        for op, query_id, _p, _a, _j in parsed:
            if op == "Add":
                if query_id in pending_ids:
                    raise ProtocolError(f"query {query_id} is already in the query set")
                pending_ids.add(query_id)
            else:
                if query_id not in pending_ids:
                    raise ProtocolError(f"query {query_id} is not in the query set")
                pending_ids.discard(query_id)
        client.query_set_version = new
        for op, query_id, path, args, journal in parsed:
            if op == "Add":
                self.hub.add_query(client, self._subscription(query_id, path, args, journal))
            else:
                self.hub.remove_query(client, query_id, new)
        self.hub.schedule()

    def _subscription(self, query_id: int, path: str, args: dict[str, Any], journal: Any) -> Subscription:
        spec, error, valid = None, None, args
        try:
            spec = self.engine.resolve(path, "query", self.client.caller)
            valid = self.engine.prepare_args(spec, args)
        except FunctionError as exc:
            spec, error = None, exc
        return Subscription(query_id=query_id, path=canonical_path(path), args=valid,
                            args_key=orjson.dumps(encode(args), option=orjson.OPT_SORT_KEYS),
                            spec=spec, error=error, journal=journal if isinstance(journal, str) else None)

    # -- auth
    async def _check_credential(self) -> None:
        """Each request re-checks that the socket's token has not expired (nor its API key been revoked)."""
        still_valid = getattr(self.authenticate, "still_valid", None)
        if still_valid is None:
            return
        try:
            await still_valid(self.client.caller)
        except Unauthenticated as exc:
            raise CredentialLapsed(exc.message) from None

    async def _authenticate(self, message: dict[str, Any]) -> None:
        base = _int(message, "baseVersion")
        client = self.client
        if base != client.identity_version:
            raise ProtocolError(f"Authenticate baseVersion {base} does not chain from the identity version {client.identity_version}")
        token_type = _require(message, "tokenType", str)
        try:
            if token_type == "None":
                caller = Caller.anonymous()
            elif token_type in ("User", "Admin"):
                caller = await self.authenticate(token_type, _require(message, "value", str), message.get("impersonating"))
            else:
                raise ProtocolError(f"unknown tokenType {token_type!r}")
        except Unauthenticated as exc:
            self.outbox.put_nowait({"type": "AuthError", "error": exc.message, "baseVersion": base,
                                    "authUpdateAttempted": True})
            return
        client.caller = caller
        client.identity_version = base + 1
        self.hub.invalidate_all(client)
        self.hub.schedule()

    # -- mutations and actions
    async def _mutation_loop(self) -> None:
        while True:
            message = await self.mutations.get()
            request_id = int(message["requestId"])
            response: dict[str, Any] = {"type": "MutationResponse", "requestId": request_id}
            commit_ts = 0
            try:
                result = await self.engine.run_mutation(
                    message["udfPath"], message["_args"], self.client.caller,
                    session=(self.session_id, request_id) if self.session_id else None)
                commit_ts = result.ts
                response.update(success=True, result=encode(result.value), ts=ts_to_wire(result.ts), logLines=[])
            except FunctionError as exc:
                response.update(_failure(exc))
            except CorralError as exc:
                response.update(success=False, result=exc.message, ts=None, logLines=[])
            self.outbox.put_nowait(response)
            # Clients settle a mutation (even a failed one carrying ConvexError data) on the next
            # Transition, so one always follows, reaching the mutation's commit when it has one.
            self.hub.request_transition(self.client, commit_ts)

    async def _run_action(self, message: dict[str, Any]) -> None:
        response: dict[str, Any] = {"type": "ActionResponse", "requestId": int(message["requestId"])}
        try:
            value = await self.engine.call_action(message["udfPath"], message["_args"], self.client.caller)
            response.update(success=True, result=encode(value), logLines=[])
        except FunctionError as exc:
            response.update(_failure(exc))
            response.pop("ts", None)
        except CorralError as exc:
            response.update(success=False, result=exc.message, logLines=[])
        self.outbox.put_nowait(response)
        self.hub.request_transition(self.client, 0)


def _failure(exc: FunctionError) -> dict[str, Any]:
    out: dict[str, Any] = {"success": False, "result": exc.message, "ts": None, "logLines": []}
    if isinstance(exc, ConvexError):
        out["errorData"] = encode(exc.data)
    return out


async def serve_socket(websocket: WebSocket, hub: SyncHub, authenticator: Any, ping_interval: float) -> None:
    session = SyncSession(websocket, hub, authenticator, ping_interval)
    try:
        await session.run()
    finally:
        if websocket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close()
