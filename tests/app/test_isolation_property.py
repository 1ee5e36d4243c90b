"""A property (hypothesis): random sequences of calls by random people never let anyone read or
change a document of a workspace they are not a member of — its members, threads, runs,
artifacts, keys, audit trail — nor, through the E2B API with a workspace key, a sandbox of
another workspace. What is true is read from the store itself, not through the functions under
test. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.engine.clock import Clock
from corral.engine.errors import FunctionError

from ..runner.harness import fleet_node, on_loop
from .tenancy_support import ANONYMOUS, call, person, uid

SCOPED = ("corral_workspace_members", "corral_invitations", "corral_threads", "corral_audit_log",
          "corral_sandbox_runs", "corral_artifacts", "corral_workspace_api_keys", "corral_workspace_usage")
PAGE = {"numItems": 20, "cursor": None}
OPS = ("get", "list", "list_members", "list_invitations", "audit", "threads", "thread", "create_thread", "rename",
       "budget", "add", "invite", "remove_member", "role", "leave", "transfer", "remove", "create", "sign_in",
       "start_run", "run_in_other_thread", "run", "runs", "cancel_run", "finish_run", "artifact", "artifacts_of_run",
       "pending", "review", "download", "download_url", "create_artifact", "keys", "create_key", "revoke_key",
       "revoke_other_key")
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
        stored = asyncio.run(node.engine.files.store_data(b"out", "text/plain"))
        self.artifacts: dict[str, list[str]] = {w: [call(node, "mutation", "artifacts:create", {
            "sandbox_run_id": self.runs[w][0], "type": "log", "title": "out", "storage_id": stored,
            "content_type": "text/plain", "size": 3}, self.people[i])] for i, w in enumerate(self.workspaces)}
        self.keys: dict[str, str] = {w: call(node, "action", "workspace_keys:create_api_key", {"workspace_id": w, "name": "k"},
                                             self.people[i])["id"] for i, w in enumerate(self.workspaces)}
        self.stored = stored

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
            "finish_run": ("mutation", "sandbox_runs:finish", {"sandbox_run_id": runs[target % len(runs)], "status": "succeeded"}),
            "artifact": ("query", "artifacts:get", {"artifact_id": self.artifacts[workspace][target % len(self.artifacts[workspace])]}),
            "artifacts_of_run": ("query", "artifacts:list_by_run", {"sandbox_run_id": runs[target % len(runs)], "paginationOpts": PAGE}),
            "pending": ("query", "artifacts:list_pending", {**w, "paginationOpts": PAGE}),
            "review": ("mutation", "artifacts:update_review_state", {"artifact_id": self.artifacts[workspace][target % len(self.artifacts[workspace])], "review_state": "approved"}),
            "download": ("action", "artifacts:download", {"artifact_id": self.artifacts[workspace][target % len(self.artifacts[workspace])]}),
            "download_url": ("action", "artifacts:download_url", {"artifact_id": self.artifacts[workspace][target % len(self.artifacts[workspace])]}),
            "create_artifact": ("mutation", "artifacts:create", {
                "sandbox_run_id": runs[target % len(runs)], "type": "file", "title": "x", "storage_id": self.stored,
                "content_type": "text/plain", "size": 3}),
            "keys": ("query", "workspace_keys:list_api_keys", w),
            "create_key": ("action", "workspace_keys:create_api_key", {**w, "name": f"k{target}"}),
            "revoke_key": ("mutation", "workspace_keys:revoke_api_key", {**w, "key_id": self.keys[workspace]}),
            "revoke_other_key": ("mutation", "workspace_keys:revoke_api_key", {**w, "key_id": self.keys[elsewhere]}),
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
            elif "artifact_id" in args:
                scope = next(w for w, a in run.artifacts.items() if args["artifact_id"] in a)
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
            if scope not in mine and path in ("artifacts:download", "artifacts:download_url", "workspace_keys:list_api_keys"):
                assert refused, f"{where} gave a workspace's bytes, URL or keys to someone not in it"
            shown = revealed(value, set(docs) | set(after))
            assert shown <= mine | mine_after, f"{where} showed documents of {shown - mine - mine_after}"
            if path == "threads:create" and not refused:
                run.threads[workspace].append(value)
            if path == "sandbox_runs:create" and not refused:
                run.runs[workspace].append(value)
            if path == "artifacts:create" and not refused:
                run.artifacts[scope].append(value)

    check()


# -- through the E2B API, with workspace keys ---------------------------------------------------
# A node with a fleet (the host provider: fast, and the ownership checks are the node's own, not a
# stand-in), three workspaces, each with a run's sandbox and a key; people hold the keys of the
# workspaces they are members of. Random E2B calls with those keys, at any workspace's sandboxes.

E2B_OPS = ("list", "list_v1", "get", "connect", "kill", "set_timeout", "pause", "create", "sandbox_fn", "run_fn")
NO_SUCH_SANDBOX = "i0000000000000000000"


class E2bWorld:
    def __init__(self, served: Any) -> None:
        self.served = served
        self.node = served.node
        self.people = [person(f"k{i}", f"K{i}", f"k{i}@example.com") for i in range(3)]
        for who in self.people:
            call(self.node, "mutation", "users:sync_profile", {}, who)
        self.workspaces = [call(self.node, "mutation", "workspaces:create", {"name": f"E{i}"}, self.people[i]) for i in range(3)]
        call(self.node, "mutation", "workspace_members:add_member",  # k2 is in E0 (member) and owns E2
             {"workspace_id": self.workspaces[0], "user_id": uid("k2"), "role": "member"}, self.people[0])
        self.member_of = {0: [0], 1: [1], 2: [0, 2]}
        self.keys: dict[str, str] = {}
        self.runs: dict[str, str] = {}
        self.sandboxes: list[str] = [NO_SUCH_SANDBOX]
        for i, w in enumerate(self.workspaces):
            self.keys[w] = self.act("workspace_keys:create_api_key", {"workspace_id": w, "name": "prop"}, self.people[i])["key"]
            thread = call(self.node, "mutation", "threads:create", {"workspace_id": w}, self.people[i])
            run_id = self.act("sandbox_runs:start", {"workspace_id": w, "thread_id": thread, "kind": "thread"}, self.people[i])
            self.runs[w] = run_id
            self.sandboxes.append(call(self.node, "query", "sandbox_runs:get", {"sandbox_run_id": run_id}, self.people[i])["sandbox_id"])
        self.http = httpx.Client(base_url=served.url + "/e2b", timeout=30)

    def act(self, path: str, args: dict[str, Any], caller: Any) -> Any:
        value, _ts = on_loop(self.served, self.node.engine.call("action", f"corral/{path}", args, caller))
        return value

    def owners(self) -> dict[str, tuple[str, str, str]]:
        """Every sandbox document: sandbox id → (owner, state, the whole document), read from the store."""
        found = {}
        with self.node.engine.store.snapshot() as (conn, _ts):
            for _key, _id, _ct, text in conn.scan("corral_sandboxes", "by_creation_time", None, None, False, None):
                doc = orjson.loads(text)
                found[doc["sandbox_id"]] = (doc["owner"], doc["state"], text)
        return found

    def request(self, op: str, key: str, sandbox_id: str, seconds: int) -> httpx.Response:
        headers = {"X-API-KEY": key}
        if op == "list":
            return self.http.get("/v2/sandboxes", headers=headers, params={"state": "running,paused"})
        if op == "list_v1":
            return self.http.get("/sandboxes", headers=headers)
        if op == "get":
            return self.http.get(f"/sandboxes/{sandbox_id}", headers=headers)
        if op == "connect":
            return self.http.post(f"/sandboxes/{sandbox_id}/connect", headers=headers, json={"timeout": seconds})
        if op == "kill":
            return self.http.delete(f"/sandboxes/{sandbox_id}", headers=headers)
        if op == "set_timeout":
            return self.http.post(f"/sandboxes/{sandbox_id}/timeout", headers=headers, json={"timeout": seconds})
        if op == "pause":
            return self.http.post(f"/sandboxes/{sandbox_id}/pause", headers=headers)
        assert op == "create"
        return self.http.post("/sandboxes", headers=headers, json={"templateID": "base", "timeout": seconds})


def decided(text: str) -> dict[str, Any]:
    """What a call decides of a sandbox; `live` and its activity (`last_activity`, and `idle_at` after it)
    follow its runner, which writes them on its own time."""
    return {k: v for k, v in orjson.loads(text).items() if k not in ("live", "last_activity", "idle_at")}


@pytest.fixture
def e2b_world(short_dir: Path, database_url: str | None) -> Iterator[E2bWorld]:
    with fleet_node(short_dir / "data", database_url=database_url, clock=Clock()) as served:
        world = E2bWorld(served)
        yield world
        world.http.close()


e2b_step = st.tuples(st.integers(0, 2), st.integers(0, 1), st.sampled_from(E2B_OPS), st.integers(0, 30), st.integers(60, 600))


def test_a_workspace_key_never_sees_or_changes_a_sandbox_outside_its_workspace(e2b_world):
    world = e2b_world

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(e2b_step, min_size=1, max_size=8))
    def check(steps: list[tuple[int, int, str, int, int]]) -> None:
        for who, which, op, target, seconds in steps:
            mine = world.member_of[who]
            workspace = world.workspaces[mine[which % len(mine)]]
            owner = f"workspace|{workspace}"
            sandbox_id = world.sandboxes[target % len(world.sandboxes)]
            before = world.owners()
            listable = ("running",) if op == "list_v1" else ("running", "paused")  # E2B's first list: running ones
            live_mine = {s for s, (o, state, _) in before.items() if o == owner and state in listable}
            where = f"{op} {sandbox_id} with the key of {workspace}"
            if op in ("sandbox_fn", "run_fn"):
                caller = world.people[who]
                if op == "sandbox_fn":
                    value = call(world.node, "query", "sandboxes:get", {"sandbox_id": sandbox_id}, caller)
                    belongs = before.get(sandbox_id, ("", "", ""))[0]
                else:
                    run_ws = world.workspaces[target % 3]
                    value = call(world.node, "query", "sandbox_runs:get", {"sandbox_run_id": world.runs[run_ws]}, caller)
                    belongs = f"workspace|{run_ws}"
                members = {f"workspace|{world.workspaces[i]}" for i in mine}
                assert (value is not None) == (belongs in members), f"{where}: {op} by k{who} showed {value}"
                continue
            if op == "create" and len(live_mine) >= 2:
                op = "list"  # the runner's capacity is finite: two live sandboxes per workspace are enough
            response = world.request(op, world.keys[workspace], sandbox_id, seconds)
            after = world.owners()
            # Nothing outside the key's workspace changed, and whatever appeared belongs to it.
            for sid, (o, _state, text) in after.items():
                if o != owner:
                    assert sid in before, f"{where} made {sid} for {o}"
                    assert decided(before[sid][2]) == decided(text), f"{where} changed {sid} of {o}"
            if op in ("list", "list_v1"):
                assert response.status_code == 200
                assert {s["sandboxID"] for s in response.json()} == live_mine, f"{where} listed other sandboxes"
            elif op == "create":
                assert response.status_code == 201, response.text
                made = response.json()["sandboxID"]
                assert after[made][0] == owner
                world.sandboxes.append(made)
            elif before.get(sandbox_id, ("",))[0] != owner:
                assert response.status_code == 404, f"{where}: {response.status_code} {response.text}"
                body = response.json()
                assert body["code"] == 404 and sandbox_id in body["message"], body
                assert workspace not in response.text and "workspace|" not in response.text
            else:
                assert response.status_code < 500, f"{where}: {response.status_code} {response.text}"
                if response.status_code < 300 and response.content:
                    assert response.json().get("sandboxID", sandbox_id) == sandbox_id

    check()
