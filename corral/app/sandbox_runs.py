"""Sandbox runs: a thread's work in a sandbox of its workspace. Found as `corral/sandbox_runs:<name>`.

A run goes booting → running → succeeded | failed | canceled (lib/state_machines.py). Its limits
are its sandbox's: its maximum duration is the sandbox's end_at and its idle timeout the sandbox's
idle policy, so the sandbox crons act and the run ends with its sandbox (lib/run_ends.py). The
reapers (reapers.py) end runs stuck booting. Times are ms.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le, MaxLen, MinLen

from corral import (
    ActionCtx,
    ConvexError,
    Id,
    MutationCtx,
    QueryCtx,
    action,
    internal_mutation,
    internal_query,
    mutation,
    query,
)
from corral.engine.runtime import NewSandbox

from .lib import audit_log, authz
from .lib.costs import month_of, run_cost
from .lib.run_ends import RUN_METADATA, end_run, workspace_owner
from .lib.run_limits import policy
from .lib.state_machines import RUN_TERMINAL, run_transition, sandbox_transition
from .schema import (
    Artifact,
    RunError,
    RunKind,
    RunStatus,
    Sandbox,
    SandboxRun,
    Thread,
    Workspace,
    WorkspaceApiKey,
    WorkspaceUsage,
)

DurationMs = Annotated[float, Ge(1000), Le(30 * 86_400_000)]
Template = Annotated[str, MinLen(1), MaxLen(100)]
REMOVE_BATCH = 100  # runs or artifacts one remove_batch transaction deletes


def _sandbox(ctx: Any, sandbox_id: str | None) -> Any:
    if not sandbox_id:
        return None
    return ctx.db.query(Sandbox).with_index("by_sandbox_id", lambda q: q.eq("sandbox_id", sandbox_id)).first()


def view(ctx: Any, run: Any, pol: Any = None) -> dict[str, Any]:
    """A run as clients see it: its cost up to now while it lasts, and its sandbox's live state
    (`pol`: the run policy, when the caller already read it for a page of runs)."""
    out = dict(run)
    sandbox = _sandbox(ctx, run["sandbox_id"])
    if run["status"] not in RUN_TERMINAL:
        out["cost"] = run_cost(pol or policy(ctx), run, sandbox, float(ctx.now))
    out["sandbox"] = None if sandbox is None else {k: sandbox[k] for k in (
        "sandbox_id", "state", "end_at", "last_activity", "idle_at", "started_at", "ended_at", "paused_reason")}
    return out


def month_usage(ctx: Any, workspace_id: Any, month: str) -> float:
    """USD the workspace's runs have used this month: settled ones, and those still going so far."""
    settled = ctx.db.query(WorkspaceUsage).with_index(
        "by_workspace_month", lambda q: q.eq("workspace_id", workspace_id).eq("month", month)).first()
    total = 0.0 if settled is None else float(settled["usd"])
    pol = policy(ctx)
    for status in ("booting", "running"):
        for run in ctx.db.query(SandboxRun).with_index(
                "by_workspace_status", lambda q, s=status: q.eq("workspace_id", workspace_id).eq("status", s)):
            total += run_cost(pol, run, _sandbox(ctx, run["sandbox_id"]), float(ctx.now))["usd"]
    return total


# -- for members --------------------------------------------------------------------------------

