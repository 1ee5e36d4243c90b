"""The runner's side of the data-plane wire (corral/runner/wire.py): an ASGI app over an Executor.

`corral runner` serves it on `--listen`; a node serves its embedded runner's at `/runner/` on its
own port, so that the other nodes of a deployment reach the sandboxes it hosts.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from ..sandbox.protocol import SandboxError, after_first, close_stream
from . import wire
from .executor import Executor

log = structlog.get_logger("corral.runner")

MOUNT = "/runner"
assert wire.PREFIX == MOUNT + "/v1"


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _failure(exc: BaseException) -> Response:
    if not isinstance(exc, (SandboxError, *wire.MALFORMED)):
        log.warning("runner.call_failed", error_type=type(exc).__name__, error=str(exc))
    return _json(wire.error_body(exc), wire.status_of(exc))


class RunnerServer:
    def __init__(self, name: str, executor: Executor, secret: str) -> None:
        self.name = name
        self.executor = executor
        self.secret = secret
        # `inner` answers below the mount point (/v1/…): the node mounts it at /runner;
        # `app` is the whole server of `corral runner`.
        self.inner = Starlette(routes=[
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/v1/call", self.guard(self.call), methods=["POST"]),
            Route("/v1/stream", self.guard(self.stream), methods=["POST"]),
            Route("/v1/read", self.guard(self.read), methods=["POST"]),
            Route("/v1/write", self.guard(self.write), methods=["POST"]),
        ])
        self.app = Starlette(routes=[Mount(MOUNT, app=self.inner)])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def guard(self, endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def guarded(request: Request) -> Response:
            offered = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(offered.encode(), self.secret.encode()):
                return _json({"error": {"type": "Unauthorized", "message": "this runner does not know that secret"}}, 401)
            try:
                response: Response = await endpoint(request)
                return response
            except Exception as exc:  # noqa: BLE001 - every failure goes back as a wire error
                return _failure(exc)

        return guarded

    async def health(self, request: Request) -> Response:
        return _json({"runner": self.name})

    async def _body(self, request: Request) -> tuple[str, str | None, dict[str, Any]]:
        body = orjson.loads(await request.body())
        op, sandbox, args = body.get("op"), body.get("sandbox"), wire.decode(body.get("args") or {})
        if not isinstance(op, str) or not isinstance(args, dict):
            raise ValueError("a call needs an 'op' and an object of 'args'")
        return op, sandbox if isinstance(sandbox, str) else None, args

    @staticmethod
    def _sandbox_id(op: str, sandbox_id: str | None) -> str:
        if sandbox_id is None:
            raise ValueError(f"{op} needs a sandbox")
        return sandbox_id

    def _target(self, op: str, sandbox_id: str | None) -> Any:
        part, _, method = op.partition(".")
        sandbox = self.executor.sandbox(self._sandbox_id(op, sandbox_id))
        holder = {"sandbox": sandbox, "processes": sandbox.processes, "files": sandbox.files}[part]
        return getattr(holder, method)

    async def call(self, request: Request) -> Response:
        op, sandbox_id, args = await self._body(request)
        if op == "create":
            result: Any = await self.executor.create(args["spec"])
        elif op == "converge":
            result = await self.executor.converge(self._sandbox_id(op, sandbox_id), args["state"], int(args["generation"]))
        elif op == "metrics":
            result = await self.executor.metrics(self._sandbox_id(op, sandbox_id), args.get("start"), args.get("end"))
        elif op in wire.UNARY_OPS:
            result = await self._target(op, sandbox_id)(**args)
        else:
            raise ValueError(f"unknown runner call {op!r}")
        return _json({"result": wire.encode(result)})

    async def stream(self, request: Request) -> Response:
        op, sandbox_id, args = await self._body(request)
        if op not in wire.STREAM_OPS:
            raise ValueError(f"unknown runner stream {op!r}")
        method = self._target(op, sandbox_id)
        events: AsyncIterator[Any] = await method(**args) if op == "processes.start" else method(**args)
        # A process stream opens with Start: wait for it, so that errors (no such process) answer
        # before the stream starts. A watch may wait long for its first event: it streams at once.
        first = [await anext(events)] if op.startswith("processes.") else []

        async def lines() -> AsyncIterator[bytes]:
            for event in first:
                yield orjson.dumps(wire.encode(event)) + b"\n"
            try:
                async for event in events:
                    yield orjson.dumps(wire.encode(event)) + b"\n"
            except Exception as exc:  # noqa: BLE001 - the stream's last line says what went wrong
                yield orjson.dumps(wire.error_body(exc)) + b"\n"
            finally:
                await close_stream(events)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def read(self, request: Request) -> Response:
        params = request.query_params
        sandbox = self.executor.sandbox(params["sandbox"])
        chunks = sandbox.files.read(params["path"], user=params.get("user", "user"))
        first = await anext(chunks, b"")
        return StreamingResponse(after_first(first, chunks), media_type="application/octet-stream")

    async def write(self, request: Request) -> Response:
        params = request.query_params
        sandbox = self.executor.sandbox(params["sandbox"])
        metadata = orjson.loads(params["metadata"]) if params.get("metadata") else None
        info = await sandbox.files.write(params["path"], request.stream(), user=params.get("user", "user"), metadata=metadata)
        return _json({"result": wire.encode(info)})
