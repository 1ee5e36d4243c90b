"""Sandboxes: every sandbox's lifecycle, live-queryable. Found as `sandboxes:<name>`.

The engine decides (create, pause, resume, kill, timeouts, idleness) by writing `state` and bumping
`generation`; the runner hosting a sandbox follows through its `runners:work` subscription, and
the node's fleet also calls the runner directly when a client asked, for latency. Times are ms.
"""

from __future__ import annotations

import builtins
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le, MaxLen, MinLen

from corral import (
    ConvexError,
    MutationCtx,
    QueryCtx,
    internal_mutation,
    internal_query,
    mutation,
    query,
)

from .lib import authz
from .lib.run_ends import run_end_cap, sandbox_recorded
from .lib.sandbox_policy import policy
from .lib.state_machines import sandbox_transition
from .schema import Runner, Sandbox, SandboxLimits, SandboxPolicy, SandboxState, Workspace

SandboxId = Annotated[str, MinLen(1), MaxLen(64)]
BATCH = 200  # sandboxes a lifecycle cron acts on per run; the next run takes the rest
PRIVATE_FIELDS = ("access_token",)


def public_view(doc: Any) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in PRIVATE_FIELDS}


def find(ctx: Any, sandbox_id: str) -> Any:
    return ctx.db.query(Sandbox).with_index("by_sandbox_id", lambda q: q.eq("sandbox_id", sandbox_id)).first()


def _caller_owner(ctx: Any) -> str | None:
    identity = ctx.auth.get_user_identity()
    return None if identity is None else str(identity["tokenIdentifier"])


def _owned(ctx: Any, sandbox_id: str) -> Any:
    """The caller's sandbox, or None: another owner's sandbox does not exist for the caller.

    A workspace's sandbox (owner `workspace|<id>`) is every member's."""
    owner = _caller_owner(ctx)
    doc = find(ctx, sandbox_id)
    if owner is None or doc is None:
        return None
    if doc["owner"] != owner and not _member_of_owner(ctx, doc["owner"]):
        return None
    return doc


def _member_of_owner(ctx: Any, owner: str) -> bool:
    prefix, _, workspace_id = owner.partition("|")
    if prefix != "workspace":
        return False
    workspace = ctx.db.normalize_id(Workspace, workspace_id)
    return workspace is not None and authz.membership(ctx, workspace) is not None


def activity(doc: Any, at: float) -> dict[str, Any]:
    """The fields that record activity at `at`: its idle clock starts again."""
    fields: dict[str, Any] = {"last_activity": at}
    if doc.get("idle_timeout") is not None:
        fields["idle_at"] = at + doc["idle_timeout"]
    return fields


def _in_state(ctx: QueryCtx, state: str, owner: str | None = None) -> Any:
    """A query over every sandbox in `state`, or over one owner's."""
    if owner is None:
        return ctx.db.query(Sandbox).with_index("by_state_activity", lambda q: q.eq("state", state))
    return ctx.db.query(Sandbox).with_index("by_owner_state", lambda q: q.eq("owner", owner).eq("state", state))


def _require(ctx: Any, sandbox_id: str) -> Any:
    doc = find(ctx, sandbox_id)
    if doc is None:
        raise ConvexError({"code": "SandboxNotFound", "message": f"sandbox {sandbox_id} was not found"})
    return doc


# -- for clients: the caller's own sandboxes ---------------------------------------------------

@query
def get(ctx: QueryCtx, sandbox_id: SandboxId) -> dict[str, Any] | None:
    doc = _owned(ctx, sandbox_id)
    return None if doc is None else public_view(doc)


@mutation
def touch(ctx: MutationCtx, sandbox_id: SandboxId) -> None:
    """Record activity on one of the caller's sandboxes: its idle clock starts again."""
    doc = _owned(ctx, sandbox_id)
    if doc is None:
        raise ConvexError({"code": "SandboxNotFound", "message": f"sandbox {sandbox_id} was not found"})
    if doc["state"] in ("running", "paused"):
        ctx.db.patch(doc["_id"], activity(doc, float(ctx.now)))


# -- for the node's fleet ----------------------------------------------------------------------

@internal_query
def lookup(ctx: QueryCtx, sandbox_id: SandboxId) -> Sandbox | None:
    doc: Sandbox | None = find(ctx, sandbox_id)
    return doc


@internal_query
def route(ctx: QueryCtx, sandbox_id: SandboxId) -> dict[str, Any] | None:
    """A sandbox and the runner hosting it, read together for data-plane routing."""
    doc = find(ctx, sandbox_id)
    if doc is None:
        return None
    runner = ctx.db.query(Runner).with_index("by_name", lambda q: q.eq("name", doc["runner"])).first()
    return {"sandbox": doc, "runner": runner}


