"""Stops a query or mutation that runs past its time limit.

Python cannot kill a thread, but it can raise an exception in one: the watchdog raises
`FunctionInterrupted` in the worker thread (checked between bytecodes) and interrupts the
worker's database connection (for a long SQL statement). The transaction then rolls back
and the worker serves the next request.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..clock import Clock
from ..errors import FunctionInterrupted, FunctionTimeout

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]


@dataclass
class _Guarded:
    deadline: float
    conn: Any
    label: str
    fired: bool = False


# How often the watchdog compares deadlines with the clock: a resolution (a limit fires at most this
# much real time late, also after Clock.advance), not a duration a user tunes, so not a setting.
WATCHDOG_TICK = 0.02


class Watchdog:
    def __init__(self, clock: Clock, tick: float = WATCHDOG_TICK) -> None:
        self._clock = clock
        self._tick = tick
        self._lock = threading.Lock()
        self._active: dict[int, _Guarded] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="corral-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._tick):
            now = self._clock.monotonic()
            with self._lock:
                for tid, entry in self._active.items():
                    if not entry.fired and now >= entry.deadline:
                        entry.fired = True
                        _set_async_exc(tid, ctypes.py_object(FunctionInterrupted))
                        if entry.conn is not None:
                            with contextlib.suppress(Exception):
                                entry.conn.interrupt()

    @contextlib.contextmanager
    def guard(self, seconds: float, conn: Any, label: str, writes: bool = False) -> Iterator[None]:
        tid = threading.get_ident()
        message = f"{label} ran longer than its limit of {seconds:g} s and was stopped" + ("; its writes were rolled back" if writes else "")
        entry = _Guarded(self._clock.monotonic() + seconds, conn, label)
        with self._lock:
            self._active[tid] = entry
        try:
            try:
                yield
            finally:
                with self._lock:
                    del self._active[tid]
                    if entry.fired:
                        _set_async_exc(tid, None)  # type: ignore[arg-type]
        except FunctionInterrupted:
            raise FunctionTimeout(message) from None
        except Exception:
            if entry.fired:
                raise FunctionTimeout(message) from None
            raise
        if entry.fired:
            raise FunctionTimeout(message)
