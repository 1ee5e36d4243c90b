"""Runners: where sandboxes run. Found as `runners:<name>`.

A runner (the node's embedded one, or `corral runner` on another host) calls the public
functions here with a runner key, and only a runner key may: it registers its capacity and
labels, heartbeats to renew its lease, subscribes to `runners:work` (the desired state of the
sandboxes it hosts) and reports what it did. The internal functions serve the node's fleet
(placement, routing) and the lease cron. Times are ms.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from annotated_types import Ge, MaxLen, MinLen

from corral import (
    ConvexError,
    MutationCtx,
    QueryCtx,
    for_runners,
    internal_mutation,
    internal_query,
    mutation,
    query,
)

from .lib.authz import require_runner_key
from .lib.sandbox_policy import policy
from .lib.state_machines import sandbox_transition
from .sandboxes import find
from .schema import Runner, Sandbox

RunnerName = Annotated[str, MinLen(1), MaxLen(100)]


class Held(TypedDict):
    """A sandbox a runner's provider holds, as the runner reports it."""

    sandbox_id: str
    state: Literal["running", "paused"]
    memory_kept: bool


class Work(TypedDict):
    """What a runner must make true of one of its sandboxes."""

    sandbox_id: str
    state: Literal["running", "paused", "killed", "lost"]
    generation: int


def _by_name(ctx: Any, name: str) -> Any:
    return ctx.db.query(Runner).with_index("by_name", lambda q: q.eq("name", name)).first()


def _own(ctx: Any, name: str) -> Any:
    """The calling runner's document; refuses a caller that is not the runner key that registered it."""
    key_id = require_runner_key(ctx)
    doc = _by_name(ctx, name)
    if doc is None:
        raise ConvexError({"code": "RunnerNotRegistered", "message": f"runner {name!r} is not registered; register it first"})
    if doc["key_id"] != key_id:
        raise ConvexError({"code": "Forbidden", "message": f"runner {name!r} was registered with another runner key"})
    return doc


def _up(ctx: Any) -> Any:
    """The runners that are up and whose lease has not run out."""
    horizon = float(ctx.now) - policy(ctx).runner_lease
    return ctx.db.query(Runner).with_index("by_state_heartbeat", lambda q: q.eq("state", "up").gte("last_heartbeat", horizon))


def _live(ctx: Any, name: str) -> list[Any]:
    return ctx.db.query(Sandbox).with_index("by_runner_live", lambda q: q.eq("runner", name).eq("live", True)).collect()


def public_view(doc: Any) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "secret"}


# -- for runners ----------------------------------------------------------------------------------

@for_runners
@mutation
def register(ctx: MutationCtx, name: RunnerName, url: Annotated[str, MaxLen(2000)], secret: Annotated[str, MinLen(16)],
             capacity: Annotated[int, Ge(0)], labels: list[str], templates: list[str] | None = None) -> dict[str, Any]:
    """A runner starting (or starting again): records where to reach it and the templates it has; its lease begins now."""
    key_id = require_runner_key(ctx)
    now = float(ctx.now)
    doc = _by_name(ctx, name)
    fields = {"key_id": key_id, "url": url, "secret": secret, "capacity": capacity, "labels": sorted(set(labels)),
              "templates": None if templates is None else sorted(set(templates)),
              "state": "up", "last_heartbeat": now, "registered_at": now}
    if doc is None:
        ctx.db.insert(Runner(name=name, **fields))
    elif doc["key_id"] != key_id:
        raise ConvexError({"code": "Forbidden", "message": f"a runner named {name!r} is registered with another runner "
                           "key; give this one another --name, or start it with that key"})
    else:
        ctx.db.patch(doc["_id"], fields)
    return {"lease": policy(ctx).runner_lease / 1000.0}


@for_runners
@mutation
def heartbeat(ctx: MutationCtx, name: RunnerName, templates: list[str] | None = None) -> dict[str, Any]:
    """Renew the lease, and update the templates the runner has (`corral template add` on its host).
    `reconcile` is true when the runner had been marked lost meanwhile."""
    doc = _own(ctx, name)
    if doc["state"] == "stopped":  # it left (or a heartbeat sent before its leave arrives late): only registering brings it back
        return {"register": True, "reconcile": False, "lease": policy(ctx).runner_lease / 1000.0}
    changes: dict[str, Any] = {"last_heartbeat": float(ctx.now), "state": "up"}
    if templates is not None:
        changes["templates"] = sorted(set(templates))
    ctx.db.patch(doc["_id"], changes)
    return {"reconcile": doc["state"] == "lost", "lease": policy(ctx).runner_lease / 1000.0}


@for_runners
@mutation
def leave(ctx: MutationCtx, name: RunnerName) -> None:
    """A runner stopping on purpose (`corral runner` on Ctrl+C or SIGTERM): it is stopped, not lost,
    and its sandboxes, which outlive it on its host, are lost until it registers again."""
    doc = _own(ctx, name)
    ctx.db.patch(doc["_id"], {"state": "stopped"})
    _lose_sandboxes(ctx, name)