@internal_query
def access_tokens(ctx: QueryCtx) -> builtins.list[builtins.list[str]]:
    """[sandbox id, envd access token] of every running or paused sandbox that has a token: what
    a signed file URL (which names no sandbox) is checked against, on any node, after any restart."""
    found: builtins.list[builtins.list[str]] = []
    for state in ("running", "paused"):
        for doc in _in_state(ctx, state):
            if doc["access_token"]:
                found.append([doc["sandbox_id"], doc["access_token"]])
    return found


@internal_query
def page(ctx: QueryCtx, owner: str, states: builtins.list[SandboxState], limit: Annotated[int, Ge(1), Le(1000)],
         order: Literal["asc", "desc"] = "desc", metadata: dict[str, str] | None = None,
         cursor: str | None = None, started_after: float | None = None, template: str | None = None) -> dict[str, Any]:
    """One page of an owner's sandboxes by start time; `cursor` is the previous page's `next`."""
    after: tuple[float, str] | None = None
    if cursor:
        at, _, sid = cursor.partition(":")
        try:
            after = (float(at), sid)
        except ValueError:
            raise ConvexError({"code": "InvalidCursor", "message": "the pagination token is not one this node issued"}) from None
    desc = order == "desc"

    def wanted(doc: Any) -> bool:
        if template is not None and doc["template"] != template:
            return False
        if started_after is not None and doc["started_at"] <= started_after:
            return False
        if after is not None:
            key = (doc["started_at"], doc["sandbox_id"])
            if (key >= after) if desc else (key <= after):
                return False
        return all(doc["metadata"].get(k) == v for k, v in (metadata or {}).items())

    found: builtins.list[Any] = []
    for state in dict.fromkeys(states):
        def rng(q: Any, s: str = state) -> Any:
            q = q.eq("owner", owner).eq("state", s)
            if after is not None:
                return q.lte("started_at", after[0]) if desc else q.gte("started_at", after[0])
            return q

        taken = 0
        for doc in ctx.db.query(Sandbox).with_index("by_owner_state", rng).order(order):
            if wanted(doc):
                found.append(doc)
                taken += 1
                if taken > limit:
                    break
    found.sort(key=lambda d: (d["started_at"], d["sandbox_id"]), reverse=desc)
    more = len(found) > limit
    found = found[:limit]
    last = found[-1] if found else None
    return {"sandboxes": found, "next": f"{last['started_at']!r}:{last['sandbox_id']}" if more and last else None}


@internal_mutation
def record(ctx: MutationCtx, sandbox_id: SandboxId, owner: str, template: str, runner: str, end_at: float, timeout: float,
           on_timeout: Literal["kill", "pause"], auto_resume: bool, metadata: dict[str, str], limits: SandboxLimits,
           allow_internet: bool, access_token: str, started_at: float, idle_timeout: float | None = None,
           on_idle: Literal["pause", "kill"] = "pause") -> Sandbox:
    """A sandbox its runner has just booted; `idle_timeout` (ms) gives it an idle policy of its own."""
    if find(ctx, sandbox_id) is not None:
        raise ConvexError({"code": "SandboxExists", "message": f"sandbox {sandbox_id} already exists"})
    now = float(ctx.now)
    doc = Sandbox(sandbox_id=sandbox_id, owner=owner, template=template, runner=runner, state="running", generation=1,
                  live=True, state_since=now, end_at=end_at, timeout=timeout, on_timeout=on_timeout, auto_resume=auto_resume,
                  last_activity=now, metadata=metadata, limits=limits, allow_internet=allow_internet,
                  access_token=access_token, started_at=started_at, paused_at=None, ended_at=None, memory_kept=True,
                  idle_timeout=idle_timeout, on_idle=on_idle, idle_at=None if idle_timeout is None else now + idle_timeout)
    doc_id = ctx.db.insert(doc)
    stored: Sandbox | None = ctx.db.get(doc_id)
    assert stored is not None
    return Sandbox(sandbox_recorded(ctx, stored))


