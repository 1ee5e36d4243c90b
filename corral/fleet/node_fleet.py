"""`Fleet`: the node's SandboxFleet. Lifecycle in the engine, execution on runners.

Every decision is written to the engine first (`sandboxes:*` internal functions, which bump the
sandbox's generation) and then applied on the runner directly, for latency; the runner's own
`corral/runners:work` subscription applies the same decision if the direct call is lost, and applies
the decisions of crons (timeouts, idleness, retention). Data-plane calls are routed to the runner
holding the sandbox: in process for the node's embedded runner, over HTTP for the others.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from ..engine.auth import Caller
from ..engine.clock import Clock
from ..engine.errors import ConvexError
from ..engine.live import SyncHub
from ..engine.runtime import Engine
from ..engine.settings import Settings
from ..runner.control import EngineControl, embedded_runner_caller
from ..runner.daemon import Registration, RunnerDaemon
from ..runner.executor import Executor
from ..runner.link import Desired, ProviderUnavailable, RunnerLink, SandboxUnavailable
from ..runner.providers import open_provider
from ..runner.runner_name import embedded_runner_name
from ..runner.server import RunnerServer
from ..sandbox.protocol import (
    CapacityError,
    InvalidSpec,
    Limits,
    Metrics,
    Provider,
    Sandbox,
    SandboxNotFound,
    SandboxSpec,
    SandboxStateError,
    TemplateNotFound,
)
from .activity import ActivityRecorder
from .remote_runner import RemoteRunner
from .sandbox_fleet import (
    CreateRequest,
    InvalidAccessToken,
    ListQuery,
    Page,
    SandboxRecord,
)

log = structlog.get_logger("corral.fleet")

ADMIN = Caller.admin()
PLACEMENT_ATTEMPTS = 3


def new_sandbox_id() -> str:
    """20 lowercase alphanumerics, E2B's shape."""
    return "i" + secrets.token_hex(10)[:19]


def _record(doc: dict[str, Any]) -> SandboxRecord:
    limits = doc["limits"]
    return SandboxRecord(
        sandbox_id=doc["sandbox_id"], owner=doc["owner"], template=doc["template"], state=doc["state"],
        runner=doc["runner"], started_at=doc["started_at"] / 1000.0, end_at=doc["end_at"] / 1000.0,
        on_timeout=doc["on_timeout"], auto_resume=doc["auto_resume"], metadata=dict(doc["metadata"]),
        limits=Limits(cpu_count=int(limits["cpu_count"]), memory_mb=int(limits["memory_mb"]),
                      disk_mb=int(limits["disk_mb"]), pids=int(limits["pids"])),
        allow_internet=doc["allow_internet"], access_token=doc["access_token"],
        last_activity=doc["last_activity"] / 1000.0,
        paused_at=None if doc.get("paused_at") is None else doc["paused_at"] / 1000.0,
        ended_at=None if doc.get("ended_at") is None else doc["ended_at"] / 1000.0,
        memory_kept=doc["memory_kept"], timeout=doc["timeout"] / 1000.0, paused_reason=doc.get("paused_reason"),
    )


def _away(runner: dict[str, Any] | None) -> str:
    """Why a runner cannot be reached, as the end of a sentence."""
    if runner is None:
        return "is no longer registered"
    return "was stopped" if runner["state"] == "stopped" else "is not answering"


def _not_found(sandbox_id: str) -> SandboxNotFound:
    return SandboxNotFound(f"sandbox {sandbox_id} was not found")


