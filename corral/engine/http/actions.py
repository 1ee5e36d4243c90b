"""HTTP actions: routes a functions folder declares in `http.py`, served under `/http/`.

    # http.py of a functions folder
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from corral import ActionCtx, HttpRouter

    http = HttpRouter()

    @http.route("/hello", method="POST")
    async def hello(ctx: ActionCtx, request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"hello": body["name"]})

`POST /http/hello` then runs `hello`. A route is an exact path or, with `path_prefix=`, every
path under a prefix (the longest prefix wins; an exact path beats a prefix). A handler is an
action: it may call `ctx.run_query/run_mutation/run_action`, use `ctx.scheduler` and `ctx.env`,
and returns any Starlette response — a `StreamingResponse` streams. It runs as the caller named
by an `Authorization` header (a user token, or `Convex <admin key>`), else anonymously.
CORS is configured by the `http_cors_*` settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..env import redact
from ..errors import BadRequest, SchemaError, Unauthenticated
from ..functions import Registry
from ..runtime import ActionCtx

if TYPE_CHECKING:
    from ..auth import Authenticator
    from ..runtime import Engine

log = structlog.get_logger("corral.http_actions")

HTTP_MODULE = "http"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
Handler = Callable[[ActionCtx, Request], Awaitable[Response]]


@dataclass(frozen=True)
class HttpRoute:
    method: str
    path: str  # an exact path, or a prefix ending in '/' when `prefix`
    prefix: bool
    handler: Handler
    origin: str = ""

    def describe(self) -> str:
        return f"{self.method} {self.path}{'*' if self.prefix else ''}"


class HttpRouter:
    """The routes of one `http.py`: `http = HttpRouter()`, then `@http.route("/path", method="GET")`."""

    def __init__(self) -> None:
        self.routes: list[HttpRoute] = []

    def route(self, path: str | None = None, *, method: str = "GET", path_prefix: str | None = None,
              handler: Handler | None = None) -> Any:
        """Serve `method` at `path` (exact) or under `path_prefix`; as a decorator, or with `handler=`."""
        if (path is None) == (path_prefix is None):
            raise ValueError("a route has either a path or a path_prefix")
        where = path if path is not None else path_prefix
        assert where is not None
        if not isinstance(where, str) or not where.startswith("/"):
            raise ValueError(f"an HTTP route's path starts with '/', not {where!r}")
        if path_prefix is not None and not path_prefix.endswith("/"):
            raise ValueError(f"a path_prefix ends with '/' (like '/files/'), not {path_prefix!r}")
        verb = str(method).upper()
        if verb not in METHODS:
            raise ValueError(f"route {where!r}: method {method!r} is not one of {', '.join(METHODS)}")

        def register(fn: Handler) -> Handler:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"the handler of {verb} {where} must be `async def handler(ctx, request)`")
            if len(inspect.signature(fn).parameters) != 2:
                raise TypeError(f"the handler of {verb} {where} takes two parameters: (ctx, request)")
            new = HttpRoute(verb, where, path_prefix is not None, fn)
            for existing in self.routes:
                if (existing.method, existing.path, existing.prefix) == (new.method, new.path, new.prefix):
                    raise ValueError(f"route {new.describe()} is declared twice")
            self.routes.append(new)
            return fn

        if handler is not None:
            register(handler)
            return handler
        return register


def load_routes(registry: Registry) -> list[HttpRoute]:
    """Every route declared in `http.py` of Corral's own functions and of the functions folder."""
    routes: list[HttpRoute] = []
    for module, where in registry.declaration_modules(HTTP_MODULE, "HTTP routes"):
        for value in vars(module).values():
            if not isinstance(value, HttpRouter):
                continue
            for route in value.routes:
                clash = next((r for r in routes if (r.method, r.path, r.prefix) == (route.method, route.path, route.prefix)), None)
                if clash is not None:
                    raise SchemaError(f"HTTP route {route.describe()} of {where} is also declared in {clash.origin}")
                routes.append(HttpRoute(route.method, route.path, route.prefix, route.handler, where))
    return routes


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"code": code, "message": message}), status_code=status,
                    media_type="application/json", headers=headers)


class HttpActions:
    """The ASGI app mounted at `/http`: routes a request to its handler and runs it as an action."""

    def __init__(self, engine: Engine, authenticator: Authenticator, routes: list[HttpRoute]) -> None:
        self.engine = engine
        self.authenticator = authenticator
        self.exact: dict[str, dict[str, HttpRoute]] = {}
        self.prefixes: list[tuple[str, dict[str, HttpRoute]]] = []
        for route in routes:
            if route.prefix:
                table = next((t for p, t in self.prefixes if p == route.path), None)
                if table is None:
                    table = {}
                    self.prefixes.append((route.path, table))
                table[route.method] = route
            else:
                self.exact.setdefault(route.path, {})[route.method] = route
        self.prefixes.sort(key=lambda item: -len(item[0]))
        self.app: ASGIApp = self._serve
        settings = engine.settings
        origins = _split(settings.http_cors_origins)
        if origins:
            self.app = CORSMiddleware(self._serve, allow_origins=origins, allow_methods=list(METHODS),
                                      allow_headers=_split(settings.http_cors_headers),
                                      allow_credentials="*" not in origins, max_age=int(settings.http_cors_max_age))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def match(self, path: str) -> dict[str, HttpRoute] | None:
        found = self.exact.get(path)
        if found is not None:
            return found
        for prefix, table in self.prefixes:
            if path.startswith(prefix):
                return table
        return None

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]
        request = Request(scope, receive)
        table = self.match(path or "/")
        if table is None:
            await _error(404, "NotFound", f"no HTTP action is routed at {request.url.path}")(scope, receive, send)
            return
        route = table.get(request.method)
        if route is None:
            allowed = ", ".join(sorted(table))
            await _error(405, "MethodNotAllowed", f"{request.url.path} answers {allowed}, not {request.method}",
                         {"Allow": allowed})(scope, receive, send)
            return
        try:
            caller = await self.authenticator.from_header(request.headers.get("authorization"))
        except Unauthenticated as exc:
            await _error(401, "Unauthenticated", exc.message)(scope, receive, send)
            return
        except BadRequest as exc:
            await _error(400, exc.code, exc.message)(scope, receive, send)
            return
        label = f"HTTP action {route.describe()}"
        timeout = self.engine.settings.action_timeout

        async def answer() -> None:
            response = await route.handler(ActionCtx(self.engine, caller), request)
            if not isinstance(response, Response):
                raise TypeError(f"it returned {type(response).__name__}, not a starlette Response")
            await response(scope, receive, send)

        try:
            await self.engine.clock.within(answer(), timeout)  # the engine's time: Clock.advance counts
        except TimeoutError:
            log.warning("http_action.timeout", route=route.describe(), limit=timeout)
            await _safe_error(scope, receive, send, 504, "FunctionTimeout", f"{label} ran longer than its limit of {timeout:g} s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a handler's failure is reported, never its stack trace
            message = redact(f"Uncaught {type(exc).__name__} in {label}: {exc}")
            log.warning("http_action.failed", route=route.describe(), error=message)
            await _safe_error(scope, receive, send, 500, "HttpActionFailed", message)


async def _safe_error(scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
    """An error response, unless the handler's response already started (then the stream just ends)."""
    with contextlib.suppress(Exception):  # the headers were already sent
        await _error(status, code, message)(scope, receive, send)


def _split(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value or "").split(",") if part.strip()]