@internal_mutation
def transition(ctx: MutationCtx, sandbox_id: SandboxId, to: SandboxState, expect: builtins.list[SandboxState] | None = None,
               end_at: float | None = None, timeout: float | None = None,
               paused_reason: Literal["request", "timeout", "idle"] | None = None) -> Sandbox:
    """Move a sandbox to `to` when it is in one of `expect` (any state when None); SandboxStateError otherwise."""
    doc = _require(ctx, sandbox_id)
    if expect is not None and doc["state"] not in expect:
        raise ConvexError({"code": "SandboxStateError", "message": f"sandbox {sandbox_id} is {doc['state']}",
                           "state": doc["state"]})
    changes: dict[str, Any] = {}
    if end_at is not None:
        cap = run_end_cap(ctx, doc)  # a resumed run's sandbox still ends with its run
        changes["end_at"] = end_at if cap is None else min(end_at, max(cap, doc["end_at"]))
    if timeout is not None:
        changes["timeout"] = timeout
    if paused_reason is not None:
        changes["paused_reason"] = paused_reason
    if to == "running" and doc["state"] != "running":
        changes.update(activity(doc, float(ctx.now)))
    new: Sandbox = Sandbox(sandbox_transition(ctx, doc, to, **changes))
    return new


@internal_mutation
def set_end(ctx: MutationCtx, sandbox_id: SandboxId, end_at: float, timeout: float, extend_only: bool = False) -> Sandbox:
    """Move when on_timeout acts; `extend_only` never brings it closer (E2B's connect). A run's sandbox
    never ends later than its run's maximum duration: the run's limit is its sandbox's timer."""
    doc = _require(ctx, sandbox_id)
    if doc["state"] == "killed":
        raise ConvexError({"code": "SandboxNotFound", "message": f"sandbox {sandbox_id} was not found"})
    cap = run_end_cap(ctx, doc)
    if cap is not None and end_at > cap:
        end_at = max(cap, doc["end_at"])
    if not (extend_only and end_at <= doc["end_at"]):
        ctx.db.patch(doc["_id"], {"end_at": end_at, "timeout": timeout})
        doc = ctx.db.get(doc["_id"])
    result: Sandbox = doc
    return result


@internal_mutation
def record_activity(ctx: MutationCtx, sandbox_ids: builtins.list[str], at: float) -> None:
    """Activity the fleet saw on the data plane, batched (commands, files, PTY input)."""
    for sandbox_id in sandbox_ids:
        doc = find(ctx, sandbox_id)
        if doc is not None and doc["state"] in ("running", "paused") and doc["last_activity"] < at:
            ctx.db.patch(doc["_id"], activity(doc, at))


@internal_mutation
def configure(ctx: MutationCtx, idle_timeout: float, retention: float, runner_lease: float) -> None:
    """Write the lifecycle durations (ms) the crons follow; each node does at start."""
    values = {"idle_timeout": idle_timeout, "retention": retention, "runner_lease": runner_lease}
    doc = ctx.db.query(SandboxPolicy).first()
    if doc is None:
        ctx.db.insert(SandboxPolicy(**values))
    elif any(doc[k] != v for k, v in values.items()):
        ctx.db.patch(doc["_id"], values)


# -- for the admin (`corral sandbox list`, `corral sandbox kill`, `corral api-key revoke`) -----------------

@internal_query
def admin_list(ctx: QueryCtx, states: builtins.list[SandboxState] | None = None, owner: str | None = None) -> builtins.list[dict[str, Any]]:
    """Every owner's sandboxes in `states` (default running and paused), newest first; `owner` narrows to one."""
    found: builtins.list[Any] = []
    for state in dict.fromkeys(states or ["running", "paused"]):
        found += _in_state(ctx, state, owner).collect()
    found.sort(key=lambda d: (d["started_at"], d["sandbox_id"]), reverse=True)
    return [public_view(d) for d in found]


@internal_mutation
def admin_kill(ctx: MutationCtx, sandbox_id: SandboxId) -> dict[str, Any]:
    """Kill any owner's sandbox; its runner follows through `runners:work` (a lost runner when it is back)."""
    doc = _require(ctx, sandbox_id)
    if doc["state"] == "killed":
        raise ConvexError({"code": "SandboxStateError", "message": f"sandbox {sandbox_id} is already killed"})
    return public_view(sandbox_transition(ctx, doc, "killed"))


# -- crons (corral/app/crons.py) -----------------------------------------------------------------

@internal_mutation
def expire(ctx: MutationCtx) -> int:
    """Sandboxes whose end_at has passed, running or paused for idleness: kill or pause each, as its
    on_timeout says (an idle pause becomes a timeout pause, which traffic no longer resumes)."""
    now = float(ctx.now)
    due = ctx.db.query(Sandbox).with_index("by_state_reason_end_at",
                                           lambda q: q.eq("state", "running").eq("paused_reason", None).lte("end_at", now)).take(BATCH)
    due += ctx.db.query(Sandbox).with_index("by_state_reason_end_at",
                                            lambda q: q.eq("state", "paused").eq("paused_reason", "idle").lte("end_at", now)).take(BATCH)
    for doc in due:
        if doc["on_timeout"] == "kill":
            sandbox_transition(ctx, doc, "killed", reason="max_duration")
        elif doc["state"] == "paused":
            ctx.db.patch(doc["_id"], {"paused_reason": "timeout"})
        else:
            sandbox_transition(ctx, doc, "paused", paused_reason="timeout")
    return len(due)


