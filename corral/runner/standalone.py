"""`corral runner`: a runner in its own process, on this host or another.

It serves its data plane (corral/runner/wire.py) on `listen`, registers with the node at
`server` using a runner key, and from then on is the same daemon as the node's embedded runner:
heartbeats, follows `corral/runners:work`, reconciles when it comes back. Its sandboxes outlive it; the
next start on the same data directory adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import uvicorn

from ..data_dir_lock import secure_data_dir
from ..engine.clock import Clock
from ..engine.settings import Settings
from ..listen import ListenError, bind
from .convex_control import ConvexControl
from .daemon import Registration, RunnerDaemon
from .executor import Executor
from .providers import open_provider
from .runner_name import hostname_label
from .server import RunnerServer

log = structlog.get_logger("corral.runner")


@dataclass
class RunnerOptions:
    server: str  # the node's URL
    key: str  # a runner key
    host: str  # where to listen for the data plane
    port: int
    data_dir: Path  # where its sandboxes live
    provider: str = "local"
    name: str | None = None  # default: <hostname>-<port>, stable across restarts
    advertise: str | None = None  # the URL nodes use to reach it; default http://<host>:<port>
    capacity: int = 100
    labels: list[str] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)  # durations, uid range, metrics: the sandbox_* and runner_* settings

    def runner_name(self) -> str:
        if self.name:
            return self.name
        return f"{hostname_label('runner')}-{self.port}"

    def url(self) -> str:
        if self.advertise:
            return self.advertise.rstrip("/")
        host = self.host if self.host not in ("0.0.0.0", "::", "") else socket.gethostname()
        return f"http://{host}:{self.port}"


LEAVE_TIMEOUT = 5.0  # seconds to tell the node this runner is leaving; past it, the lease says lost instead


async def run(options: RunnerOptions, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT); the sandboxes stay when it returns."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    listener = bind(options.host, options.port, "runner")
    try:
        await _serve(options, stop, listener)
    finally:
        listener.close()


async def _serve(options: RunnerOptions, stop: asyncio.Event, listener: socket.socket) -> None:
    secure_data_dir(options.data_dir)  # 0700: its sandboxes' state holds their envs
    provider = open_provider(options.provider, options.data_dir, uid_base=options.settings.sandbox_uid_base,
                             uid_count=options.settings.sandbox_uid_count)
    executor = Executor(provider, metrics_kept=options.settings.sandbox_metrics_kept)
    name = options.runner_name()
    secret = secrets.token_urlsafe(32)
    server = uvicorn.Server(uvicorn.Config(RunnerServer(name, executor, secret), log_level="warning", lifespan="off",
                                          timeout_graceful_shutdown=1))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # ours set `stop`
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    serving.add_done_callback(lambda _task: stop.set())
    while not server.started:
        if serving.done():
            await serving
            raise ListenError(f"could not serve on {options.host}:{options.port}")
        await asyncio.sleep(0.02)
    control = ConvexControl(options.server, options.key)
    registration = Registration(name=name, url=options.url(), secret=secret, capacity=options.capacity,
                                labels=sorted(set(options.labels)))
    daemon = RunnerDaemon(registration, executor, control, Clock(), options.settings.runner_heartbeat_interval,
                          options.settings.sandbox_metrics_interval)
    try:
        await daemon.start()
        log.info("runner.ready", runner=name, listen=f"{options.host}:{options.port}", server=options.server,
                 provider=options.provider)
        await stop.wait()
    finally:
        if daemon.ready.is_set():  # it had registered: say it is leaving (stopped, not lost)
            await daemon.leave(timeout=LEAVE_TIMEOUT)
        else:
            await daemon.stop()
        server.should_exit = True
        server.force_exit = True  # open streams (a client following a command) must not hold the exit up
        with contextlib.suppress(Exception):
            await serving
        await control.close()
        await executor.close()
        log.info("runner.stopped", runner=name)