@mutation
def create(ctx: MutationCtx, workspace_id: Id[Workspace], thread_id: Id[Thread], max_duration_ms: DurationMs | None = None,
           idle_timeout_ms: DurationMs | None = None, kind: RunKind = "job", template: Template = "base") -> Id[SandboxRun]:
    """A run in state `booting` (members); `start` is what also gives it its sandbox."""
    member = authz.require_member(ctx, workspace_id)
    thread = ctx.db.get(thread_id)
    if thread is None or thread["workspace_id"] != workspace_id:
        raise authz.not_found("thread")
    workspace: Any = ctx.db.get(workspace_id)
    now = float(ctx.now)
    budget = workspace.get("monthly_budget_usd")
    if budget is not None:
        used = month_usage(ctx, workspace_id, month_of(now))
        if used >= budget:
            raise ConvexError({"code": "BudgetExceeded", "message": f"workspace '{workspace['name']}' has used "
                               f"${used:.4f} of its monthly budget of ${budget:.2f}: an owner can raise the budget, "
                               "or wait for next month"})
    pol = policy(ctx)
    max_ms, idle_ms = pol.limits(kind, max_duration_ms, idle_timeout_ms)
    run_id: Id[SandboxRun] = ctx.db.insert(SandboxRun(
        workspace_id=workspace_id, thread_id=thread_id, kind=kind, status="booting", template=template, sandbox_id=None,
        error=None, history=[{"status": "booting", "at": now, "reason": "created"}], max_duration_ms=max_ms,
        idle_timeout_ms=idle_ms, deadline=now + pol.boot_timeout, cpu_count=int(pol.cpu_count),
        memory_mb=int(pol.memory_mb), created_by=member.user_id, started_at=None, ended_at=None, month=month_of(now),
        cost={"running_ms": 0.0, "paused_ms": 0.0, "usd": 0.0}))
    return run_id


@query
def get(ctx: QueryCtx, sandbox_run_id: Id[SandboxRun]) -> dict[str, Any] | None:
    run = authz.readable(ctx, ctx.db.get(sandbox_run_id))
    return None if run is None else view(ctx, run)


@query
def list_by_workspace(ctx: QueryCtx, workspace_id: Id[Workspace], paginationOpts: dict[str, Any],  # noqa: N803 - Convex's name
                      status: RunStatus | None = None) -> dict[str, Any]:
    authz.require_member(ctx, workspace_id)
    if status is None:
        q = ctx.db.query(SandboxRun).with_index("by_workspace", lambda q: q.eq("workspace_id", workspace_id))
    else:
        q = ctx.db.query(SandboxRun).with_index("by_workspace_status",
                                                lambda q: q.eq("workspace_id", workspace_id).eq("status", status))
    result = q.order("desc").paginate(paginationOpts)
    pol = policy(ctx)
    result["page"] = [view(ctx, r, pol) for r in result["page"]]
    return result


