"""The lifecycle durations the sandbox crons follow (written from Settings by each node at start)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..schema import SandboxPolicy

DAY_MS = 86_400_000.0


@dataclass(frozen=True)
class Policy:
    idle_timeout: float = 600_000.0  # ms; 0 never pauses for idleness
    retention: float = 30 * DAY_MS  # ms a paused or lost sandbox is kept before it is killed
    runner_lease: float = 30_000.0  # ms a runner stays up without a heartbeat


def policy(ctx: Any) -> Policy:
    doc = ctx.db.query(SandboxPolicy).first()
    if doc is None:
        return Policy()
    return Policy(idle_timeout=doc.idle_timeout, retention=doc.retention, runner_lease=doc.runner_lease)
