"""A run's limits and the durations, rates and sizes the run functions follow.

Written from Settings by each node at start (`corral/sandbox_runs:configure`, table corral_run_policy);
the defaults below hold until then (an engine used alone)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from corral import ConvexError

from ..schema import RunPolicy

SECOND = 1000.0


@dataclass(frozen=True)
class Policy:
    job_max_duration: float = 120 * SECOND  # ms
    job_idle_timeout: float = 900 * SECOND
    thread_max_duration: float = 3600 * SECOND
    thread_idle_timeout: float = 900 * SECOND
    attempt_max_duration: float = 1800 * SECOND
    attempt_idle_timeout: float = 900 * SECOND
    boot_timeout: float = 300 * SECOND
    max_timeout: float = 86400 * SECOND  # the longest a sandbox may live (sandbox_max_timeout)
    cpu_count: float = 2
    memory_mb: float = 512
    vcpu_usd_per_second: float = 0.000014
    memory_usd_per_gib_second: float = 0.0000045
    paused_usd_per_gib_second: float = 0.0000001
    artifact_max_bytes: float = 100 << 20
    artifact_preview_bytes: float = 4096
    artifact_url_ttl: float = 300 * SECOND  # ms a signed download URL stays valid

    def limits(self, kind: str, max_duration_ms: float | None, idle_timeout_ms: float | None) -> tuple[float, float]:
        """(max duration, idle timeout) in ms of a run of `kind`, the defaults filling what is not asked."""
        max_ms = getattr(self, f"{kind}_max_duration") if max_duration_ms is None else float(max_duration_ms)
        idle_ms = getattr(self, f"{kind}_idle_timeout") if idle_timeout_ms is None else float(idle_timeout_ms)
        if max_ms > self.max_timeout:
            raise ConvexError({"code": "InvalidArgument", "message": f"max_duration_ms is at most {self.max_timeout:.0f} "
                               f"(the sandbox_max_timeout setting), not {max_ms:.0f}"})
        return max_ms, idle_ms


def from_settings(settings: Any) -> dict[str, float]:
    """The policy's values (ms, USD, bytes) from a node's Settings."""
    s = settings
    values = {f"{kind}_{what}": getattr(s, f"run_{kind}_{what}") * SECOND
              for kind in ("job", "thread", "attempt") for what in ("max_duration", "idle_timeout")}
    values.update(boot_timeout=s.run_boot_timeout * SECOND, max_timeout=s.sandbox_max_timeout * SECOND,
                  cpu_count=s.run_cpu_count, memory_mb=s.run_memory_mb, vcpu_usd_per_second=s.run_vcpu_usd_per_second,
                  memory_usd_per_gib_second=s.run_memory_usd_per_gib_second,
                  paused_usd_per_gib_second=s.run_paused_usd_per_gib_second,
                  artifact_max_bytes=s.artifact_max_bytes, artifact_preview_bytes=s.artifact_preview_bytes,
                  artifact_url_ttl=s.artifact_url_ttl * SECOND)
    return {k: float(v) for k, v in values.items()}


def policy(ctx: Any) -> Policy:
    doc = ctx.db.query(RunPolicy).first()
    if doc is None:
        return Policy()
    known = {f.name for f in fields(Policy)}
    return Policy(**{k: v for k, v in doc["limits"].items() if k in known})


def defaults() -> dict[str, float]:
    return {k: float(v) for k, v in asdict(Policy()).items()}
