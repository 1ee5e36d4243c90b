"""The audit trail: one entry per privileged act, written in the same transaction as the act."""

from __future__ import annotations

from typing import Any

from ..schema import AuditEntry

CORRAL = "corral"  # the actor of Corral's own crons and internal functions


def record(ctx: Any, workspace_id: Any, action: str, target: str, before: Any, after: Any) -> None:
    """Append an entry: who (the caller, or "corral"), when (ctx.now), what and on what, before and after."""
    identity = ctx.auth.get_user_identity()
    actor = CORRAL if identity is None else str(identity["tokenIdentifier"])
    ctx.db.insert(AuditEntry(workspace_id=workspace_id, actor=actor, action=action, target=target,
                             before=before, after=after, at=float(ctx.now)))
