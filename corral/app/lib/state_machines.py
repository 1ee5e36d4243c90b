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


def sandbox_transition(ctx: Any, doc: Any, to: str, **changes: Any) -> dict[str, Any]:
    """Move a sandbox to `to` (bumping its generation) and apply `changes`; returns the new document.

    A move to the state it is already in changes only `changes` and keeps the generation."""
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
    ctx.db.patch(doc["_id"], fields)
    new = dict(doc)
    new.update(fields)
    return new
