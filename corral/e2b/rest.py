"""E2B's control REST under `/e2b/`: create, list, get, kill, timeout, pause, connect, resume, metrics.

All three generations of the SDK are served: `POST /v2/sandboxes` and `/v2/…/connect` (2.51+),
`POST /sandboxes` and `/sandboxes/{id}/connect` (2.6–2.50), and `/resume` (2.0–2.5, which
connects with `POST …/timeout` and, when that fails, `POST …/resume`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..engine.auth import Authenticator
from ..fleet import ProviderUnavailable, SandboxFleet, SandboxRecord, SandboxUnavailable
from ..sandbox.protocol import (
    CapacityError,
    InvalidSpec,
    Metrics,
    SandboxError,
    SandboxNotFound,
    SandboxStateError,
    TemplateNotFound,
)
from . import shapes
from .auth import owner_of
from .shapes import ApiError, bad

log = structlog.get_logger("corral.e2b.rest")

SANDBOX_ID_RE = re.compile(r"^[a-z0-9]{1,64}$")
MAX_BODY = 1 << 20
NO_RETRY = {"Should-Retry": "false"}  # the SDK retries 429 and 503 unless told not to
Handler = Callable[[Request, str], Awaitable[Response]]


def json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(error: ApiError) -> Response:
    return json(error.body(), error.status, error.headers)


class ControlApi:
    """The routes of `/e2b/`; `remember` is told every sandbox's access token the API hands out."""

    def __init__(self, fleet: SandboxFleet, authenticator: Authenticator, max_timeout: float,
                 remember: Callable[[SandboxRecord], None] | None = None) -> None:
        self.fleet = fleet
        self.authenticator = authenticator
        self.max_timeout = max_timeout
        self.remember = remember or (lambda record: None)

    def routes(self, prefix: str = "/e2b") -> list[BaseRoute]:
        p = prefix
        return [
            Route(f"{p}/sandboxes", self._wrap(self.create_v1), methods=["POST"]),
            Route(f"{p}/v2/sandboxes", self._wrap(self.create_v2), methods=["POST"]),
            Route(f"{p}/sandboxes", self._wrap(self.list_v1), methods=["GET"]),
            Route(f"{p}/v2/sandboxes", self._wrap(self.list_v2), methods=["GET"]),
            Route(p + "/sandboxes/{sandbox_id}", self._wrap(self.get), methods=["GET"]),
            Route(p + "/sandboxes/{sandbox_id}", self._wrap(self.kill), methods=["DELETE"]),
            Route(p + "/sandboxes/{sandbox_id}/timeout", self._wrap(self.set_timeout), methods=["POST"]),
            Route(p + "/sandboxes/{sandbox_id}/pause", self._wrap(self.pause), methods=["POST"]),
            Route(p + "/sandboxes/{sandbox_id}/connect", self._wrap(self.connect), methods=["POST"]),
            Route(p + "/v2/sandboxes/{sandbox_id}/connect", self._wrap(self.connect), methods=["POST"]),
            Route(p + "/sandboxes/{sandbox_id}/resume", self._wrap(self.resume), methods=["POST"]),
            Route(p + "/sandboxes/{sandbox_id}/metrics", self._wrap(self.metrics), methods=["GET"]),
            Route(p + "/{rest:path}", self._not_served, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]

    def _wrap(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                owner = await owner_of(request, self.authenticator)
                return await handler(request, owner)
            except ApiError as exc:
                return error_response(exc)
            except (SandboxError, SandboxUnavailable) as exc:
                return error_response(api_error(exc, request.path_params.get("sandbox_id")))
            except Exception:
                log.exception("e2b.rest_failed", path=request.url.path, method=request.method)
                return error_response(ApiError(500, "the E2B API failed on this request; the node's log has the details"))

        return endpoint

    async def _not_served(self, request: Request) -> Response:
        rest = str(request.path_params.get("rest", ""))
        if rest.split("/")[0] == "templates" or rest.startswith("v2/templates"):
            return error_response(ApiError(404, f"{request.method} {request.url.path}: Corral does not serve E2B's "
                                                "template API; templates are managed on each runner's host with "
                                                "`corral template add|list`, and a sandbox names one as templateID"))
        return error_response(ApiError(404, f"{request.method} {request.url.path} is not part of the E2B API "
                                            "that Corral serves (see docs/sandboxes.md)"))

    # -- create, list, get
    async def create_v1(self, request: Request, owner: str) -> Response:
        return await self._create(request, owner, v2=False)

    async def create_v2(self, request: Request, owner: str) -> Response:
        return await self._create(request, owner, v2=True)

    async def _create(self, request: Request, owner: str, v2: bool) -> Response:
        spec = shapes.new_sandbox(await body_of(request), v2=v2, max_timeout=self.max_timeout)
        record = await self.fleet.create(owner, spec)
        self.remember(record)
        log.info("e2b.created", sandbox_id=record.sandbox_id, template=record.template, owner=owner)
        return json(shapes.sandbox(record), 201)

    async def list_v2(self, request: Request, owner: str) -> Response:
        query = shapes.list_query(request.query_params, default_states=("running", "paused"))
        page = await self.fleet.list(owner, query)
        items = [shapes.listed_sandbox(r) for r in page.records if r.state in ("running", "paused")]
        headers = {"X-Next-Token": page.next_token} if page.next_token else None
        return json(items, 200, headers)

    async def list_v1(self, request: Request, owner: str) -> Response:
        """The first list endpoint: running sandboxes only (filtered by metadata), all of them."""
        query = shapes.list_query(request.query_params, default_states=("running",))
        items: list[dict[str, Any]] = []
        while True:
            page = await self.fleet.list(owner, query)
            items += [shapes.listed_sandbox(r) for r in page.records if r.state in ("running", "paused")]
            if not page.next_token:
                return json(items)
            query = dataclasses.replace(query, next_token=page.next_token)

    async def get(self, request: Request, owner: str) -> Response:
        record = await self.fleet.get(owner, sandbox_id(request))
        self.remember(record)
        return json(shapes.sandbox_detail(record))

    # -- lifecycle
    async def kill(self, request: Request, owner: str) -> Response:
        sid = sandbox_id(request)
        await self.fleet.kill(owner, sid)
        log.info("e2b.killed", sandbox_id=sid)
        return Response(status_code=204)

    async def set_timeout(self, request: Request, owner: str) -> Response:
        sid = sandbox_id(request)
        timeout = shapes.timeout_body(await body_of(request), "a timeout change", self.max_timeout, required=True)
        assert timeout is not None
        record = await self.fleet.get(owner, sid)
        if record.state != "running":
            # E2B changes the timeout of running sandboxes only; SDKs 2.0–2.5 rely on this to resume.
            raise ApiError(404, f"sandbox {sid} is {record.state}, not running; connect to it to resume it")
        await self.fleet.set_timeout(owner, sid, timeout)
        return Response(status_code=204)

    async def pause(self, request: Request, owner: str) -> Response:
        sid = sandbox_id(request)
        body = shapes.as_object(await body_of(request) or {}, "a pause")
        if body.get("memory") is False:
            raise bad("pausing without memory (memory=false, mode=\"filesystem\") is not offered by Corral: "
                      "every pause keeps memory")
        record = await self.fleet.get(owner, sid)
        if record.state == "paused":
            raise ApiError(409, f"sandbox {sid} is already paused")
        await self.fleet.pause(owner, sid)
        log.info("e2b.paused", sandbox_id=sid)
        return Response(status_code=204)

    async def connect(self, request: Request, owner: str) -> Response:
        sid = sandbox_id(request)
        body = await body_of(request)
        if isinstance(body, dict) and body.get("memory") is False:
            raise bad("resuming without memory (on_resume=\"reboot\") is not offered by Corral: a paused sandbox "
                      "resumes with its memory")
        timeout = shapes.timeout_body(body, "a connect", self.max_timeout, required=False)
        record, resumed = await self.fleet.connect(owner, sid, 300.0 if timeout is None else timeout)
        self.remember(record)
        return json(shapes.sandbox(record), 201 if resumed else 200)

    async def resume(self, request: Request, owner: str) -> Response:
        sid = sandbox_id(request)
        timeout = shapes.timeout_body(await body_of(request), "a resume", self.max_timeout, required=False)
        record = await self.fleet.get(owner, sid)
        if record.state == "running":
            raise ApiError(409, f"sandbox {sid} is already running")
        record, _ = await self.fleet.connect(owner, sid, 15.0 if timeout is None else timeout)
        self.remember(record)
        return json(shapes.sandbox(record), 201)

    async def metrics(self, request: Request, owner: str) -> Response:
        sid = sandbox_id(request)
        start = unix_param(request, "start")
        end = unix_param(request, "end")
        # SandboxFleet's own `list` method shadows the builtin in its annotations: say what comes back.
        found = cast(Iterable[Metrics], await self.fleet.metrics(owner, sid, start, end))
        return json([shapes.metric(m) for m in found])


def sandbox_id(request: Request) -> str:
    sid = str(request.path_params["sandbox_id"])
    if not SANDBOX_ID_RE.match(sid):
        raise ApiError(404, f"sandbox {sid[:80]!r} not found: sandbox ids are lowercase letters and digits")
    return sid


def unix_param(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.lstrip("-").isdigit():
        raise bad(f"{name} must be a time in unix seconds, not {raw!r}")
    return float(raw)


async def body_of(request: Request) -> Any:
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes")
    if not data.strip():
        return None
    try:
        return orjson.loads(bytes(data))
    except orjson.JSONDecodeError as exc:
        raise bad(f"the request body is not valid JSON: {exc}") from None


def api_error(exc: Exception, sid: str | None) -> ApiError:
    """A provider or fleet error as E2B's HTTP status and message."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, SandboxNotFound):
        return ApiError(404, message if sid is None or sid in message else f"sandbox {sid} not found: {message}")
    if isinstance(exc, TemplateNotFound):
        return ApiError(404, message)
    if isinstance(exc, InvalidSpec):
        return ApiError(400, message)
    if isinstance(exc, SandboxStateError):
        return ApiError(409, message)
    if isinstance(exc, CapacityError):
        return ApiError(429, message, NO_RETRY)  # room does not come back by itself within the SDK's retries
    if isinstance(exc, ProviderUnavailable):
        return ApiError(503, message, NO_RETRY)  # a setup problem: the message says how to fix it
    if isinstance(exc, SandboxUnavailable):
        return ApiError(503, message, {"Retry-After": "1", "Should-Retry": "true"})
    return ApiError(500, message)
