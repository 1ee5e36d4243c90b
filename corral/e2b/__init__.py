"""E2B's protocol on a Corral node: the control REST under `/e2b/`, envd's data plane under
`/envd/` (and `/files` at the root, where the SDK's signed URLs point). Protocol only: every
sandbox operation goes to the `SandboxFleet`.

    api = E2bApi(fleet, authenticator, E2bOptions(max_timeout=settings.sandbox_max_timeout))
    routes = api.routes()
    app = Starlette(routes=routes, middleware=api.middleware())   # E2B_*_URL ending in "/" works too
    misdirected(path, node_url)   # what to say of an E2B path sent to the node's root, or None
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..engine.auth import Authenticator
from ..fleet import SandboxFleet, SandboxRecord
from .envd import EnvdApi, EnvdOptions
from .files_http import FilesHttp
from .filesystem_service import Watchers
from .rest import ControlApi
from .shapes import ENVD_VERSION
from .signing import TokenBook

__all__ = ["ENVD_VERSION", "E2bApi", "E2bOptions", "misdirected"]

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@dataclass
class E2bOptions:
    max_timeout: float = 86400.0  # longest sandbox timeout a request may ask for (seconds)
    max_upload_bytes: int = 1 << 30  # largest upload through /files
    max_message: int = 4 << 20  # largest Connect message
    keepalive_floor: float = 1.0  # shortest keepalive interval a stream may ask for (seconds)
    watcher_idle: float = 600.0  # a CreateWatcher watch not polled for this long is dropped (seconds)
    max_watchers: int = 1000  # CreateWatcher watches a node keeps in all
    max_watchers_per_sandbox: int = 64  # ... and for any one sandbox, so one tenant cannot take them all
    token_reload_interval: float = 1.0  # shortest time between two reloads of access tokens for signed URLs (seconds)


class E2bApi:
    def __init__(self, fleet: SandboxFleet, authenticator: Authenticator, options: E2bOptions | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.options = options or E2bOptions()
        self.tokens = TokenBook()
        self.watchers = Watchers(clock, self.options.watcher_idle, self.options.max_watchers,
                                 self.options.max_watchers_per_sandbox)
        self.control = ControlApi(fleet, authenticator, self.options.max_timeout, remember=self._remember)
        self.envd = EnvdApi(fleet, self.watchers, EnvdOptions(max_message=self.options.max_message,
                                                              keepalive_floor=self.options.keepalive_floor,
                                                              max_upload_bytes=self.options.max_upload_bytes))
        self.files = FilesHttp(self.envd, self.tokens, self.options.max_upload_bytes, clock, reload=fleet.access_tokens,
                               reload_interval=self.options.token_reload_interval)

    def _remember(self, record: SandboxRecord) -> None:
        if record.access_token:
            self.tokens.remember(record.sandbox_id, record.access_token)

    def routes(self) -> list[BaseRoute]:
        return [
            *self.control.routes("/e2b"),
            *self.files.routes("/envd"),
            *self.envd.routes("/envd"),
            Route("/envd/{rest:path}", _envd_not_served, methods=ALL_METHODS),
            *self.files.signed_routes(),
        ]

    def middleware(self) -> list[Middleware]:
        return [Middleware(CollapseSlashes)]

    async def close(self) -> None:
        await self.watchers.close()


PREFIXES = ("/e2b/", "/envd/")


class CollapseSlashes:
    """`/envd//process.Process/Start` is `/envd/process.Process/Start`: the SDK joins its URL and
    the path with a "/", so `E2B_SANDBOX_URL=<node>/envd/` (or `E2B_API_URL=<node>/e2b/`) doubles it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] in ("http", "websocket") else ""
        if "//" in path and path.startswith(PREFIXES):
            collapsed = "/".join(part for part in path.split("/") if part)
            collapsed = "/" + collapsed + ("/" if path.endswith("/") else "")
            scope = {**scope, "path": collapsed, "raw_path": collapsed.encode()}
        await self.app(scope, receive, send)


ROOT_CONTROL = ("/sandboxes", "/v2/sandboxes", "/templates", "/v2/templates")
ROOT_ENVD = ("/process.Process/", "/filesystem.Filesystem/")


def misdirected(path: str, node_url: str) -> str | None:
    """What to tell a client that sent an E2B call to the node's root: its E2B_*_URL lacks the prefix."""
    if any(path == p or path.startswith(p + "/") for p in ROOT_CONTROL):
        return (f"{path} is an E2B API path, and the E2B API is under /e2b/: set E2B_API_URL={node_url}/e2b "
                "(`corral e2b env` prints every variable)")
    if path.startswith(ROOT_ENVD):
        return (f"{path} is an envd path, and the sandbox data plane is under /envd/: set "
                f"E2B_SANDBOX_URL={node_url}/envd (`corral e2b env` prints every variable)")
    return None


async def _envd_not_served(request: Request) -> Response:
    body = {"code": 404, "message": f"{request.method} {request.url.path} is not part of envd's API as Corral serves it"}
    return Response(orjson.dumps(body), status_code=404, media_type="application/json")