@for_runners
@mutation
def reconcile(ctx: MutationCtx, name: RunnerName, held: list[Held]) -> list[str]:
    """A runner reports every sandbox it holds; returns the ids it must kill (unknown or killed).

    Sandboxes the engine had marked lost come back in the state the runner reports; sandboxes
    the engine believes on this runner but which it no longer holds are killed."""
    _own(ctx, name)
    reported = {h["sandbox_id"]: h for h in held}
    for doc in _live(ctx, name):
        report = reported.pop(doc["sandbox_id"], None)
        if doc["state"] == "killed":
            if report is None:
                ctx.db.patch(doc["_id"], {"live": False})
            else:
                reported[doc["sandbox_id"]] = report  # still to kill
            continue
        if report is None:
            sandbox_transition(ctx, doc, "killed", live=False)
            continue
        changes: dict[str, Any] = {}
        if not report["memory_kept"]:
            changes["memory_kept"] = False
        if doc["state"] == "lost":
            sandbox_transition(ctx, doc, report["state"], **changes)
        elif changes:
            ctx.db.patch(doc["_id"], changes)
    kill: list[str] = []
    for sandbox_id in reported:
        doc = find(ctx, sandbox_id)
        if doc is None or doc["runner"] != name or doc["state"] == "killed" or not doc["live"]:
            kill.append(sandbox_id)
    return kill


@for_runners
@query
def work(ctx: QueryCtx, name: RunnerName) -> list[Work]:
    """The desired state of every sandbox this runner still holds (subscribe to it)."""
    _own(ctx, name)
    return [Work(sandbox_id=d["sandbox_id"], state=d["state"], generation=d["generation"]) for d in _live(ctx, name)]


@for_runners
@mutation
def confirm(ctx: MutationCtx, name: RunnerName, sandbox_id: str, generation: int, memory_kept: bool | None = None) -> None:
    """The runner applied `generation` of a sandbox: a confirmed kill leaves its work list."""
    _own(ctx, name)
    doc = find(ctx, sandbox_id)
    if doc is None or doc["runner"] != name:
        return
    changes: dict[str, Any] = {}
    if doc["state"] == "killed" and generation >= doc["generation"]:
        changes["live"] = False
    if memory_kept is not None and memory_kept != doc["memory_kept"] and doc["state"] != "killed":
        changes["memory_kept"] = memory_kept
    if changes:
        ctx.db.patch(doc["_id"], changes)


@for_runners
@mutation
def gone(ctx: MutationCtx, name: RunnerName, sandbox_id: str) -> None:
    """A sandbox this runner should hold is no longer there: it is killed."""
    _own(ctx, name)
    doc = find(ctx, sandbox_id)
    if doc is None or doc["runner"] != name or not doc["live"]:
        return
    if doc["state"] == "killed":
        ctx.db.patch(doc["_id"], {"live": False})
    else:
        sandbox_transition(ctx, doc, "killed", live=False)


# -- for the node's fleet and the lease cron ----------------------------------------------------------

@internal_query
def place(ctx: QueryCtx, labels: list[str], exclude: list[str] | None = None, template: str | None = None) -> Runner | None:
    """The up runner with the most room that has every label asked for and the template, or None.
    (A runner that reported no templates, from before they were reported, may have any.)"""
    best: tuple[int, str] | None = None
    chosen: Any = None
    for doc in _up(ctx):
        if doc["name"] in (exclude or []) or not set(labels) <= set(doc["labels"]):
            continue
        if template is not None and doc.get("templates") is not None and template not in doc["templates"]:
            continue
        room = doc["capacity"] - len(_live(ctx, doc["name"]))
        if room <= 0:
            continue
        rank = (-room, doc["name"])
        if best is None or rank < best:
            best, chosen = rank, doc
    result: Runner | None = chosen
    return result


@internal_query
def templates(ctx: QueryCtx) -> dict[str, list[str]]:
    """Template name → the up runners that have it (what a create that found no runner is told)."""
    found: dict[str, list[str]] = {}
    for doc in _up(ctx):
        for name in doc.get("templates") or []:
            found.setdefault(name, []).append(doc["name"])
    return found


@internal_query
def get(ctx: QueryCtx, name: RunnerName) -> Runner | None:
    doc: Runner | None = _by_name(ctx, name)
    return doc


@internal_mutation
def expire_leases(ctx: MutationCtx) -> int:
    """Runners silent for longer than their lease are lost, and so are their sandboxes."""
    horizon = float(ctx.now) - policy(ctx).runner_lease
    late = ctx.db.query(Runner).with_index("by_state_heartbeat", lambda q: q.eq("state", "up").lt("last_heartbeat", horizon)).collect()
    for runner in late:
        ctx.db.patch(runner["_id"], {"state": "lost"})
        _lose_sandboxes(ctx, runner["name"])
    return len(late)


def _lose_sandboxes(ctx: Any, name: str) -> None:
    """A runner that cannot be reached: its running and paused sandboxes are lost until it is back."""
    for doc in _live(ctx, name):
        if doc["state"] in ("running", "paused"):
            sandbox_transition(ctx, doc, "lost")


@internal_query
def list_all(ctx: QueryCtx) -> list[dict[str, Any]]:
    """Every runner (without its secret) and how many sandboxes it holds."""
    return [{**public_view(d), "sandboxes": len(_live(ctx, d["name"]))} for d in ctx.db.query(Runner).collect()]