class Fleet:
    """Implements `SandboxFleet`. Construct in the node; `start()` in its lifespan, `stop()` after.

    `provider` overrides the `sandbox_provider` setting for the embedded runner (tests)."""

    def __init__(self, engine: Engine, hub: SyncHub, settings: Settings, clock: Clock, url: str, *,
                 provider: Provider | None = None, embedded: bool | None = None) -> None:
        self.engine = engine
        self.hub = hub
        self.settings = settings
        self.clock = clock
        self.url = url
        self._provider = provider
        self._embedded_enabled = settings.runner_embedded if embedded is None else embedded
        self.executor: Executor | None = None
        self.daemon: RunnerDaemon | None = None
        self.server: RunnerServer | None = None
        self.runner_name = ""
        self.unavailable: str | None = None  # why the embedded runner cannot host sandboxes
        self._remotes: dict[str, tuple[str, str, RemoteRunner]] = {}  # runner name → (url, secret, link)
        self.activity = ActivityRecorder(clock, settings.sandbox_touch_interval, self._write_activity)
        self._started = False
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop it runs on, once started

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Write the lifecycle policy, start the embedded runner (adopting what it held), start recording activity."""
        s = self.settings
        self.loop = asyncio.get_running_loop()
        await self._mutation("corral/sandboxes:configure", {"idle_timeout": s.sandbox_idle_timeout * 1000.0,
                                                     "retention": s.sandbox_retention * 1000.0,
                                                     "runner_lease": s.runner_lease * 1000.0})
        if self._embedded_enabled:
            await self._start_embedded()
        self.activity.start()
        self._started = True

    async def _start_embedded(self) -> None:
        s = self.settings
        try:
            provider = self._provider or open_provider(s.sandbox_provider, Path(s.data_dir), uid_base=s.sandbox_uid_base,
                                                        uid_count=s.sandbox_uid_count)
        except ProviderUnavailable as exc:
            self.unavailable = str(exc)
            log.warning("fleet.provider_unavailable", provider=s.sandbox_provider, reason=self.unavailable)
            return
        self.runner_name = embedded_runner_name(Path(s.data_dir))
        self.executor = Executor(provider, metrics_kept=s.sandbox_metrics_kept)
        registration = Registration(name=self.runner_name, url=self.url, secret=secrets.token_urlsafe(32),
                                    capacity=s.runner_capacity,
                                    labels=[label.strip() for label in s.runner_labels.split(",") if label.strip()])
        control = EngineControl(self.engine, self.hub, embedded_runner_caller(self.runner_name))
        self.daemon = RunnerDaemon(registration, self.executor, control, self.clock, s.runner_heartbeat_interval,
                                   s.sandbox_metrics_interval)
        self.server = RunnerServer(self.runner_name, self.executor, registration.secret)
        await self.daemon.start()

    async def runner_asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The embedded runner's data plane, for the other nodes of the deployment (mounted at /runner)."""
        if self.server is None:
            response = JSONResponse({"error": {"type": "SandboxError", "message": "this node runs no runner"}}, 503)
            await response(scope, receive, send)
            return
        await self.server.inner(scope, receive, send)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.activity.stop()
        if self.daemon is not None:
            await self.daemon.stop()
        if self.executor is not None:
            await self.executor.close()
        for _url, _secret, link in self._remotes.values():
            await link.close()
        self._remotes.clear()

    # -- engine calls -------------------------------------------------------------------------------
    async def _query(self, path: str, args: dict[str, Any]) -> Any:
        return await self.engine.call_query(path, args, ADMIN, internal_ok=True)

    async def _mutation(self, path: str, args: dict[str, Any]) -> Any:
        try:
            return await self.engine.call_mutation(path, args, ADMIN, internal_ok=True)
        except ConvexError as exc:
            data = exc.data if isinstance(exc.data, dict) else {}
            message = str(data.get("message", exc.message))
            if data.get("code") == "SandboxNotFound":
                raise SandboxNotFound(message) from None
            if data.get("code") == "SandboxStateError":
                raise SandboxStateError(message) from None
            raise

    async def _write_activity(self, sandbox_ids: list[str], at: float) -> None:
        await self._mutation("corral/sandboxes:record_activity", {"sandbox_ids": sandbox_ids, "at": at})

    # -- runners --------------------------------------------------------------------------------
    def _link(self, runner: dict[str, Any] | None) -> RunnerLink:
        """The way to a runner; SandboxUnavailable when it is gone."""
        if runner is None:
            raise SandboxUnavailable("the runner of this sandbox is no longer registered")
        name = runner["name"]
        if name == self.runner_name and self.executor is not None:
            return self.executor
        if runner["state"] != "up":
            raise SandboxUnavailable(f"runner {name!r} {_away(runner)}; the sandbox comes back when it does")
        cached = self._remotes.get(name)
        if cached is not None and cached[:2] == (runner["url"], runner["secret"]):
            return cached[2]
        link = RemoteRunner(name, runner["url"], runner["secret"])
        if cached is not None:
            asyncio.get_running_loop().create_task(cached[2].close())
        self._remotes[name] = (runner["url"], runner["secret"], link)
        return link

    async def _route(self, sandbox_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        found = await self._query("corral/sandboxes:route", {"sandbox_id": sandbox_id})
        if found is None:
            raise _not_found(sandbox_id)
        return found["sandbox"], found["runner"]

    async def _owned(self, owner: str, sandbox_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        doc, runner = await self._route(sandbox_id)
        if doc["owner"] != owner:
            raise _not_found(sandbox_id)  # another owner's sandbox does not exist for this caller
        return doc, runner

    async def _converge(self, doc: dict[str, Any], runner: dict[str, Any] | None, *, strict: bool) -> None:
        """Apply the engine's decision on the runner now. `strict`: raise SandboxUnavailable when the
        runner cannot be reached; otherwise the runner applies it when it is back."""
        state: Desired = doc["state"]
        try:
            await self._link(runner).converge(doc["sandbox_id"], state, int(doc["generation"]))
        except SandboxUnavailable:
            if strict:
                raise
            log.info("fleet.converge_deferred", sandbox=doc["sandbox_id"], state=state, runner=doc["runner"])

    def _check_timeout(self, timeout: float, *, allow_zero: bool = False) -> float:
        if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout < 0 or (timeout == 0 and not allow_zero):
            raise InvalidSpec(f"a timeout is a number of seconds above 0, not {timeout!r}")
        limit = self.settings.sandbox_max_timeout
        if timeout > limit:
            raise InvalidSpec(f"a timeout is at most {limit:g} seconds (the sandbox_max_timeout setting), not {timeout:g}")
        return float(timeout)

    # -- SandboxFleet -------------------------------------------------------------------------------
    async def create(self, owner: str, request: CreateRequest) -> SandboxRecord:
        timeout = self._check_timeout(request.timeout)
        if not isinstance(request.template, str) or not request.template:
            raise InvalidSpec("a sandbox needs a template name, such as 'base'")
        s = self.settings
        limits = request.limits or Limits(cpu_count=s.sandbox_cpu_count, memory_mb=s.sandbox_memory_mb,
                                          disk_mb=s.sandbox_disk_mb, pids=s.sandbox_pids)
        sandbox_id = new_sandbox_id()
        spec = SandboxSpec(sandbox_id=sandbox_id, template=request.template, envs=dict(request.envs),
                           allow_internet=request.allow_internet, limits=limits)
        tried: list[str] = []
        last_error: Exception | None = None
        for _ in range(PLACEMENT_ATTEMPTS):
            runner = await self._query("corral/runners:place", {"labels": list(request.runner_labels), "exclude": tried,
                                                         "template": request.template})
            if runner is None:
                break
            tried.append(runner["name"])
            try:
                await self._link(runner).create(spec)
            except (SandboxUnavailable, CapacityError, TemplateNotFound) as exc:
                log.warning("fleet.placement_failed", runner=runner["name"], error=str(exc))
                last_error = exc
                continue
            return await self._record_created(owner, request, spec, runner, timeout)
        if self.unavailable is not None and not tried:
            raise ProviderUnavailable(self.unavailable)
        if last_error is not None and not isinstance(last_error, TemplateNotFound):
            raise last_error
        await self._check_template(request.template, last_error)
        wanted = f" with the labels {', '.join(request.runner_labels)}" if request.runner_labels else ""
        raise CapacityError(f"no runner{wanted} has room for another sandbox: kill or pause some, raise runner_capacity, "
                            "or start another runner (corral runner --server URL --key KEY)")

    async def _check_template(self, template: str, error: Exception | None) -> None:
        """TemplateNotFound, saying which templates exist and where, when no up runner has `template`."""
        where: dict[str, list[str]] = await self._query("corral/runners:templates", {})
        if template in where and error is None:
            return
        known = "; ".join(f"{name} (on {', '.join(sorted(runners))})" for name, runners in sorted(where.items()))
        raise TemplateNotFound(
            f"no runner has the template {template!r}. Templates on the runners that are up: {known or 'none'}. "
            f"Templates are registered per runner: on the host of the runner that should have it, run "
            f"`corral template add {template} --rootfs DIR --data-dir <that runner's data dir>`; the runner "
            "reports it at its next heartbeat")

    async def _record_created(self, owner: str, request: CreateRequest, spec: SandboxSpec, runner: dict[str, Any],
                              timeout: float) -> SandboxRecord:
        now = self.clock.time()
        try:
            doc = await self._mutation("corral/sandboxes:record", {
                "sandbox_id": spec.sandbox_id, "owner": owner, "template": spec.template, "runner": runner["name"],
                "end_at": (now + timeout) * 1000.0, "timeout": timeout * 1000.0, "on_timeout": request.on_timeout,
                "auto_resume": request.auto_resume, "metadata": dict(request.metadata), "limits": asdict(spec.limits),
                "allow_internet": spec.allow_internet, "access_token": secrets.token_urlsafe(24) if request.secure else "",
                "started_at": now * 1000.0, "on_idle": request.on_idle,
                "idle_timeout": None if request.idle_timeout is None else request.idle_timeout * 1000.0})
        except BaseException:
            await self._link(runner).converge(spec.sandbox_id, "killed", 1 << 30)
            raise
        log.info("fleet.created", sandbox=spec.sandbox_id, runner=runner["name"], template=spec.template, owner=owner)
        return _record(doc)

    async def get(self, owner: str, sandbox_id: str) -> SandboxRecord:
        doc, _runner = await self._owned(owner, sandbox_id)
        return _record(doc)

    async def kill(self, owner: str, sandbox_id: str) -> None:
        doc, runner = await self._owned(owner, sandbox_id)
        if doc["state"] == "killed":
            raise _not_found(sandbox_id)
        doc = await self._mutation("corral/sandboxes:transition", {"sandbox_id": sandbox_id, "to": "killed"})
        self.activity.forget(sandbox_id)
        await self._converge(doc, runner, strict=False)

    async def pause(self, owner: str, sandbox_id: str) -> None:
        doc, runner = await self._owned(owner, sandbox_id)
        self._check_reachable(doc, runner)
        if doc["state"] == "paused":
            raise SandboxStateError(f"sandbox {sandbox_id} is already paused")
        doc = await self._mutation("corral/sandboxes:transition", {"sandbox_id": sandbox_id, "to": "paused", "expect": ["running"],
                                                            "paused_reason": "request"})
        await self._converge(doc, runner, strict=True)

    def _check_reachable(self, doc: dict[str, Any], runner: dict[str, Any] | None) -> None:
        if doc["state"] == "killed":
            raise _not_found(doc["sandbox_id"])
        if doc["state"] == "lost" or runner is None or (runner["state"] != "up" and runner["name"] != self.runner_name):
            raise SandboxUnavailable(f"sandbox {doc['sandbox_id']} is on runner {doc['runner']!r}, which {_away(runner)}; "
                                     "it comes back when its runner does")

    async def connect(self, owner: str, sandbox_id: str, timeout: float) -> tuple[SandboxRecord, bool]:
        timeout = self._check_timeout(timeout)
        doc, runner = await self._owned(owner, sandbox_id)
        self._check_reachable(doc, runner)
        if doc["state"] == "paused":
            return _record(await self._resume(doc, runner, timeout)), True
        end_at = (self.clock.time() + timeout) * 1000.0
        doc = await self._mutation("corral/sandboxes:set_end", {"sandbox_id": sandbox_id, "end_at": end_at,
                                                         "timeout": timeout * 1000.0, "extend_only": True})
        return _record(doc), False

    async def _resume(self, doc: dict[str, Any], runner: dict[str, Any] | None, timeout: float | None) -> dict[str, Any]:
        """Resume a paused sandbox for `timeout` seconds (None: its end_at stays, after an idle pause)."""
        sandbox_id = doc["sandbox_id"]
        args: dict[str, Any] = {"sandbox_id": sandbox_id, "to": "running", "expect": ["paused"]}
        if timeout is not None:
            args.update(end_at=(self.clock.time() + timeout) * 1000.0, timeout=timeout * 1000.0)
        try:
            doc = await self._mutation("corral/sandboxes:transition", args)
        except SandboxStateError:
            doc, runner = await self._route(sandbox_id)  # resumed meanwhile (by another request)
            if doc["state"] != "running":
                raise
        await self._converge(doc, runner, strict=True)
        log.info("fleet.resumed", sandbox=sandbox_id)
        return doc

    async def set_timeout(self, owner: str, sandbox_id: str, timeout: float) -> None:
        timeout = self._check_timeout(timeout, allow_zero=True)
        doc, runner = await self._owned(owner, sandbox_id)
        if doc["state"] == "killed":
            raise _not_found(sandbox_id)
        if timeout == 0 and doc["state"] == "running":
            to = "paused" if doc["on_timeout"] == "pause" else "killed"
            args: dict[str, Any] = {"sandbox_id": sandbox_id, "to": to, "end_at": self.clock.time() * 1000.0}
            if to == "paused":
                args["paused_reason"] = "timeout"
            doc = await self._mutation("corral/sandboxes:transition", args)
            await self._converge(doc, runner, strict=False)
            return
        await self._mutation("corral/sandboxes:set_end", {"sandbox_id": sandbox_id, "end_at": (self.clock.time() + timeout) * 1000.0,
                                                   "timeout": (timeout or doc["timeout"] / 1000.0) * 1000.0})

    async def metrics(self, owner: str, sandbox_id: str, start: float | None, end: float | None) -> list[Metrics]:
        doc, runner = await self._owned(owner, sandbox_id)
        if doc["state"] == "killed":
            raise _not_found(sandbox_id)
        self._check_reachable(doc, runner)
        return await self._link(runner).metrics(sandbox_id, start, end)

    async def data_plane(self, sandbox_id: str, access_token: str | None) -> Sandbox:
        doc, runner = await self._route(sandbox_id)
        if doc["state"] == "killed":
            raise _not_found(sandbox_id)
        if doc["access_token"] and not secrets.compare_digest((access_token or "").encode(), doc["access_token"].encode()):
            raise InvalidAccessToken(f"the access token of sandbox {sandbox_id} is missing or wrong: send the envdAccessToken "
                                     "its create or connect answered, as X-Access-Token")
        self._check_reachable(doc, runner)
        if doc["state"] == "paused":
            if not (doc["auto_resume"] or doc.get("paused_reason") == "idle"):
                raise SandboxNotFound(f"sandbox {sandbox_id} is paused: connect to it to resume it")
            idle = doc.get("paused_reason") == "idle"
            doc = await self._resume(doc, runner, None if idle else doc["timeout"] / 1000.0)
        self.activity.seen(sandbox_id)
        try:
            return self._link(runner).sandbox(sandbox_id)
        except SandboxNotFound:
            raise SandboxUnavailable(f"sandbox {sandbox_id} is not on its runner {doc['runner']!r} any more") from None

    async def is_running(self, sandbox_id: str) -> bool:
        try:
            doc, runner = await self._route(sandbox_id)
            self._check_reachable(doc, runner)
        except (SandboxNotFound, SandboxUnavailable):
            return False
        return bool(doc["state"] == "running")

    async def touch(self, sandbox_id: str) -> None:
        await self._mutation("corral/sandboxes:record_activity", {"sandbox_ids": [sandbox_id], "at": self.clock.now_ms()})

    def seen(self, sandbox_id: str) -> None:
        self.activity.seen(sandbox_id)

    async def access_tokens(self) -> list[tuple[str, str]]:
        return [(sid, token) for sid, token in await self._query("corral/sandboxes:access_tokens", {})]

    # Last in the class: the name `list` would shadow the builtin in the annotations above.
    async def list(self, owner: str, query: ListQuery) -> Page:
        limit = max(1, min(int(query.limit), 1000))
        found = await self._query("corral/sandboxes:page", {
            "owner": owner, "states": list(query.states), "limit": limit, "order": query.order,
            "metadata": dict(query.metadata), "cursor": query.next_token,
            "started_after": None if query.started_after is None else query.started_after * 1000.0,
            "template": query.template})
        return Page(records=[_record(d) for d in found["sandboxes"]], next_token=found["next"])
