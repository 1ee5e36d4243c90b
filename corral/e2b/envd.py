"""envd's data plane under `/envd/`: Connect RPCs of `process.Process` and `filesystem.Filesystem`,
plain `/health` and `/files`, for the sandbox named by the `E2b-Sandbox-Id` header.

A request reaches a sandbox when the fleet hands it over for its `X-Access-Token`; a missing,
paused or killed sandbox answers what E2B's proxy answers (502 "The sandbox was not found"),
and so does a wrong or missing token (nobody without it learns that the sandbox exists). Errors
inside a call are Connect errors.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..fleet import InvalidAccessToken, SandboxFleet, SandboxUnavailable
from ..sandbox.protocol import (
    DiskFull,
    FileExists,
    FileNotFound,
    InvalidPath,
    InvalidSpec,
    PermissionDenied,
    ProcessNotFound,
    Sandbox,
    SandboxError,
    SandboxNotFound,
    SandboxStateError,
    close_stream,
)
from . import connect
from .auth import envd_user
from .connect import RpcError, StreamOptions
from .filesystem_service import FilesystemService, Watchers
from .process_service import ProcessService

log = structlog.get_logger("corral.e2b.envd")

SANDBOX_NOT_FOUND = "The sandbox was not found"

Kind = str  # "unary" | "server" | "client"
METHODS: dict[tuple[str, str], Kind] = {
    ("process.Process", "List"): "unary",
    ("process.Process", "Start"): "server",
    ("process.Process", "Connect"): "server",
    ("process.Process", "Update"): "unary",
    ("process.Process", "StreamInput"): "client",
    ("process.Process", "SendInput"): "unary",
    ("process.Process", "SendSignal"): "unary",
    ("process.Process", "CloseStdin"): "unary",
    ("filesystem.Filesystem", "Stat"): "unary",
    ("filesystem.Filesystem", "MakeDir"): "unary",
    ("filesystem.Filesystem", "Move"): "unary",
    ("filesystem.Filesystem", "ListDir"): "unary",
    ("filesystem.Filesystem", "Remove"): "unary",
    ("filesystem.Filesystem", "WatchDir"): "server",
    ("filesystem.Filesystem", "CreateWatcher"): "unary",
    ("filesystem.Filesystem", "GetWatcherEvents"): "unary",
    ("filesystem.Filesystem", "RemoveWatcher"): "unary",
}
KEEPALIVES: dict[str, dict[str, Any]] = {"process.Process": {"event": {"keepalive": {}}}, "filesystem.Filesystem": {"keepalive": {}}}


# E2B's own routing, by host name: `49983-<sandbox id>.<domain>` (SDKs before 2.7 know no other).
HOST_RE = re.compile(r"^\d{1,5}-([a-z0-9]{1,64})\.")


def sandbox_id_of(request: Request) -> str | None:
    """The sandbox a data-plane request is for: its E2b-Sandbox-Id header, else its host name."""
    header = request.headers.get("e2b-sandbox-id")
    if header:
        return header.strip()
    match = HOST_RE.match(request.headers.get("host", ""))
    return match.group(1) if match else None


class EnvdHttpError(Exception):
    """An answer before any Connect framing: what E2B's proxy (or envd's HTTP API) sends."""

    def __init__(self, status: int, message: str, sandbox_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.sandbox_id = sandbox_id

    def response(self) -> Response:
        body: dict[str, Any] = {"code": self.status, "message": self.message}
        if self.sandbox_id is not None:
            body = {"sandboxId": self.sandbox_id, **body}
        return Response(orjson.dumps(body), status_code=self.status, media_type="application/json")


@dataclass
class EnvdOptions:
    max_message: int = 4 << 20  # largest Connect message accepted
    keepalive_floor: float = 1.0  # shortest keepalive interval a client may ask for (seconds)
    max_upload_bytes: int = 1 << 30  # largest upload through POST /files


def rpc_error(exc: BaseException) -> RpcError:
    """Any failure inside a call as a Connect error with a message that says what was wrong."""
    if isinstance(exc, RpcError):
        return exc
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ProcessNotFound | FileNotFound):
        return RpcError("not_found", message)
    if isinstance(exc, FileExists):
        return RpcError("already_exists", message)
    if isinstance(exc, PermissionDenied):
        return RpcError("permission_denied", message)
    if isinstance(exc, InvalidPath | InvalidSpec):
        return RpcError("invalid_argument", message)
    if isinstance(exc, DiskFull):
        return RpcError("resource_exhausted", message)
    if isinstance(exc, SandboxNotFound | SandboxStateError):
        return RpcError("unavailable", f"the sandbox stopped while the call was in flight: {message}")
    if isinstance(exc, SandboxUnavailable):
        return RpcError("unavailable", f"the sandbox's runner is not answering: {message}")
    if isinstance(exc, SandboxError):
        return RpcError("internal", message)
    if isinstance(exc, ClientDisconnect):
        return RpcError("canceled", "the client went away")
    if isinstance(exc, TimeoutError):
        return RpcError("deadline_exceeded", "the call took longer than its deadline")
    log.error("e2b.envd_call_failed", error=repr(exc), exc_info=exc)
    return RpcError("internal", "the call failed inside Corral; the node's log has the details")


class EnvdApi:
    def __init__(self, fleet: SandboxFleet, watchers: Watchers, options: EnvdOptions | None = None) -> None:
        self.fleet = fleet
        self.watchers = watchers
        self.options = options or EnvdOptions()

    def routes(self, prefix: str = "/envd") -> list[BaseRoute]:
        return [
            Route(f"{prefix}/health", self.health, methods=["GET"]),
            Route(prefix + "/{service}/{method}", self.rpc, methods=["POST"]),
        ]

    async def sandbox_for(self, request: Request) -> Sandbox:
        sandbox_id = sandbox_id_of(request)
        if not sandbox_id:
            raise EnvdHttpError(400, "the E2b-Sandbox-Id header is missing: it names the sandbox this request is for")
        return await self.open(sandbox_id, request.headers.get("x-access-token"))

    async def open(self, sandbox_id: str, access_token: str | None) -> Sandbox:
        """The sandbox for a data-plane request. A wrong or missing access token is answered exactly as a
        sandbox that does not exist (E2B's 502 "The sandbox was not found"): a caller without the token must
        not learn which sandbox ids exist. The SDKs then say the sandbox "was killed or reached its timeout"
        (and `is_running()` is False); the node's log says which it was."""
        try:
            return await self.fleet.data_plane(sandbox_id, access_token)
        except SandboxNotFound:
            raise EnvdHttpError(502, SANDBOX_NOT_FOUND, sandbox_id) from None
        except (InvalidAccessToken, PermissionDenied):
            log.info("e2b.envd_wrong_access_token", sandbox=sandbox_id, token_given=bool(access_token))
            raise EnvdHttpError(502, SANDBOX_NOT_FOUND, sandbox_id) from None
        except SandboxUnavailable as exc:
            raise EnvdHttpError(502, f"the runner hosting sandbox {sandbox_id} is not answering: {exc}", sandbox_id) from None

    async def health(self, request: Request) -> Response:
        try:
            await self.sandbox_for(request)
        except EnvdHttpError as exc:
            return exc.response()
        return Response(status_code=204)

    async def rpc(self, request: Request) -> Response:
        service, method = request.path_params["service"], request.path_params["method"]
        kind = METHODS.get((service, method))
        if kind is None:
            return connect.unary_error(RpcError("unimplemented", f"{service}/{method} is not an envd method Corral serves"))
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        expected = connect.UNARY_CONTENT_TYPE if kind == "unary" else connect.STREAM_CONTENT_TYPE
        if content_type != expected:
            message = (f"{service}/{method} takes {expected} (the Connect protocol with the JSON codec), "
                       f"not {content_type or 'a body without Content-Type'}")
            return Response(orjson.dumps({"code": "invalid_argument", "message": message}), status_code=415,
                            media_type="application/json")
        try:
            sandbox = await self.sandbox_for(request)
        except EnvdHttpError as exc:
            return exc.response()
        try:
            deadline = connect.timeout_seconds(request)
            user = envd_user(request)
            target: Any = (ProcessService(sandbox, user) if service == "process.Process"
                           else FilesystemService(sandbox, user, self.watchers))
            handler = getattr(target, method)
            if kind == "unary":
                return await connect.call_with_deadline(self._unary(request, handler), deadline)
            if kind == "client":
                return await self._client_stream(request, handler, deadline)
            return await self._server_stream(request, sandbox.sandbox_id, service, handler, deadline)
        except Exception as exc:  # noqa: BLE001 - every failure is answered as a Connect error
            error = rpc_error(exc)
            return connect.unary_error(error) if kind == "unary" else connect.stream_error(error)

    async def _unary(self, request: Request, handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> Response:
        try:
            message = await connect.read_single_message(request, False, self.options.max_message)
            return connect.unary_response(await handler(message))
        except Exception as exc:  # noqa: BLE001
            return connect.unary_error(rpc_error(exc))

    async def _client_stream(self, request: Request, handler: Callable[[AsyncIterator[dict[str, Any]]], Awaitable[dict[str, Any]]],
                             deadline: float | None) -> Response:
        try:
            call = handler(connect.stream_messages(request, self.options.max_message))
            reply = await (asyncio.wait_for(call, deadline) if deadline is not None else call)
        except Exception as exc:  # noqa: BLE001
            return connect.stream_error(rpc_error(exc))
        return Response(connect.envelope(reply) + connect.end_stream(), media_type=connect.STREAM_CONTENT_TYPE)

    async def _stopped_sandbox_is_unavailable(self, events: AsyncIterator[dict[str, Any]],
                                              sandbox_id: str) -> AsyncIterator[dict[str, Any]]:
        """A command killed by a signal because its sandbox was killed (or expired, or paused) ends
        as E2B's does when the VM goes away: with `unavailable`, not an exit code. The SDK then probes
        /health and says the sandbox "was killed or reached its end of life"."""
        async def check_running() -> None:  # a look at its record: it must not resume a paused sandbox
            if not await self.fleet.is_running(sandbox_id):
                raise RpcError("unavailable", f"sandbox {sandbox_id} stopped while the command ran "
                                              "(killed, paused or at the end of its timeout)")

        try:
            while True:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
                except SandboxError:
                    await check_running()  # the agent went away with its sandbox: say that instead
                    raise
                end = event.get("event", {}).get("end")
                if end is not None and not end.get("exited", True):
                    await check_running()
                yield event
        finally:
            await close_stream(events)

    async def _server_stream(self, request: Request, sandbox_id: str, service: str,
                             handler: Callable[[dict[str, Any]], Awaitable[AsyncIterator[dict[str, Any]]]],
                             deadline: float | None) -> Response:
        loop = asyncio.get_running_loop()
        started = loop.time()
        message = await connect.read_single_message(request, True, self.options.max_message)
        call = handler(message)
        events = await (asyncio.wait_for(call, deadline) if deadline is not None else call)
        if service == "process.Process":
            events = self._stopped_sandbox_is_unavailable(events, sandbox_id)
        left = None if deadline is None else max(0.0, deadline - (loop.time() - started))

        async def touch() -> None:  # a keepalive on an open stream is traffic; the fleet batches its writes
            self.fleet.seen(sandbox_id)

        options = StreamOptions(deadline=left, keepalive=connect.keepalive_seconds(request, self.options.keepalive_floor),
                                keepalive_message=KEEPALIVES[service], on_keepalive=touch)
        return connect.stream_response(events, options, rpc_error)
