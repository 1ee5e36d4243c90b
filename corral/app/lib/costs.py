"""A run's sandbox time and cost, as E2B bills: vCPUs and GiB of memory × running time, and a
storage rate × GiB kept × paused time."""

from __future__ import annotations

import time
from typing import Any

from .run_limits import Policy

GIB_MB = 1024.0


def month_of(ms: float) -> str:
    """"2026-12": the UTC month a time (ms since the epoch) falls in."""
    return time.strftime("%Y-%m", time.gmtime(ms / 1000.0))


def sandbox_time(sandbox: Any, now: float) -> tuple[float, float]:
    """(running ms, paused ms) a sandbox has used up to `now` (or its end)."""
    end = sandbox["ended_at"] if sandbox.get("ended_at") is not None else now
    paused = float(sandbox.get("paused_total") or 0.0)
    if sandbox["state"] == "paused" and sandbox.get("paused_at") is not None:
        paused += max(0.0, now - sandbox["paused_at"])
    total = max(0.0, end - sandbox["started_at"])
    return max(0.0, total - paused), min(paused, total)


def usd(policy: Policy, cpu_count: float, memory_mb: float, running_ms: float, paused_ms: float, disk_mb: float = 0.0) -> float:
    running_s, paused_s = running_ms / 1000.0, paused_ms / 1000.0
    gib = memory_mb / GIB_MB
    return (cpu_count * policy.vcpu_usd_per_second * running_s
            + gib * policy.memory_usd_per_gib_second * running_s
            + (gib + disk_mb / GIB_MB) * policy.paused_usd_per_gib_second * paused_s)


def run_cost(policy: Policy, run: Any, sandbox: Any | None, now: float) -> dict[str, float]:
    """The run's cost so far: {running_ms, paused_ms, usd}."""
    if sandbox is None:
        return dict(run["cost"])
    running_ms, paused_ms = sandbox_time(sandbox, now)
    disk = float(sandbox["limits"].get("disk_mb", 0)) if isinstance(sandbox.get("limits"), dict) else 0.0
    return {"running_ms": running_ms, "paused_ms": paused_ms,
            "usd": round(usd(policy, run["cpu_count"], run["memory_mb"], running_ms, paused_ms, disk), 9)}