@internal_mutation
def pause_idle(ctx: MutationCtx) -> int:
    """Running sandboxes with no activity for their idle timeout: those with an idle policy of their
    own (a run's) get its on_idle (kill ends their run); the others pause for the node's
    sandbox_idle_timeout, and traffic resumes them."""
    now = float(ctx.now)
    own = ctx.db.query(Sandbox).with_index("by_state_idle_at",
                                           lambda q: q.eq("state", "running").gte("idle_at", 0.0).lte("idle_at", now)).take(BATCH)
    for doc in own:
        if doc["on_idle"] == "kill":
            sandbox_transition(ctx, doc, "killed", reason="idle")
        else:
            sandbox_transition(ctx, doc, "paused", paused_reason="idle")
    idle = policy(ctx).idle_timeout
    if idle <= 0:
        return len(own)
    horizon = now - idle
    due = ctx.db.query(Sandbox).with_index("by_state_idle_at",
                                           lambda q: q.eq("state", "running").eq("idle_at", None).lte("last_activity", horizon)).take(BATCH)
    for doc in due:
        sandbox_transition(ctx, doc, "paused", paused_reason="idle")
    return len(own) + len(due)


@internal_mutation
def clean_retained(ctx: MutationCtx) -> int:
    """Kill sandboxes paused or lost for longer than the retention; forget killed ones as old."""
    horizon = float(ctx.now) - policy(ctx).retention
    acted = 0
    for state in ("paused", "lost"):
        def retained(q: Any, s: str = state) -> Any:
            return q.eq("state", s).lte("state_since", horizon)

        for doc in ctx.db.query(Sandbox).with_index("by_state_since", retained).take(BATCH):
            sandbox_transition(ctx, doc, "killed", reason="retention")
            acted += 1
    for doc in ctx.db.query(Sandbox).with_index("by_state_since",
                                                lambda q: q.eq("state", "killed").lte("state_since", horizon)).take(BATCH):
        ctx.db.delete(doc["_id"])  # a runner still holding it kills it when it reconciles
        acted += 1
    return acted


CONSOLE_FIELDS = ("sandbox_id", "state", "template", "runner", "owner", "started_at", "end_at", "last_activity",
                  "paused_reason", "on_timeout", "ended_at")


@internal_query
def overview(ctx: QueryCtx, limit: Annotated[int, Ge(1), Le(1000)] = 200, killed_shown: Annotated[int, Ge(0), Le(1000)] = 20,
             killed_counted: Annotated[int, Ge(1), Le(100_000)] = 10_000) -> dict[str, Any]:
    """Every owner's sandboxes for the operator's console, without tokens or limits: running, then
    paused, then lost, newest first (`limit` of them); killed ones counted (up to `killed_counted`)
    and the latest `killed_shown` of them."""
    active: builtins.list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for state in ("running", "paused", "lost"):
        docs = _in_state(ctx, state).collect()
        counts[state] = len(docs)
        docs.sort(key=lambda d: (d["started_at"], d["sandbox_id"]), reverse=True)
        active += [{k: d.get(k) for k in CONSOLE_FIELDS} for d in docs]
    killed: builtins.list[dict[str, Any]] = []
    counts["killed"] = 0
    for doc in ctx.db.query(Sandbox).with_index("by_state_since", lambda q: q.eq("state", "killed")).order("desc"):
        if counts["killed"] < killed_shown:
            killed.append({k: doc.get(k) for k in CONSOLE_FIELDS})
        counts["killed"] += 1
        if counts["killed"] >= killed_counted:
            break
    return {"sandboxes": active[:limit], "killed": killed, "counts": counts,
            "more": max(0, len(active) - limit), "killed_capped": counts["killed"] >= killed_counted}


# `list` (Convex's idiom) shadows the builtin in this module: annotations say `builtins.list`.
@query
def list(ctx: QueryCtx, states: builtins.list[SandboxState] | None = None) -> builtins.list[dict[str, Any]]:
    """The caller's sandboxes in `states` (default running and paused), newest first."""
    owner = _caller_owner(ctx)
    if owner is None:
        return []
    found: builtins.list[Any] = []
    for state in dict.fromkeys(states or ["running", "paused"]):
        found += _in_state(ctx, state, owner).collect()
    found.sort(key=lambda d: (d["started_at"], d["sandbox_id"]), reverse=True)
    return [public_view(d) for d in found]
