"""A property (hypothesis): random sequences of calls by random people never let anyone read or
change a document of a workspace they are not a member of — its members, threads, runs,
artifacts, keys, audit trail. What is true is read from the
store itself, not through the functions under test. SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.engine.errors import FunctionError

from .tenancy_support import ANONYMOUS, call, person, uid

SCOPED = ("corral_workspace_members", "corral_invitations", "corral_threads", "corral_audit_log",
          "corral_sandbox_runs", "corral_artifacts", "corral_workspace_api_keys", "corral_workspace_usage")
PAGE = {"numItems": 20, "cursor": None}
OPS = ("get", "list", "list_members", "list_invitations", "audit", "threads", "thread", "create_thread", "rename",
       "budget", "add", "invite", "remove_member", "role", "leave", "transfer", "remove", "create", "sign_in",
       "start_run", "run_in_other_thread", "run", "runs", "cancel_run")
examples = itertools.count()


def stored(node: Any) -> tuple[dict[str, set[tuple[str, str]]], set[tuple[str, str]], set[tuple[str, str]]]:
    """Per workspace, its documents (table, text); (workspace, user) memberships; (workspace, email) invitations."""
    docs: dict[str, set[tuple[str, str]]] = {}
    members, invitations = set(), set()
    with node.engine.store.snapshot() as (conn, _ts):
        for _key, doc_id, _ct, text in conn.scan("corral_workspaces", "by_creation_time", None, None, False, None):
            docs.setdefault(doc_id, set()).add(("corral_workspaces", text))
        for table in (t for t in SCOPED if t in node.engine.schema.tables):
            for _key, doc_id, _ct, text in conn.scan(table, "by_creation_time", None, None, False, None):
                doc = orjson.loads(text)
                docs.setdefault(doc["workspace_id"], set()).add((table, doc_id + text))
                if table == "corral_workspace_members":
                    members.add((doc["workspace_id"], doc["user_id"]))
                elif table == "corral_invitations":
                    invitations.add((doc["workspace_id"], doc["email"]))
    return docs, members, invitations


def revealed(value: Any, workspaces: set[str]) -> set[str]:
    """The workspaces whose documents a result shows."""
    found: set[str] = set()
    if isinstance(value, dict):
        if isinstance(value.get("workspace_id"), str):
            found.add(value["workspace_id"])
        if value.get("_id") in workspaces:
            found.add(value["_id"])
        for inner in value.values():
            found |= revealed(inner, workspaces)
    elif isinstance(value, list):
        for inner in value:
            found |= revealed(inner, workspaces)
    return found


class Run:
    def __init__(self, node: Any) -> None:
        self.node = node
        n = next(examples)
        self.subjects = [f"e{n}-u{i}" for i in range(4)]
        self.people = [person(s, s.upper(), f"{s}@example.com") for s in self.subjects]
        for who in self.people[:3]:  # the fourth has never signed in: only an email invitation reaches them
            call(node, "mutation", "users:sync_profile", {}, who)
        self.workspaces = [call(node, "mutation", "workspaces:create", {"name": f"W{i}"}, self.people[i]) for i in range(2)]
        w0, w1 = self.workspaces
        add = "workspace_members:add_member"
        call(node, "mutation", add, {"workspace_id": w0, "user_id": uid(self.subjects[2]), "role": "admin"}, self.people[0])
        call(node, "mutation", add, {"workspace_id": w1, "user_id": uid(self.subjects[2]), "role": "member"}, self.people[1])
        call(node, "mutation", add, {"workspace_id": w0, "email": f"{self.subjects[3]}@example.com", "role": "member"}, self.people[0])
        self.threads: dict[str, list[str]] = {w: [call(node, "mutation", "threads:create", {"workspace_id": w}, self.people[i])]
                                              for i, w in enumerate(self.workspaces)}
        self.runs: dict[str, list[str]] = {w: [call(node, "mutation", "sandbox_runs:create",
                                                    {"workspace_id": w, "thread_id": self.threads[w][0]}, self.people[i])]
                                           for i, w in enumerate(self.workspaces)}

    def request(self, op: str, workspace: str, target: int, role: str) -> tuple[str, str, dict[str, Any]]:
        user, email = uid(self.subjects[target]), f"{self.subjects[target]}@example.com"
        w = {"workspace_id": workspace}
        threads, runs = self.threads[workspace], self.runs[workspace]
        elsewhere = next(w for w in self.workspaces if w != workspace)
        return {
            "get": ("query", "workspaces:get", w),
            "list": ("query", "workspaces:list", {}),
            "list_members": ("query", "workspace_members:list_members", w),
            "list_invitations": ("query", "workspace_members:list_invitations", w),
            "audit": ("query", "audit:list", {**w, "paginationOpts": PAGE}),
            "threads": ("query", "threads:list", {**w, "paginationOpts": PAGE}),
            "thread": ("query", "threads:get", {"thread_id": threads[target % len(threads)]}),
            "create_thread": ("mutation", "threads:create", {**w, "title": "t"}),
            "rename": ("mutation", "workspaces:update", {**w, "name": "renamed"}),
            "budget": ("mutation", "workspaces:set_budget", {**w, "monthly_budget_usd": 5.0}),
            "add": ("mutation", "workspace_members:add_member", {**w, "user_id": user, "role": role}),
            "invite": ("mutation", "workspace_members:add_member", {**w, "email": email, "role": role}),
            "remove_member": ("mutation", "workspace_members:remove_member", {**w, "user_id": user}),
            "role": ("mutation", "workspace_members:update_role", {**w, "user_id": user, "new_role": role}),
            "leave": ("mutation", "workspace_members:leave", w),
            "transfer": ("mutation", "workspaces:transfer_ownership", {**w, "user_id": user}),
            "remove": ("mutation", "workspaces:remove", w),
            "create": ("mutation", "workspaces:create", {"name": "fresh"}),
            "sign_in": ("mutation", "users:sync_profile", {}),
            "start_run": ("mutation", "sandbox_runs:create", {**w, "thread_id": threads[target % len(threads)]}),
            "run_in_other_thread": ("mutation", "sandbox_runs:create", {**w, "thread_id": self.threads[elsewhere][0]}),
            "run": ("query", "sandbox_runs:get", {"sandbox_run_id": runs[target % len(runs)]}),
            "runs": ("query", "sandbox_runs:list_by_workspace", {**w, "paginationOpts": PAGE}),
            "cancel_run": ("mutation", "sandbox_runs:cancel", {"sandbox_run_id": runs[target % len(runs)]}),
        }[op]


step = st.tuples(st.sampled_from(OPS), st.integers(0, 4), st.integers(0, 1), st.integers(0, 3), st.sampled_from(["admin", "member"]))


def test_no_one_reads_or_changes_a_workspace_they_are_not_in(make_node, database_url):
    node = make_node(database_url=database_url, functions=None)

    @settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(step, min_size=1, max_size=12))
    def check(steps: list[tuple[str, int, int, int, str]]) -> None:
        run = Run(node)
        for op, actor, which, target, role in steps:
            caller = ANONYMOUS if actor == 4 else run.people[actor]
            me = None if actor == 4 else uid(run.subjects[actor])
            workspace = run.workspaces[which]
            kind, path, args = run.request(op, workspace, target, role)
            scope = workspace
            if path == "threads:get":
                scope = next(w for w, ts in run.threads.items() if args["thread_id"] in ts)
            elif "sandbox_run_id" in args:
                scope = next(w for w, rs in run.runs.items() if args["sandbox_run_id"] in rs)
            docs, members, invitations = stored(node)
            mine = {w for w, u in members if u == me}
            try:
                value, refused = call(node, kind, path, args, caller), False
            except FunctionError:
                value, refused = None, True
            after, members_after, _ = stored(node)
            mine_after = {w for w, u in members_after if u == me}
            changed = {w for w in docs.keys() | after.keys() if docs.get(w) != after.get(w)}
            new = after.keys() - docs.keys()
            may_change = {scope} & mine
            if op == "sign_in" and me is not None:
                may_change = {w for w, e in invitations if e == f"{run.subjects[actor]}@example.com"}
            where = f"{path} {args} by {me}"
            assert changed - new <= may_change, f"{where} changed workspaces {changed - new - may_change} it is not in"
            if scope not in mine and path not in ("workspaces:list", "workspaces:create", "users:sync_profile"):
                assert refused or not (revealed(value, set(docs)) & {scope}), f"{where} showed a workspace it is not in"
            shown = revealed(value, set(docs) | set(after))
            assert shown <= mine | mine_after, f"{where} showed documents of {shown - mine - mine_after}"
            if path == "threads:create" and not refused:
                run.threads[workspace].append(value)
            if path == "sandbox_runs:create" and not refused:
                run.runs[workspace].append(value)

    check()
