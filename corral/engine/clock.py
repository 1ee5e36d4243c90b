"""The one clock the engine reads. Tests advance it instead of sleeping."""

from __future__ import annotations

import threading
import time


class Clock:
    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

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
