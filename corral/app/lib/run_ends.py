"""How a run ends: its cost settled from its sandbox, the workspace's usage added, in the transaction
that ends it — whether a person canceled it, a reaper ended it or its sandbox was killed."""

from __future__ import annotations

from typing import Any

from ..schema import Sandbox, SandboxRun, WorkspaceUsage
from .costs import run_cost
from .run_limits import policy
from .state_machines import RUN_TERMINAL, run_transition, sandbox_transition

RUN_METADATA = "corral_run"  # the sandbox metadata naming the run a sandbox was made for

OWNER_PREFIX = "workspace|"


def workspace_owner(workspace_id: str) -> str:
    """The owner of a workspace's sandboxes: every member reaches them, and its workspace keys."""
    return OWNER_PREFIX + str(workspace_id)


def end_run(ctx: Any, run: Any, to: str, reason: str, error: dict[str, str] | None = None,
            sandbox: Any | None = None) -> dict[str, Any]:
    if sandbox is None and run.get("sandbox_id"):
        sandbox = ctx.db.query(Sandbox).with_index("by_sandbox_id", lambda q: q.eq("sandbox_id", run["sandbox_id"])).first()
    cost = run_cost(policy(ctx), run, sandbox, float(ctx.now))
    new = run_transition(ctx, run, to, reason, error=error, cost=cost)
    usage = ctx.db.query(WorkspaceUsage).with_index(
        "by_workspace_month", lambda q: q.eq("workspace_id", run["workspace_id"]).eq("month", run["month"])).first()
    if usage is None:
        ctx.db.insert(WorkspaceUsage(workspace_id=run["workspace_id"], month=run["month"], runs=1,
                                     running_ms=cost["running_ms"], paused_ms=cost["paused_ms"], usd=cost["usd"]))
    else:
        ctx.db.patch(usage["_id"], {"runs": usage["runs"] + 1, "running_ms": usage["running_ms"] + cost["running_ms"],
                                    "paused_ms": usage["paused_ms"] + cost["paused_ms"], "usd": usage["usd"] + cost["usd"]})
    return new


def _outcome(sandbox: Any, reason: str | None, run: Any, now: float) -> tuple[str, str, dict[str, str]]:
    """(status, reason, error) of a run whose sandbox was killed."""
    if reason == "idle":
        seconds = run["idle_timeout_ms"] / 1000.0
        return "canceled", "idle", {"code": "IdleTimeout", "message": f"no activity on its sandbox for {seconds:g} s"}
    if reason == "max_duration" or (reason is None and sandbox["end_at"] <= now):
        seconds = run["max_duration_ms"] / 1000.0
        return "failed", "max_duration", {"code": "MaxDuration", "message": f"the run reached its maximum duration of {seconds:g} s"}
    if reason == "retention":
        return "failed", "retention", {"code": "SandboxRetired", "message": "its sandbox was paused or lost for longer than the retention"}
    return "canceled", reason or "sandbox_killed", {"code": "SandboxKilled", "message": f"its sandbox {sandbox['sandbox_id']} was killed"}


def sandbox_ended(ctx: Any, sandbox: Any, reason: str | None) -> None:
    """The sandbox was just killed: end its run, if it has one that has not ended."""
    if not str(sandbox["owner"]).startswith(OWNER_PREFIX):
        return
    run = ctx.db.query(SandboxRun).with_index("by_sandbox_id", lambda q: q.eq("sandbox_id", sandbox["sandbox_id"])).first()
    if run is None or run["status"] in RUN_TERMINAL:
        return
    status, why, error = _outcome(sandbox, reason, run, float(ctx.now))
    end_run(ctx, run, status, why, error, sandbox)


def sandbox_recorded(ctx: Any, sandbox: Any) -> Any:
    """A sandbox made for a run was just recorded: the run knows it from now on, even if the action
    that asked for it dies before saying so (the boot reaper then kills it with the run); a run that
    ended meanwhile (canceled while booting) has its sandbox killed at once. Returns the sandbox."""
    run_id = sandbox["metadata"].get(RUN_METADATA)
    if not run_id or not str(sandbox["owner"]).startswith(OWNER_PREFIX):
        return sandbox
    normalized = ctx.db.normalize_id(SandboxRun, run_id)
    run = None if normalized is None else ctx.db.get(normalized)
    if run is None or workspace_owner(run["workspace_id"]) != sandbox["owner"]:
        return sandbox
    if run["status"] in RUN_TERMINAL:
        return sandbox_transition(ctx, sandbox, "killed", reason="run_ended")
    if run["sandbox_id"] is None:
        ctx.db.patch(run["_id"], {"sandbox_id": sandbox["sandbox_id"]})
    return sandbox


def run_end_cap(ctx: Any, sandbox: Any) -> float | None:
    """The latest a run's sandbox may end: its run's maximum duration (its deadline while running),
    so that extending the sandbox (E2B's connect or set_timeout) never outlives the run's limit; None
    for a sandbox of no live run."""
    if not str(sandbox["owner"]).startswith(OWNER_PREFIX) or not sandbox["metadata"].get(RUN_METADATA):
        return None
    run = ctx.db.query(SandboxRun).with_index("by_sandbox_id", lambda q: q.eq("sandbox_id", sandbox["sandbox_id"])).first()
    if run is None or run["status"] != "running":
        return None
    return float(run["deadline"])
