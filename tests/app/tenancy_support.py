"""Calling Corral's own tenancy functions in-process, as people with signed-in identities."""

from __future__ import annotations

import asyncio
from typing import Any

from corral.engine.auth import Caller, UserIdentity
from corral.engine.errors import FunctionError

ISSUER = "https://issuer.test"
ADMIN = Caller.admin()
ANONYMOUS = Caller.anonymous()


def uid(subject: str) -> str:
    return f"{ISSUER}|{subject}"


def person(subject: str, name: str | None = None, email: str | None = None, **claims: Any) -> Caller:
    """The caller a verified token for `subject` makes (auth/callers.py: identity_from_claims)."""
    identity = UserIdentity(tokenIdentifier=uid(subject), subject=subject, issuer=ISSUER, **claims)
    if name is not None:
        identity["name"] = name
    if email is not None:
        identity["email"] = email
    return Caller.user(identity)


def call(node: Any, kind: str, path: str, args: dict[str, Any] | None = None, caller: Caller = ANONYMOUS) -> Any:
    value, _ts = asyncio.run(node.engine.call(kind, f"corral/{path}", args or {}, caller))
    return value


def internal(node: Any, kind: str, path: str, args: dict[str, Any] | None = None) -> Any:
    runner = node.engine.call_query if kind == "query" else node.engine.call_mutation
    return asyncio.run(runner(f"corral/{path}", args or {}, ADMIN, internal_ok=True))


def refusal(node: Any, kind: str, path: str, args: dict[str, Any] | None = None, caller: Caller = ANONYMOUS) -> Any:
    """The error a call fails with: ConvexError data ({code, message}) or the message of any other error."""
    try:
        call(node, kind, path, args, caller)
    except FunctionError as exc:
        return getattr(exc, "data", None) or str(exc)
    raise AssertionError(f"{path} {args} as {caller.key} succeeded; it should have been refused")


def code(error: Any) -> str:
    return error["code"] if isinstance(error, dict) else "FunctionError"


class Tenancy:
    """A node with a workspace: owner `own`, admin `adm`, member `mem`; `out` owns another workspace."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.owner = person("own", "Olive Owner", "olive@example.com")
        self.admin = person("adm", "Ada Admin", "ada@example.com")
        self.member = person("mem", "Max Member", "max@example.com")
        self.outsider = person("out", "Oscar Outsider", "oscar@example.com")
        for who in (self.owner, self.admin, self.member, self.outsider):
            call(node, "mutation", "users:sync_profile", {}, who)
        self.workspace = call(node, "mutation", "workspaces:create", {"name": "Lab"}, self.owner)
        self.other = call(node, "mutation", "workspaces:create", {"name": "Elsewhere"}, self.outsider)
        self.add(uid("adm"), "admin")
        self.add(uid("mem"), "member")

    def add(self, user_id: str, role: str, workspace: str | None = None) -> Any:
        return call(self.node, "mutation", "workspace_members:add_member",
                    {"workspace_id": workspace or self.workspace, "user_id": user_id, "role": role}, self.owner)

    def roles(self, workspace: str | None = None) -> dict[str, str]:
        rows = call(self.node, "query", "workspace_members:list_members", {"workspace_id": workspace or self.workspace}, self.owner)
        return {r["user_id"]: r["role"] for r in rows}

    def audit(self, workspace: str | None = None) -> list[dict[str, Any]]:
        page = call(self.node, "query", "audit:list", {"workspace_id": workspace or self.workspace,
                                                     "paginationOpts": {"numItems": 100, "cursor": None}}, self.owner)
        return list(page["page"])
