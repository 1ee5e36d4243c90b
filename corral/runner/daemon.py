"""A runner's life as a client of the engine: register, reconcile, heartbeat, follow its work.

The same code runs the node's embedded runner (through `EngineControl`) and `corral runner`
on another host (through `ConvexControl`):

1. adopt the sandboxes still on this host (they outlive their runner);
2. register (name, URL, secret, capacity, labels) with a runner key, then reconcile: report what
   it holds; the engine answers what to kill (sandboxes it no longer knows) and restores those it
   had marked lost;
3. heartbeat every `heartbeat_interval` (a lost runner reconciles again when it comes back), and
   sample the usage of its running sandboxes every `metrics_interval` (E2B's metrics history);
4. subscribe to `corral/runners:work` and converge each sandbox to the state the engine decided,
   confirming kills so that they leave the work list.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..engine.clock import Clock
from .control import ControlError, ControlPlane
from .executor import Executor

log = structlog.get_logger("corral.runner")

RETRY_SECONDS = 1.0


@dataclass
class Registration:
    name: str
    url: str  # where nodes reach this runner's data plane
    secret: str  # what nodes present to it
    capacity: int
    labels: list[str] = field(default_factory=list)


class RunnerDaemon:
    def __init__(self, registration: Registration, executor: Executor, control: ControlPlane, clock: Clock,
                 heartbeat_interval: float, metrics_interval: float) -> None:
        self.registration = registration
        self.executor = executor
        self.control = control
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        self.metrics_interval = metrics_interval
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()  # set once registered and reconciled
        self.lease: float | None = None  # seconds, as the engine said at registration
        self._first_work = asyncio.Event()

    @property
    def name(self) -> str:
        return self.registration.name

    async def start(self, *, adopt: bool = True) -> None:
        """Adopt, register, reconcile (raises when the engine refuses), then run the loops."""
        if adopt:
            adopted = await self.executor.adopt()
            if adopted:
                log.info("runner.adopted", runner=self.name, sandboxes=len(adopted))
        await self.register()
        heartbeats = self._every(self._heartbeat_interval, self.heartbeat, "runner.heartbeat_failed")
        samples = self._every(lambda: self.metrics_interval, self.executor.sample_running, "runner.metrics_failed")
        self._tasks = [asyncio.create_task(heartbeats, name=f"runner-heartbeat-{self.name}"),
                       asyncio.create_task(self._work_loop(), name=f"runner-work-{self.name}"),
                       asyncio.create_task(samples, name=f"runner-metrics-{self.name}")]
        self.ready.set()

    async def register(self) -> None:
        r = self.registration
        answer = await self.control.mutation("corral/runners:register", {"name": r.name, "url": r.url, "secret": r.secret,
                                                                   "capacity": r.capacity, "labels": r.labels,
                                                                   "templates": self._templates()})
        self.lease = float(answer["lease"]) if isinstance(answer, dict) and answer.get("lease") else None
        await self.reconcile()
        log.info("runner.registered", runner=r.name, url=r.url, capacity=r.capacity, labels=r.labels)

    def _templates(self) -> list[str]:
        """What placement needs to know: a `corral template add` reaches the engine at the next heartbeat."""
        try:
            return self.executor.template_names()
        except Exception as exc:  # noqa: BLE001 - an unreadable registry must not stop the heartbeat
            log.warning("runner.templates_unreadable", runner=self.name, error=str(exc))
            return ["base"]

    async def reconcile(self) -> list[str]:
        """Report what this runner holds; kill what the engine no longer knows."""
        held = await self.executor.held()
        answer = await self.control.mutation("corral/runners:reconcile", {"name": self.name, "held": [h.report() for h in held]})
        kill = [sandbox_id for sandbox_id in answer if sandbox_id not in self.executor.fresh]
        for sandbox_id in kill:
            await self.executor.kill(sandbox_id)
        log.info("runner.reconciled", runner=self.name, held=len(held), killed=len(kill))
        return list(kill)

    async def _every(self, interval: Callable[[], float], work: Callable[[], Awaitable[None]], failed: str) -> None:
        """Run `work` every `interval()` seconds of the clock; a failure is logged as `failed` and the
        next round comes as usual (a missed heartbeat is covered by the lease, a missed sample is a gap)."""
        while True:
            await self.clock.sleep(interval())
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - see above
                log.warning(failed, runner=self.name, error=str(exc))

    def _heartbeat_interval(self) -> float:
        return self.heartbeat_interval if not self.lease else min(self.heartbeat_interval, self.lease / 3)

    async def heartbeat(self) -> None:
        try:
            answer = await self.control.mutation("corral/runners:heartbeat", {"name": self.name, "templates": self._templates()})
        except ControlError as exc:
            if exc.code != "RunnerNotRegistered":
                raise
            await self.register()
            return
        if answer.get("register"):  # the engine has it as stopped: this runner is running, so say so
            await self.register()
            return
        if answer.get("reconcile"):
            log.info("runner.back_after_lost", runner=self.name)
            await self.reconcile()

    async def _work_loop(self) -> None:
        while True:
            try:
                async for work in self.control.subscribe("corral/runners:work", {"name": self.name}):
                    await self.apply(work)
                    self._first_work.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - resubscribe after a lost connection
                log.warning("runner.work_subscription_failed", runner=self.name, error=str(exc))
            await asyncio.sleep(RETRY_SECONDS)

    async def apply(self, work: list[dict[str, Any]]) -> None:
        """Converge every sandbox of a work list (concurrently); report kills and vanished sandboxes."""
        for item in work:
            self.executor.fresh.discard(item["sandbox_id"])  # the engine knows it now
        await asyncio.gather(*(self._apply_one(item) for item in work))

    async def _apply_one(self, item: dict[str, Any]) -> None:
        sandbox_id, state, generation = item["sandbox_id"], item["state"], int(item["generation"])
        try:
            info = await self.executor.converge(sandbox_id, state, generation)
            if state == "killed":
                await self.control.mutation("corral/runners:confirm", {"name": self.name, "sandbox_id": sandbox_id,
                                                                "generation": generation})
            elif info is None and state in ("running", "paused"):
                log.warning("runner.sandbox_vanished", runner=self.name, sandbox=sandbox_id)
                await self.control.mutation("corral/runners:gone", {"name": self.name, "sandbox_id": sandbox_id})
            elif info is not None and not info.memory_kept:
                await self.control.mutation("corral/runners:confirm", {"name": self.name, "sandbox_id": sandbox_id,
                                                                "generation": generation, "memory_kept": False})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one sandbox failing must not hold up the others
            log.warning("runner.converge_failed", runner=self.name, sandbox=sandbox_id, state=state, error=str(exc))

    async def leave(self, timeout: float) -> None:
        """Stop, and tell the engine this runner is leaving on purpose (it shows as stopped, not
        lost). Its sandboxes stay on this host; registering again brings them back."""
        await self.stop()
        try:
            await asyncio.wait_for(self.control.mutation("corral/runners:leave", {"name": self.name}), timeout)
            log.info("runner.left", runner=self.name)
        except Exception as exc:  # noqa: BLE001 - unreachable engine: the lease will say lost instead
            log.warning("runner.leave_failed", runner=self.name, error=str(exc) or type(exc).__name__)

    async def stop(self) -> None:
        """Stop the loops; the sandboxes stay (a restart adopts them)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
