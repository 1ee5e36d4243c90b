"""Convex's HTTP function API: /api/query, /api/mutation, /api/action, /api/run/{path}."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..auth import Authenticator
from ..errors import BadRequest, ConvexError, CorralError, FunctionError, Unauthenticated, path_hint
from ..live import SyncHub, serve_socket
from ..runtime import Engine
from ..values import ValueError_, decode, encode, encode_clean, ts_to_wire

ENCODED_FORMATS = {"convex_encoded_json", "convex_json"}
CLEAN_FORMATS = {"json", "convex_clean_json"}


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(exc: CorralError) -> Response:
    status = exc.http_status if 400 <= exc.http_status < 600 else 400
    return json_response({"code": exc.code, "message": exc.message}, status)


def function_failure(exc: FunctionError, fmt: str = "convex_encoded_json") -> Response:
    body: dict[str, Any] = {"status": "error", "errorMessage": exc.message}
    if isinstance(exc, ConvexError):
        body["errorData"] = encode(exc.data) if fmt in ENCODED_FORMATS else encode_clean(exc.data)
    return json_response(body)


class FunctionApi:
    def __init__(self, engine: Engine, hub: SyncHub, auth: Authenticator) -> None:
        self.engine = engine
        self.hub = hub
        self.auth = auth

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/query", self.query, methods=["GET", "POST"]),
            Route("/api/mutation", self.mutation, methods=["POST"]),
            Route("/api/action", self.action, methods=["POST"]),
            Route("/api/function", self.function, methods=["POST"]),
            Route("/api/query_ts", self.query_ts, methods=["POST"]),
            Route("/api/run/{path:path}", self.run, methods=["POST"]),
            WebSocketRoute("/api/sync", self.sync),
            WebSocketRoute("/api/{version}/sync", self.sync),
        ]

    async def sync(self, websocket: WebSocket) -> None:
        settings = self.engine.settings
        await serve_socket(websocket, self.hub, self.auth, settings.ping_interval)

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > self.engine.settings.max_args_bytes + 4096:
            raise BadRequest(f"request body is over the limit of {self.engine.settings.max_args_bytes} bytes", code="RequestTooLarge")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}", code="BadJsonBody") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object", code="BadJsonBody")
        return body

    @staticmethod
    def _args(raw: Any) -> dict[str, Any]:
        if raw is None:
            return {}
        if isinstance(raw, list):
            if len(raw) != 1:
                raise BadRequest("args must be an object, or a list holding one object", code="InvalidArgs")
            raw = raw[0]
        if not isinstance(raw, dict):
            raise BadRequest("args must be an object", code="InvalidArgs")
        try:
            return dict(decode(raw))
        except ValueError_ as exc:
            raise BadRequest(f"args are not valid Convex values: {exc}", code="InvalidArgs") from None

    @staticmethod
    def _format(raw: Any, default: str) -> str:
        fmt = default if raw is None else raw
        if fmt not in ENCODED_FORMATS | CLEAN_FORMATS:
            raise BadRequest(f"unknown format {fmt!r}; use 'json' or 'convex_encoded_json'", code="InvalidFormat")
        return str(fmt)

    async def _call(self, kind: str, request: Request, path: Any, args: Any, fmt: str) -> Response:
        if not isinstance(path, str) or not path:
            raise BadRequest("the request needs a function 'path' such as 'messages:list'", code="MissingPath")
        caller = await self.auth.from_headers(request.headers)
        try:
            value, _ts = await self.engine.call(kind, path, self._args(args), caller)
        except FunctionError as exc:
            return function_failure(exc, fmt)
        try:
            encoded = encode(value) if fmt in ENCODED_FORMATS else encode_clean(value)
        except ValueError_ as exc:
            return function_failure(FunctionError(f"{path} returned a value that is not a Convex value: {exc}"))
        return json_response({"status": "success", "value": encoded})

    async def _handle(self, kind: str, request: Request) -> Response:
        try:
            if request.method == "GET":
                params = request.query_params
                args = params.get("args")
                try:
                    parsed = orjson.loads(args) if args else {}
                except orjson.JSONDecodeError:
                    raise BadRequest("the 'args' query parameter is not valid JSON", code="BadJsonBody") from None
                return await self._call(kind, request, params.get("path"), parsed, self._format(params.get("format"), "json"))
            body = await self._body(request)
            return await self._call(kind, request, body.get("path"), body.get("args"), self._format(body.get("format"), "json"))
        except Unauthenticated as exc:
            return json_response({"code": "Unauthenticated", "message": exc.message}, 401)
        except CorralError as exc:
            return error_response(exc)

    async def query(self, request: Request) -> Response:
        return await self._handle("query", request)

    async def mutation(self, request: Request) -> Response:
        return await self._handle("mutation", request)

    async def action(self, request: Request) -> Response:
        return await self._handle("action", request)

    async def function(self, request: Request) -> Response:
        """Admin-only: run any function by path, of whatever kind it is."""
        try:
            caller = await self.auth.from_headers(request.headers)
            if not caller.is_admin:
                return json_response({"code": "Unauthorized", "message": "/api/function needs the admin key"}, 403)
            body = await self._body(request)
            path = body.get("path")
            spec = self.engine.registry.get(path) if isinstance(path, str) else None
            if spec is None:
                return function_failure(FunctionError(f"Could not find function for '{path}'{path_hint(path)}"))
            return await self._call(spec.kind, request, path, body.get("args"), self._format(body.get("format"), "json"))
        except Unauthenticated as exc:
            return json_response({"code": "Unauthenticated", "message": exc.message}, 401)
        except CorralError as exc:
            return error_response(exc)

    async def query_ts(self, request: Request) -> Response:
        return json_response({"ts": ts_to_wire(self.engine.store.published_ts)})

    async def run(self, request: Request) -> Response:
        """`/api/run/messages/list` runs `messages:list` (last segment is the function)."""
        try:
            segments = [s for s in request.path_params["path"].split("/") if s]
            if len(segments) < 2:
                raise BadRequest("the path must name a module and a function, e.g. /api/run/messages/list", code="MissingIdentifier")
            path = "/".join(segments[:-1]) + ":" + segments[-1]
            body = await self._body(request)
            spec = self.engine.registry.get(path)
            kind = spec.kind if spec is not None else "query"
            return await self._call(kind, request, path, body.get("args"), self._format(body.get("format"), "json"))
        except Unauthenticated as exc:
            return json_response({"code": "Unauthenticated", "message": exc.message}, 401)
        except CorralError as exc:
            return error_response(exc)
