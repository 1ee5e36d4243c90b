"""Each sandbox's usage over time, as E2B's metrics endpoint answers it.

E2B samples a sandbox when it starts and then at a fixed interval while it runs, and answers
`GET /sandboxes/{id}/metrics?start=&end=` with the samples in that window. A runner keeps the
newest `kept` samples of each sandbox it holds, in memory: the history starts again when the
runner restarts, and ends with the sandbox.
"""

from __future__ import annotations

from collections import deque

from ..sandbox.protocol import Metrics


class MetricsHistory:
    def __init__(self, kept: int) -> None:
        if kept < 1:
            raise ValueError("a metrics history keeps at least one sample")
        self.kept = kept
        self._samples: dict[str, deque[Metrics]] = {}

    def record(self, sandbox_id: str, sample: Metrics) -> None:
        self._samples.setdefault(sandbox_id, deque(maxlen=self.kept)).append(sample)

    def has(self, sandbox_id: str) -> bool:
        return bool(self._samples.get(sandbox_id))

    def between(self, sandbox_id: str, start: float | None, end: float | None) -> list[Metrics]:
        """The samples taken from `start` to `end` (unix seconds, both included; None: unbounded), oldest first."""
        return [m for m in self._samples.get(sandbox_id, ())
                if (start is None or m.timestamp >= start) and (end is None or m.timestamp <= end)]

    def forget(self, sandbox_id: str) -> None:
        self._samples.pop(sandbox_id, None)
