"""A runner's hold on its provider: boots sandboxes and converges each to the engine's decision.

The engine decides a sandbox's state and numbers each decision (its generation); the executor
applies each generation once, whether it arrives by a direct call from a node (a client asked:
latency matters) or through the runner's `corral/runners:work` subscription (a cron decided), in
whichever order they come. A decision older than one already applied is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import structlog

from ..sandbox.protocol import (
    Metrics,
    Provider,
    Sandbox,
    SandboxInfo,
    SandboxNotFound,
    SandboxSpec,
    SandboxStateError,
)
from .link import Desired
from .metrics_history import MetricsHistory

log = structlog.get_logger("corral.runner")


@dataclass(frozen=True)
class HeldSandbox:
    sandbox_id: str
    state: Literal["running", "paused"]
    memory_kept: bool

    def report(self) -> dict[str, object]:
        return {"sandbox_id": self.sandbox_id, "state": self.state, "memory_kept": self.memory_kept}


class Executor:
    """Implements the node's `RunnerLink` in process (the embedded runner) and backs the runner
    server of a remote runner."""

    def __init__(self, provider: Provider, metrics_kept: int) -> None:
        self.provider = provider
        self.history = MetricsHistory(metrics_kept)
        self._ids: set[str] = set()  # every sandbox this runner holds: adopted or created
        self._applied: dict[str, int] = {}  # sandbox id → newest generation applied
        self._locks: dict[str, asyncio.Lock] = {}
        # Created here but not yet seen in the engine's work list: its record may still be on its way,
        # so a reconcile meanwhile must not take it for a sandbox the engine does not know.
        self.fresh: set[str] = set()

    @contextlib.asynccontextmanager
    async def _lock(self, sandbox_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(sandbox_id, asyncio.Lock())
        async with lock:
            yield

    async def adopt(self) -> list[str]:
        """After a restart: take back every sandbox still on this host."""
        adopted = await self.provider.adopt()
        self._ids.update(s.sandbox_id for s in adopted)
        return [s.sandbox_id for s in adopted]

    def template_names(self) -> list[str]:
        """The templates this runner's provider has: reported at registration and every heartbeat."""
        return sorted(self.provider.template_names())

    async def held(self) -> list[HeldSandbox]:
        """Every sandbox the provider still holds, with its actual state."""
        out: list[HeldSandbox] = []
        for sandbox_id in sorted(self._ids):
            info = await self._info(sandbox_id)
            if info is None or info.state == "killed":
                self._forget(sandbox_id)
                continue
            out.append(HeldSandbox(sandbox_id, info.state, info.memory_kept))
        return out

    async def _info(self, sandbox_id: str) -> SandboxInfo | None:
        try:
            return await self.provider.get(sandbox_id).info()
        except SandboxNotFound:
            return None

    def _forget(self, sandbox_id: str) -> None:
        self._ids.discard(sandbox_id)
        self.fresh.discard(sandbox_id)
        self._locks.pop(sandbox_id, None)
        self._applied.pop(sandbox_id, None)  # a sandbox the provider no longer holds is never converged again
        self.history.forget(sandbox_id)

    # -- the node's RunnerLink
    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        sandbox = await self.provider.create(spec)
        self._ids.add(spec.sandbox_id)
        self.fresh.add(spec.sandbox_id)
        await self._sample(sandbox)  # E2B's history starts when the sandbox does
        return await sandbox.info()

    async def converge(self, sandbox_id: str, state: Desired, generation: int) -> SandboxInfo | None:
        """Make the sandbox `state`, unless a newer decision was applied already. Returns its info
        afterwards, or None when this runner does not hold it (for a kill: no longer holds it)."""
        async with self._lock(sandbox_id):
            try:
                sandbox = self.provider.get(sandbox_id)
            except SandboxNotFound:
                self._forget(sandbox_id)
                return None
            if generation <= self._applied.get(sandbox_id, 0) or state == "lost":
                return None if state == "killed" else await self._info(sandbox_id)
            if state == "killed":
                await sandbox.kill()
                self._forget(sandbox_id)
                log.info("runner.killed", sandbox=sandbox_id, generation=generation)
                return None
            info = await sandbox.info()
            try:
                if state == "paused" and info.state == "running":
                    await sandbox.pause()
                    log.info("runner.paused", sandbox=sandbox_id, generation=generation)
                elif state == "running" and info.state == "paused":
                    await sandbox.resume()
                    log.info("runner.resumed", sandbox=sandbox_id, generation=generation)
            except SandboxStateError:
                pass  # it got there by itself meanwhile
            self._applied[sandbox_id] = generation
            return await sandbox.info()

    async def kill(self, sandbox_id: str) -> None:
        """Kill a sandbox the engine does not know (reconciling): no generation involved."""
        async with self._lock(sandbox_id):
            with contextlib.suppress(SandboxNotFound):
                await self.provider.get(sandbox_id).kill()
            self._forget(sandbox_id)
        log.info("runner.killed_unknown", sandbox=sandbox_id)

    def sandbox(self, sandbox_id: str) -> Sandbox:
        """The sandbox for data-plane traffic; SandboxNotFound when this runner does not hold it."""
        return self.provider.get(sandbox_id)

    async def metrics(self, sandbox_id: str, start: float | None = None, end: float | None = None) -> list[Metrics]:
        """The sandbox's samples from `start` to `end`; one taken now when a running sandbox has none
        yet (the runner restarted since it started)."""
        sandbox = self.provider.get(sandbox_id)
        if not self.history.has(sandbox_id):
            await self._sample(sandbox)
        return self.history.between(sandbox_id, start, end)

    async def sample_running(self) -> None:
        """Add a sample to the history of every running sandbox this runner holds."""
        for sandbox_id in sorted(self._ids):
            try:
                sandbox = self.provider.get(sandbox_id)
            except SandboxNotFound:
                continue
            await self._sample(sandbox)

    async def _sample(self, sandbox: Sandbox) -> None:
        """One sample into the history; a failure (the sandbox stopping meanwhile, its cgroup gone)
        leaves a gap and no more, and a sandbox forgotten meanwhile gets no history back."""
        try:
            if (await sandbox.info()).state != "running":
                return
            sample = await sandbox.metrics()
        except Exception as exc:  # noqa: BLE001 - one sandbox must not cost the others their samples
            log.debug("runner.metrics_skipped", sandbox=sandbox.sandbox_id, error=str(exc) or type(exc).__name__)
            return
        if sandbox.sandbox_id in self._ids:
            self.history.record(sandbox.sandbox_id, sample)

    async def close(self) -> None:
        """Let go of the sandboxes without killing them: they outlive the runner."""
        await self.provider.close()
