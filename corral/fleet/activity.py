"""Data-plane activity, written to the engine cheaply: the first sign of life at once, then at most
one write per sandbox per `interval`, batched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from ..engine.clock import Clock

log = structlog.get_logger("corral.runner")

Writer = Callable[[list[str], float], Awaitable[None]]  # (sandbox ids, when in ms)


class ActivityRecorder:
    def __init__(self, clock: Clock, interval: float, write: Writer) -> None:
        self.clock = clock
        self.interval = interval
        self.write = write
        self._written: dict[str, float] = {}  # sandbox id → when its activity was last written (s)
        self._pending: dict[str, float] = {}  # sandbox id → newest activity not written yet (s)
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None

    def seen(self, sandbox_id: str) -> None:
        now = self.clock.time()
        if now - self._written.get(sandbox_id, float("-inf")) >= self.interval:
            self._written[sandbox_id] = now
            self._pending.pop(sandbox_id, None)
            task = asyncio.get_running_loop().create_task(self._write([sandbox_id], now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._pending[sandbox_id] = now

    def forget(self, sandbox_id: str) -> None:
        self._written.pop(sandbox_id, None)
        self._pending.pop(sandbox_id, None)

    async def _write(self, sandbox_ids: list[str], at: float) -> None:
        try:
            await self.write(sandbox_ids, at * 1000.0)
        except Exception as exc:  # noqa: BLE001 - activity is best effort; the next write catches up
            log.warning("fleet.activity_write_failed", error=str(exc), sandboxes=len(sandbox_ids))

    async def flush(self) -> None:
        """Write every pending activity now (one mutation)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        now = self.clock.time()
        for sandbox_id in pending:
            self._written[sandbox_id] = now
        await self._write(sorted(pending), max(pending.values()))

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await self.clock.sleep(self.interval)
            await self.flush()

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
