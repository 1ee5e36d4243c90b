"""The authorization matrix: every public function of Corral's app × {owner, admin, member,
member of another workspace, anonymous} → allowed or denied as docs/workspaces.md says, in one
table-driven test; a denial to someone outside the workspace is exactly what a missing id gets,
so it never reveals that the document exists. SQLite and PostgreSQL.

To add a function: one `Case` row — its path and kind, who may call it, and how to build its
arguments from a fresh `World` (`w`). A query (or a reading action) shares one world and denies by returning null, a list by leaving
the workspace's documents out; `grants` says what an allowed result looks like when it is not
simply "not null"."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.engine.errors import FunctionError
from corral.engine.values import ids

from .tenancy_support import ANONYMOUS, Tenancy, call, internal, uid

ROLES = ("owner", "admin", "member", "outsider", "anonymous")
MEMBERS = {"owner", "admin", "member"}
ADMINS = {"owner", "admin"}
OWNER = {"owner"}
SIGNED_IN = {"owner", "admin", "member", "outsider"}
DENIALS = {"Forbidden", "NotFound", "Unauthenticated"}
PAGE = {"numItems": 10, "cursor": None}


class World(Tenancy):
    """The Tenancy workspace plus what the cases act on: a thread, a second member `mem2`, a
    pending invitation, and (when the runs module is there) a run in the thread."""

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self.add(uid("mem2"), "member")
        self.thread = call(node, "mutation", "threads:create", {"workspace_id": self.workspace, "title": "T"}, self.owner)
        call(node, "mutation", "workspace_members:add_member",
             {"workspace_id": self.workspace, "role": "member", "email": "inv@example.com"}, self.owner)
        self.run = None
        if "corral/sandbox_runs:create" in node.registry.functions:
            self.run = call(node, "mutation", "sandbox_runs:create", {"workspace_id": self.workspace, "thread_id": self.thread}, self.owner)
        self.artifact = None
        if self.run is not None and "corral/artifacts:create" in node.registry.functions:
            self.stored = asyncio.run(node.engine.files.store_data(b"hello", "text/plain"))
            self.artifact = call(node, "mutation", "artifacts:create", self.artifact_args(), self.owner)

        self.key = None
        if "corral/workspace_keys:create_api_key" in node.registry.functions:
            made = call(node, "action", "workspace_keys:create_api_key", {"workspace_id": self.workspace, "name": "ci"}, self.owner)
            self.key = made["id"]

    def running(self) -> Any:
        """The world's run, moved to running (as its start would) for what only a running run allows."""
        internal(self.node, "mutation", "sandbox_runs:update", {"sandbox_run_id": self.run, "status": "running"})
        return self.run

    def artifact_args(self) -> dict[str, Any]:
        return {"sandbox_run_id": self.run, "type": "file", "title": "out.txt", "storage_id": self.stored,
                "content_type": "text/plain", "size": 5}

    def caller(self, role: str) -> Any:
        return {"owner": self.owner, "admin": self.admin, "member": self.member, "outsider": self.outsider,
                "anonymous": ANONYMOUS}[role]


@dataclass
class Case:
    path: str
    kind: str
    allowed: set[str]
    args: Callable[[World], dict[str, Any]]
    scope: str = "workspace_id"  # the argument naming the workspace's document; a missing id there must be refused alike
    grants: Callable[[Any, World], bool] = lambda result, w: result is not None
    fresh: bool = False  # an action that writes: a world of its own per caller, like a mutation


def ws(**extra: Any) -> Callable[[World], dict[str, Any]]:
    return lambda w: {"workspace_id": w.workspace, **extra}


def lists_workspace(result: Any, w: World) -> bool:
    return any(item["_id"] == w.workspace for item in result)


