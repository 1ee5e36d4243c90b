"""A Corral node: the engine, Corral's own functions and every plane, on one port.

This is the composition root: the only module that knows every layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from .app.lib.artifact_urls import PATH as ARTIFACT_DOWNLOAD_PATH
from .app.lib.artifact_urls import ArtifactDownloads
from .app.lib.run_limits import from_settings as run_policy
from .data_dir_lock import DataDirLock, secure_data_dir, write_private
from .e2b import E2bApi, E2bOptions, misdirected
from .e2b.auth import WorkspaceKeys
from .engine.auth import Authenticator, AuthService, Caller, new_admin_key
from .engine.clock import Clock
from .engine.errors import ConfigError
from .engine.functions import Registry
from .engine.http import FileStorageApi, FunctionApi, HttpActions, json_response, load_routes
from .engine.live import SyncHub
from .engine.metrics import render as render_metrics
from .engine.runtime import Engine
from .engine.scheduling import CronRunner, Scheduler, load_crons
from .engine.settings import Settings
from .engine.storage import open_store
from .fleet import Fleet, FleetSandboxes
from .web.console import Console

log = structlog.get_logger("corral.node")

# Every plane a node serves, by path prefix. The console takes whatever is left.
PLANES: list[tuple[str, str]] = [
    ("/api/", "Convex protocol: HTTP functions and the WebSocket sync protocol"),
    ("/e2b/", "E2B control API: create, list, connect, pause and kill sandboxes (the official e2b SDK's E2B_API_URL)"),
    ("/envd/", "sandbox data plane: envd's process and filesystem services, /files, /health (E2B_SANDBOX_URL); "
               "signed file URLs point at /files"),
    ("/http/", "HTTP actions: the routes of http.py in a functions folder"),
    ("/runner/", "node↔runner data plane: other nodes reach the sandboxes of this node's embedded runner"),
    ("/", "web console: the live app at /, its files under /console/, the operator's page at /#/operator"),
]

NODE_FILE = "node.json"
ADMIN_KEY_FILE = "admin_key"


def check_prefixes(planes: list[tuple[str, str]]) -> None:
    """Refuse a plane whose prefix overlaps another's (the console's `/` is the fallback)."""
    prefixes = [p for p, _ in planes if p != "/"]
    for i, first in enumerate(prefixes):
        if not (first.startswith("/") and first.endswith("/")):
            raise ConfigError(f"plane prefix {first!r} must start and end with '/'")
        for second in prefixes[i + 1:]:
            if first.startswith(second) or second.startswith(first):
                raise ConfigError(f"plane prefixes {first!r} and {second!r} overlap; each plane needs its own prefix")


class Node:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        check_prefixes(PLANES)
        self.settings = settings
        self.clock = clock or Clock()
        self.registry = Registry()
        self.registry.load_package("corral.app", "corral/app", namespace="corral")
        if settings.functions_dir is not None:
            self.registry.load_folder(Path(settings.functions_dir))
        store = open_store(settings.database_url, settings.sqlite_path, clock=self.clock,
                           **_store_options(settings))
        self.engine = Engine(settings, self.registry, store, self.clock)
        self.hub = SyncHub(self.engine)
        self.scheduler = Scheduler(self.engine, CronRunner(self.engine, load_crons(self.registry)))
        self.admin_key = ""
        self._data_lock: DataDirLock | None = None
        self.authenticator = Authenticator("")
        self.url = f"http://{settings.host}:{settings.port}"
        self.engine.files.origin = self.url  # upload URLs and ctx.storage.get_url() point here
        self.auth = AuthService(settings, store, self.clock, self.url)
        self.auth.attach(self.authenticator)
        WorkspaceKeys(self.engine).attach(self.authenticator)  # workspace-scoped keys (corral/app/workspace_keys.py)
        self.http_actions = HttpActions(self.engine, self.authenticator, load_routes(self.registry))
        # Sandboxes (corral/runner): lifecycle in the engine, execution on runners, one embedded here.
        self.fleet = Fleet(self.engine, self.hub, settings, self.clock, self.url)
        self.engine.sandboxes = FleetSandboxes(self.fleet)  # ctx.sandboxes in actions (docs/adr/0012-sandboxes-capability.md)
        # E2B's protocol (corral/e2b) over the fleet: /e2b/, /envd/ and the signed /files URLs.
        self.e2b = E2bApi(self.fleet, self.authenticator, E2bOptions(
            max_timeout=settings.sandbox_max_timeout, max_upload_bytes=settings.max_upload_bytes,
            watcher_idle=settings.e2b_watcher_idle, keepalive_floor=settings.e2b_keepalive_floor,
            token_reload_interval=settings.e2b_token_reload_interval), clock=self.clock.time)
        self.app = self._build_app()

    def start(self, *, serving: bool = True) -> None:
        """Open storage and apply the schema; raises SchemaError/ConfigError with a report.

        A node that will serve holds its data directory (one node per directory); a CLI command
        that opens the store for one call (`serving=False`) does not, so it works beside a node."""
        secure_data_dir(Path(self.settings.data_dir))  # 0700: the database holds envd access tokens
        if serving:
            self._data_lock = DataDirLock.take(Path(self.settings.data_dir))
        try:
            self._start()
        except BaseException:
            self._release_data_dir()
            raise

    def _start(self) -> None:
        self.engine.start()
        self.scheduler.prepare()
        self.auth.start()
        self.admin_key = self.engine.store.set_meta_if_absent("admin_key", new_admin_key())
        self.authenticator.admin_key = self.admin_key
        key_file = Path(self.settings.data_dir) / ADMIN_KEY_FILE
        if not key_file.exists() or key_file.read_text().strip() != self.admin_key or key_file.stat().st_mode & 0o077:
            write_private(key_file, self.admin_key + "\n")

    def local_user_id(self) -> str:
        """The node's local user (an operator, corral/app/operator.py): its own issuer's auth_local_subject."""
        return f"{self.auth.issuer}|{self.settings.auth_local_subject}"

    def stop(self) -> None:
        try:
            self.scheduler.close()
            self.engine.stop()
        finally:
            self._release_data_dir()

    def _release_data_dir(self) -> None:
        if self._data_lock is not None:
            self._data_lock.release()
            self._data_lock = None

    def _build_app(self) -> Starlette:
        api = FunctionApi(self.engine, self.hub, self.authenticator)
        console = Console(self.engine, self.url, PLANES, self.authenticator)
        routes: list[BaseRoute] = [
            *api.routes(),
            *FileStorageApi(self.engine).routes(),
            *self.auth.routes(self.authenticator),
            Route(ARTIFACT_DOWNLOAD_PATH, ArtifactDownloads(self.engine).endpoint, methods=["GET", "HEAD"]),  # signed URLs
            Route("/api/{rest:path}", _not_found("Convex API"), methods=["GET", "POST", "PUT", "DELETE"]),
            *self.e2b.routes(),
            Mount("/http", app=self.http_actions),
            Mount("/runner", app=self.fleet.runner_asgi),
            Route("/metrics", _metrics),
            Route("/", console.app, methods=["GET", "HEAD"]),
            Route("/console/{name}", console.static, methods=["GET", "HEAD"]),
            Route("/operator", console.page, methods=["GET", "HEAD"]),
            Route("/{rest:path}", _not_served_here, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        ]
        return Starlette(routes=routes, middleware=self.e2b.middleware(), lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.hub.bind(asyncio.get_running_loop())
        housekeeping = asyncio.create_task(self._housekeeping())
        self.scheduler.start()
        await self.fleet.start()  # the embedded runner adopts its sandboxes and reconciles with the engine
        await self.engine.call_mutation("corral/sandbox_runs:configure", {"values": run_policy(self.settings)},
                                        Caller.admin(), internal_ok=True)
        await self.engine.call_mutation("corral/operator:configure", {"local_user": self.local_user_id()},
                                        Caller.admin(), internal_ok=True)
        try:
            yield
        finally:
            await self.e2b.close()  # directory watchers made through envd's CreateWatcher
            await self.fleet.stop()  # sandboxes keep running: the next start adopts them
            housekeeping.cancel()
            await self.scheduler.stop()
            self._remove_node_file()

    async def _housekeeping(self) -> None:
        while True:
            await self.clock.sleep(self.settings.maintenance_interval)
            try:
                await self.engine.forget_old_session_requests()
            except Exception as exc:  # noqa: BLE001 - housekeeping must never take the node down
                log.warning("node.housekeeping_failed", error=str(exc))

    def announce(self) -> None:
        """Once the port is bound: record the URL for other commands and log readiness."""
        self._write_node_file()
        log.info("node.ready", url=self.url, storage=self.engine.store.dialect_name, data_dir=str(self.settings.data_dir))

    def _write_node_file(self) -> None:
        path = Path(self.settings.data_dir) / NODE_FILE
        path.write_text(json.dumps({"url": self.url, "pid": os.getpid(), "database": self.settings.database_url or "sqlite"}))

    def _remove_node_file(self) -> None:
        path = Path(self.settings.data_dir) / NODE_FILE
        with contextlib.suppress(OSError):
            data = json.loads(path.read_text())
            if data.get("pid") == os.getpid():
                path.unlink()


def _store_options(settings: Settings) -> dict[str, Any]:
    if settings.database_url and settings.database_url.startswith(("postgres://", "postgresql://")):
        return {"readers": settings.postgres_readers, "writers": settings.postgres_writers,
                "retries": settings.occ_retries, "retention": settings.commit_log_retention,
                "cleanup_interval": settings.commit_log_cleanup_interval}
    return {"readers": settings.sqlite_readers, "group_commit_max": settings.group_commit_max}


def _not_found(plane: str) -> Any:
    async def endpoint(request: Request) -> Response:
        return json_response({"code": "NotFound", "message": f"{request.url.path} is not served by the {plane} of this node"}, 404)

    return endpoint


async def _not_served_here(request: Request) -> Response:
    """Any path no plane serves: JSON, never Starlette's plain "Not Found" (which SDKs fail to parse)."""
    path = request.url.path
    node_url = str(request.base_url).rstrip("/")
    message = misdirected(path, node_url) or (
        f"{request.method} {path} is not served by this node: its planes are "
        + ", ".join(prefix for prefix, _ in PLANES if prefix != "/") + " and the console at /")
    return json_response({"code": 404, "message": message}, 404)


async def _metrics(request: Request) -> Response:
    return Response(render_metrics(), media_type="text/plain; version=0.0.4")
