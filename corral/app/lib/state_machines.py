"""The allowed transitions of every stateful document, and the one helper that applies them."""

from __future__ import annotations

from typing import Any

from corral import ConvexError

# A sandbox: killed is final; lost (its runner stopped answering) comes back when the runner does.
SANDBOX_TRANSITIONS: dict[str, frozenset[str]] = {
    "running": frozenset({"paused", "killed", "lost"}),
    "paused": frozenset({"running", "killed", "lost"}),
    "lost": frozenset({"running", "paused", "killed"}),
    "killed": frozenset(),
}


def sandbox_transition(ctx: Any, doc: Any, to: str, *, reason: str | None = None, **changes: Any) -> dict[str, Any]:
    """Move a sandbox to `to` (bumping its generation) and apply `changes`; returns the new document.

    A move to the state it is already in changes only `changes` and keeps the generation. A kill
    ends the sandbox's run, if it has one, in the same transaction (`reason`: why it was killed)."""
    now = float(ctx.now)
    current = doc["state"]
    fields: dict[str, Any] = dict(changes)
    if to != current:
        if to not in SANDBOX_TRANSITIONS[current]:
            raise ConvexError({"code": "SandboxStateError",
                               "message": f"sandbox {doc['sandbox_id']} is {current} and cannot become {to}"})
        fields.update(state=to, generation=doc["generation"] + 1, state_since=now)
        if to == "paused" and current == "lost" and doc.get("paused_at"):
            # Paused before its runner went away, and still: it has been paused since then, for
            # retention too, not since its runner came back.
            fields.update(paused_at=doc["paused_at"], state_since=doc["paused_at"])
        elif to == "paused":
            fields.setdefault("paused_at", now)
        elif to == "running":
            fields.update(paused_at=None, paused_reason=None)
        elif to == "killed":
            fields["ended_at"] = now
        if current == "paused" and to in ("running", "killed") and doc.get("paused_at") is not None:
            fields["paused_total"] = float(doc.get("paused_total") or 0.0) + max(0.0, now - doc["paused_at"])
    ctx.db.patch(doc["_id"], fields)
    new = dict(doc)
    new.update(fields)
    if to == "killed" and to != current:
        from .run_ends import (
            sandbox_ended,  # a run's end reads the run tables, which import this module
        )

        sandbox_ended(ctx, new, reason)
    return new


# A sandbox run: booting → running → succeeded | failed | canceled; terminal states have no exits.
RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    "booting": frozenset({"running", "failed", "canceled"}),
    "running": frozenset({"succeeded", "failed", "canceled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "canceled": frozenset(),
}
RUN_TERMINAL = frozenset(s for s, exits in RUN_TRANSITIONS.items() if not exits)


def run_transition(ctx: Any, run: Any, to: str, reason: str, **changes: Any) -> dict[str, Any]:
    """Move a sandbox run to `to`, recording it in its history; a refused move names both states."""
    current = run["status"]
    if to not in RUN_TRANSITIONS:
        raise ConvexError({"code": "InvalidTransition", "message": f"{to!r} is not a run status: one of "
                           f"{', '.join(RUN_TRANSITIONS)}"})
    if to not in RUN_TRANSITIONS[current]:
        raise ConvexError({"code": "InvalidTransition",
                           "message": f"sandbox run {run['_id']} is {current} and cannot become {to}"})
    now = float(ctx.now)
    fields: dict[str, Any] = dict(changes)
    fields.update(status=to, history=[*run["history"], {"status": to, "at": now, "reason": reason}])
    if to in RUN_TERMINAL:
        fields["ended_at"] = now
    ctx.db.patch(run["_id"], fields)
    new = dict(run)
    new.update(fields)
    return new