CASES = [
    # tenancy (role A)
    Case("workspaces:get", "query", MEMBERS, ws()),
    Case("workspaces:list", "query", MEMBERS, lambda w: {}, scope="", grants=lists_workspace),
    Case("workspaces:create", "mutation", SIGNED_IN, lambda w: {"name": "New"}, scope=""),
    Case("workspaces:update", "mutation", OWNER, ws(name="Renamed")),
    Case("workspaces:set_budget", "mutation", OWNER, ws(monthly_budget_usd=10.0)),
    Case("workspaces:transfer_ownership", "mutation", OWNER, lambda w: {"workspace_id": w.workspace, "user_id": uid("adm")}),
    Case("workspaces:remove", "mutation", OWNER, ws()),
    Case("workspace_members:add_member", "mutation", ADMINS, ws(user_id=uid("new"), role="member")),
    Case("workspace_members:add_member", "mutation", OWNER, ws(user_id=uid("new"), role="admin")),
    Case("workspace_members:add_member", "mutation", ADMINS, ws(email="new@example.com", role="member")),
    Case("workspace_members:remove_member", "mutation", ADMINS, ws(user_id=uid("mem2"))),
    Case("workspace_members:remove_member", "mutation", OWNER, ws(user_id=uid("adm"))),
    Case("workspace_members:update_role", "mutation", OWNER, ws(user_id=uid("mem2"), new_role="admin")),
    Case("workspace_members:update_role", "mutation", OWNER, ws(user_id=uid("adm"), new_role="member")),
    Case("workspace_members:list_members", "query", MEMBERS, ws()),
    Case("workspace_members:leave", "mutation", {"admin", "member"}, ws()),
    Case("workspace_members:list_invitations", "query", ADMINS, ws()),
    Case("workspace_members:cancel_invitation", "mutation", ADMINS, ws(email="inv@example.com")),
    Case("threads:create", "mutation", MEMBERS, ws(title="Mine")),
    Case("threads:get", "query", MEMBERS, lambda w: {"thread_id": w.thread}, scope="thread_id"),
    Case("threads:list", "query", MEMBERS, ws(paginationOpts=PAGE)),
    Case("audit:list", "query", ADMINS, ws(paginationOpts=PAGE)),
    Case("users:sync_profile", "mutation", SIGNED_IN, lambda w: {}, scope=""),
    Case("users:me", "query", SIGNED_IN, lambda w: {}, scope=""),
    # runs (role B): rows whose function is not there are skipped
    Case("sandbox_runs:create", "mutation", MEMBERS, lambda w: {"workspace_id": w.workspace, "thread_id": w.thread}),
    Case("sandbox_runs:get", "query", MEMBERS, lambda w: {"sandbox_run_id": w.run}, scope="sandbox_run_id"),
    Case("sandbox_runs:list_by_workspace", "query", MEMBERS, ws(paginationOpts=PAGE)),
    Case("sandbox_runs:list_by_thread", "query", MEMBERS, lambda w: {"thread_id": w.thread, "paginationOpts": PAGE}, scope="thread_id"),
    Case("sandbox_runs:cancel", "mutation", MEMBERS, lambda w: {"sandbox_run_id": w.run}, scope="sandbox_run_id"),
    Case("sandbox_runs:finish", "mutation", MEMBERS, lambda w: {"sandbox_run_id": w.running(), "status": "succeeded"},
         scope="sandbox_run_id"),
    Case("sandbox_runs:usage", "query", MEMBERS, ws()),
    Case("artifacts:create", "mutation", MEMBERS, lambda w: w.artifact_args(), scope="sandbox_run_id"),
    Case("artifacts:get", "query", MEMBERS, lambda w: {"artifact_id": w.artifact}, scope="artifact_id"),
    Case("artifacts:list_by_run", "query", MEMBERS, lambda w: {"sandbox_run_id": w.run, "paginationOpts": PAGE}, scope="sandbox_run_id"),
    Case("artifacts:list_pending", "query", MEMBERS, ws(paginationOpts=PAGE)),
    Case("artifacts:update_review_state", "mutation", ADMINS, lambda w: {"artifact_id": w.artifact, "review_state": "approved"},
         scope="artifact_id"),
    Case("artifacts:download", "action", MEMBERS, lambda w: {"artifact_id": w.artifact}, scope="artifact_id"),
    Case("artifacts:download_url", "action", MEMBERS, lambda w: {"artifact_id": w.artifact}, scope="artifact_id"),
    Case("workspace_keys:create_api_key", "action", ADMINS, ws(name="agent"), fresh=True),
    Case("workspace_keys:list_api_keys", "query", ADMINS, ws()),
    Case("workspace_keys:revoke_api_key", "mutation", ADMINS, lambda w: {"workspace_id": w.workspace, "key_id": w.key}),
]

MODULES = ("workspaces", "workspace_members", "users", "threads", "audit", "sandbox_runs", "artifacts", "workspace_keys")
# Public functions of those modules the table leaves to their own tests, and why.
ELSEWHERE = {"sandbox_runs:start": "boots a sandbox: tests/app/test_runs*.py",
             "artifacts:capture": "reads a sandbox's files: tests/app/test_artifacts*.py"}

TABLE_OF = {"workspace_id": "corral_workspaces", "thread_id": "corral_threads", "sandbox_run_id": "corral_sandbox_runs",
            "artifact_id": "corral_artifacts"}


def outcome(w: World, kind: str, path: str, args: dict[str, Any], caller: Any) -> tuple[str, Any]:
    """("ok", result) or ("refused", error data)."""
    try:
        return "ok", call(w.node, kind, path, args, caller)
    except FunctionError as exc:
        return "refused", getattr(exc, "data", None) or str(exc)


def test_every_function_allows_exactly_whom_the_rules_say(make_node, database_url):
    node = make_node(database_url=database_url, functions=None)
    public = {path.removeprefix("corral/") for path, spec in node.registry.functions.items()
              if spec.public and path.removeprefix("corral/").split(":")[0] in MODULES}
    wrong = [f"{path} is public but not in the table" for path in sorted(public - {c.path for c in CASES} - set(ELSEWHERE))]
    shared: World | None = None  # queries change nothing: one world serves them all
    for case in CASES:
        if f"corral/{case.path}" not in node.registry.functions:
            continue
        for role in ROLES:
            if case.kind != "mutation" and not case.fresh:
                shared = shared or World(node)
                w = shared
            else:
                w = World(node)
            args = case.args(w)
            status, value = outcome(w, case.kind, case.path, args, w.caller(role))
            granted = status == "ok" and (case.kind == "mutation" or case.fresh or case.grants(value, w))
            where = f"{case.path} {sorted(k for k in args if k != 'paginationOpts')} as {role}"
            if granted != (role in case.allowed):
                wrong.append(f"{where}: {'allowed' if granted else 'denied'} ({status}: {value!r})")
                continue
            if granted:
                continue
            if status == "refused" and (not isinstance(value, dict) or value.get("code") not in DENIALS):
                wrong.append(f"{where}: denied with {value!r}, not a Forbidden/NotFound/Unauthenticated error")
            if role in ("outsider", "anonymous") and case.scope:
                missing = {**args, case.scope: ids.new_id(TABLE_OF[case.scope])}
                if outcome(w, case.kind, case.path, missing, w.caller(role)) != (status, value):
                    wrong.append(f"{where}: denied differently than a missing {case.scope} is, revealing that it exists")
    assert not wrong, "\n".join(wrong)
