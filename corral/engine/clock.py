"""The one clock the engine reads. Tests advance it instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()
        self._listeners: dict[int, Callable[[], None]] = {}
        self._next_listener = 0

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        return time.time() + self._offset

    def now_ms(self) -> float:
        return (time.time() + self._offset) * 1000.0

    def now_ns(self) -> int:
        return time.time_ns() + int(self._offset * 1e9)

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move this clock forward; everything that reads it (deadlines, ctx.now) sees the jump."""
        with self._lock:
            self._offset += seconds
            listeners = list(self._listeners.values())
        for listener in listeners:
            listener()

    def on_advance(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (from the advancing thread) after each advance; returns the unsubscriber."""
        with self._lock:
            key = self._next_listener
            self._next_listener += 1
            self._listeners[key] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._listeners.pop(key, None)

        return unsubscribe

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time: real time, cut short when advance() covers the rest."""
        deadline = self.monotonic() + seconds
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def poke() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(woken.set)

        unsubscribe = self.on_advance(poke)
        try:
            while (left := deadline - self.monotonic()) > 0:
                woken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), left)
        finally:
            unsubscribe()

    async def within(self, awaitable: Awaitable[T], seconds: float) -> T:
        """Await `awaitable`, cancelling it and raising TimeoutError once `seconds` of this clock's
        time have passed (like asyncio.wait_for, but advance() counts)."""
        task = asyncio.ensure_future(awaitable)
        timer = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            timer.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))  # let it unwind; a cancellation of ours still propagates
            if task.cancelled() or task.exception() is not None:
                raise TimeoutError
        return task.result()