@query
def list_by_thread(ctx: QueryCtx, thread_id: Id[Thread], paginationOpts: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
    thread = ctx.db.get(thread_id)
    if thread is None or authz.membership(ctx, thread["workspace_id"]) is None:
        raise authz.not_found("thread")
    result = ctx.db.query(SandboxRun).with_index("by_thread", lambda q: q.eq("thread_id", thread_id)).order("desc").paginate(paginationOpts)
    pol = policy(ctx)
    result["page"] = [view(ctx, r, pol) for r in result["page"]]
    return result


@mutation
def cancel(ctx: MutationCtx, sandbox_run_id: Id[SandboxRun]) -> dict[str, Any]:
    """Cancel a run that has not ended (members); its sandbox is killed in the same transaction."""
    run = authz.require_doc(ctx, sandbox_run_id, "sandbox run")
    if run["status"] in RUN_TERMINAL:
        raise ConvexError({"code": "InvalidTransition",
                           "message": f"sandbox run {run['_id']} is {run['status']} and cannot become canceled"})
    user = authz.require_caller(ctx)
    sandbox = _sandbox(ctx, run["sandbox_id"])
    new = end_run(ctx, run, "canceled", f"canceled by {user}", {"code": "Canceled", "message": "canceled by a member"}, sandbox)
    if sandbox is not None and sandbox["state"] != "killed":
        sandbox_transition(ctx, sandbox, "killed", reason="canceled")
    audit_log.record(ctx, run["workspace_id"], "run.cancel", str(run["_id"]), {"status": run["status"]}, {"status": "canceled"})
    return view(ctx, new)


@mutation
def finish(ctx: MutationCtx, sandbox_run_id: Id[SandboxRun], status: Literal["succeeded", "failed"],
           message: Annotated[str, MinLen(1), MaxLen(500)] | None = None) -> dict[str, Any]:
    """End a running run as its work came out (members): `succeeded`, or `failed` with why; its
    sandbox is killed and its cost settled in the same transaction."""
    run = authz.require_doc(ctx, sandbox_run_id, "sandbox run")
    user = authz.require_caller(ctx)
    if run["status"] != "running":
        raise ConvexError({"code": "InvalidTransition",
                           "message": f"sandbox run {run['_id']} is {run['status']} and cannot become {status}: "
                           "only a running run finishes"})
    error = None if status == "succeeded" else {"code": "RunFailed", "message": message or f"marked failed by {user}"}
    reason = f"{status} by {user}" + (f": {message}" if message else "")
    sandbox = _sandbox(ctx, run["sandbox_id"])
    new = end_run(ctx, run, status, reason, error, sandbox)
    if sandbox is not None and sandbox["state"] != "killed":
        sandbox_transition(ctx, sandbox, "killed", reason="finished")
    audit_log.record(ctx, run["workspace_id"], "run.finish", str(run["_id"]), {"status": run["status"]},
                     {"status": status, "message": message})
    return view(ctx, new)


@query
def usage(ctx: QueryCtx, workspace_id: Id[Workspace], month: Annotated[str, MinLen(7), MaxLen(7)] | None = None) -> dict[str, Any]:
    """The workspace's run costs for a month (default this one), settled and so far, against its budget."""
    authz.require_member(ctx, workspace_id)
    month = month or month_of(float(ctx.now))
    settled = ctx.db.query(WorkspaceUsage).with_index(
        "by_workspace_month", lambda q: q.eq("workspace_id", workspace_id).eq("month", month)).first()
    workspace: Any = ctx.db.get(workspace_id)
    return {"month": month, "runs": 0 if settled is None else settled["runs"],
            "running_ms": 0.0 if settled is None else settled["running_ms"],
            "paused_ms": 0.0 if settled is None else settled["paused_ms"],
            "settled_usd": 0.0 if settled is None else settled["usd"],
            "usd": month_usage(ctx, workspace_id, month) if month == month_of(float(ctx.now)) else (settled or {}).get("usd", 0.0),
            "monthly_budget_usd": workspace.get("monthly_budget_usd")}


@action
async def start(ctx: ActionCtx, workspace_id: Id[Workspace], thread_id: Id[Thread], template: Template = "base",
                max_duration_ms: DurationMs | None = None, idle_timeout_ms: DurationMs | None = None,
                kind: RunKind = "job") -> Id[SandboxRun]:
    """Create a run and its sandbox: booting, then running with its sandbox id; on failure the run is
    failed with {code, message} and a half-created sandbox removed."""
    run_id: Id[SandboxRun] = await ctx.run_mutation("corral/sandbox_runs:create", {
        "workspace_id": workspace_id, "thread_id": thread_id, "template": template, "kind": kind,
        "max_duration_ms": max_duration_ms, "idle_timeout_ms": idle_timeout_ms})
    run = await ctx.run_query("corral/sandbox_runs:lookup", {"sandbox_run_id": run_id})
    owner = workspace_owner(workspace_id)
    sandbox_id: str | None = None
    try:
        made = await ctx.sandboxes.create(owner, NewSandbox(
            template=template, timeout=run["max_duration_ms"] / 1000.0, idle_timeout=run["idle_timeout_ms"] / 1000.0,
            on_idle="kill", metadata={RUN_METADATA: str(run_id), "corral_workspace": str(workspace_id)}))
        sandbox_id = str(made["sandbox_id"])
        await ctx.run_mutation("corral/sandbox_runs:update", {"sandbox_run_id": run_id, "status": "running",
                                                              "sandbox_id": sandbox_id, "reason": "sandbox started"})
    except ConvexError as exc:
        data = exc.data if isinstance(exc.data, dict) else {"message": str(exc.data)}
        error = {"code": str(data.get("code", "SandboxError")), "message": str(data.get("message", exc.message))}
        if sandbox_id is not None:
            await ctx.sandboxes.kill(owner, sandbox_id)
        with contextlib.suppress(ConvexError):  # it had ended meanwhile (canceled while booting): it keeps that end
            await ctx.run_mutation("corral/sandbox_runs:update", {"sandbox_run_id": run_id, "status": "failed",
                                                                  "error": error, "reason": "its sandbox did not start"})
        raise ConvexError({**error, "sandbox_run_id": str(run_id)}) from None
    return run_id


# -- Corral's own: actions and crons ----------------------------------------------------------------

@internal_mutation
def configure(ctx: MutationCtx, values: dict[str, float]) -> None:
    """Write the run policy (lib/run_limits.py) from the node's Settings; each node does at start."""
    from .schema import RunPolicy

    doc = ctx.db.query(RunPolicy).first()
    if doc is None:
        ctx.db.insert(RunPolicy(limits=values))
    elif doc["limits"] != values:
        ctx.db.patch(doc["_id"], {"limits": values})


@internal_query
def lookup(ctx: QueryCtx, sandbox_run_id: Id[SandboxRun]) -> SandboxRun | None:
    run: SandboxRun | None = ctx.db.get(sandbox_run_id)
    return run


@internal_mutation
def update(ctx: MutationCtx, sandbox_run_id: Id[SandboxRun], status: RunStatus | None = None, sandbox_id: str | None = None,
           error: RunError | None = None, reason: Annotated[str, MaxLen(500)] = "updated") -> dict[str, Any]:
    """Move a run (checked against its state machine) and record its sandbox or error."""
    run: Any = ctx.db.get(sandbox_run_id)
    if run is None:
        raise ConvexError({"code": "NotFound", "message": f"no sandbox run {sandbox_run_id}"})
    changes: dict[str, Any] = {}
    if sandbox_id is not None:
        changes["sandbox_id"] = sandbox_id
    if status is None or status == run["status"]:
        if changes:
            ctx.db.patch(run["_id"], changes)
        updated: Any = ctx.db.get(run["_id"])
        return updated
    if status in RUN_TERMINAL:
        if changes:
            ctx.db.patch(run["_id"], changes)
            run = ctx.db.get(run["_id"])
        return end_run(ctx, run, status, reason, None if error is None else {"code": error["code"], "message": error["message"]})
    if status == "running":
        sandbox = _sandbox(ctx, sandbox_id or run["sandbox_id"])
        changes.update(started_at=float(ctx.now),
                       deadline=(sandbox["end_at"] if sandbox is not None else float(ctx.now) + run["max_duration_ms"]))
    return run_transition(ctx, run, status, reason, error=error, **changes)


@internal_mutation
def remove_batch(ctx: MutationCtx, workspace_id: Id[Workspace]) -> bool:
    """Delete up to REMOVE_BATCH of a workspace's artifacts (and their stored files), then of its runs
    (ending those still going, killing their sandboxes), then kill its other sandboxes; True when none is left."""
    artifacts = ctx.db.query(Artifact).with_index("by_workspace_review", lambda q: q.eq("workspace_id", workspace_id)).take(REMOVE_BATCH)
    for artifact in artifacts:
        ctx.storage.delete(artifact["storage_id"])
        ctx.db.delete(artifact["_id"])
    if artifacts:
        return False
    runs = ctx.db.query(SandboxRun).with_index("by_workspace", lambda q: q.eq("workspace_id", workspace_id)).take(REMOVE_BATCH)
    for run in runs:
        sandbox = _sandbox(ctx, run["sandbox_id"])
        if sandbox is not None and sandbox["state"] != "killed":
            sandbox_transition(ctx, sandbox, "killed", reason="workspace_removed")
        ctx.db.delete(run["_id"])
    if runs:
        return False
    owner = workspace_owner(workspace_id)
    left = 0
    for state in ("running", "paused", "lost"):
        for sandbox in ctx.db.query(Sandbox).with_index(
                "by_owner_state", lambda q, s=state: q.eq("owner", owner).eq("state", s)).take(REMOVE_BATCH):  # type: ignore[misc]
            sandbox_transition(ctx, sandbox, "killed", reason="workspace_removed")
            left += 1
    for key in ctx.db.query(WorkspaceApiKey).with_index("by_workspace", lambda q: q.eq("workspace_id", workspace_id)).take(REMOVE_BATCH):
        ctx.db.delete(key["_id"])
        left += 1
    for usage_doc in ctx.db.query(WorkspaceUsage).with_index("by_workspace_month", lambda q: q.eq("workspace_id", workspace_id)).take(REMOVE_BATCH):
        ctx.db.delete(usage_doc["_id"])
        left += 1
    return left == 0

