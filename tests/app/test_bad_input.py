"""Every kind of bad input the issue names, against every function it reaches: a clear error that
names what was wrong, and nothing written (no transaction commits: the store's latest timestamp
does not move). Without sandboxes (the node's crons do not run here, so every write is the
test's); capture's paths and sizes are in test_artifacts.py, E2B's keys in test_isolation_property.py
and tests/e2b/test_workspace_keys.py. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from corral.engine.auth import Caller
from corral.engine.errors import FunctionError

from .tenancy_support import Tenancy, call, internal, uid

PAGE = {"numItems": 10, "cursor": None}


class World(Tenancy):
    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self.thread = call(node, "mutation", "threads:create", {"workspace_id": self.workspace}, self.member)
        self.run = call(node, "mutation", "sandbox_runs:create", {"workspace_id": self.workspace, "thread_id": self.thread},
                        self.member)
        self.ended = call(node, "mutation", "sandbox_runs:create", {"workspace_id": self.workspace, "thread_id": self.thread},
                          self.member)
        call(node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": self.ended}, self.member)
        self.storage_id = asyncio.run(node.engine.files.store_data(b"result", "text/plain"))
        self.artifact = call(node, "mutation", "artifacts:create", {
            "sandbox_run_id": self.run, "type": "log", "title": "out", "storage_id": self.storage_id,
            "content_type": "text/plain", "size": 6}, self.member)
        self.other_key = self.act("workspace_keys:create_api_key", {"workspace_id": self.other, "name": "theirs"}, self.outsider)

    def act(self, path: str, args: dict[str, Any], caller: Caller) -> Any:
        value, _ts = asyncio.run(self.node.engine.call("action", f"corral/{path}", args, caller))
        return value


@pytest.fixture
def w(make_node, database_url):  # type: ignore[no-untyped-def]
    return World(make_node(database_url=database_url, functions=None))


def artifact_args(w: World, **changes: Any) -> dict[str, Any]:
    return {"sandbox_run_id": w.run, "type": "file", "title": "t", "storage_id": w.storage_id, "content_type": "text/plain",
            "size": 6, **changes}


# (what, kind, path, arguments, who calls, what the error says: a code or words of the message)
CASES: list[tuple[str, str, str, Any, str, str]] = [
    # wrong id types
    ("a number for an id", "mutation", "threads:create", lambda w: {"workspace_id": 42}, "member", "workspace_id"),
    ("a list for an id", "mutation", "artifacts:update_review_state",
     lambda w: {"artifact_id": [w.artifact], "review_state": "approved"}, "admin", "artifact_id"),
    ("a string that is no id", "mutation", "sandbox_runs:create",
     lambda w: {"workspace_id": w.workspace, "thread_id": "not-an-id"}, "member", "thread_id"),
    ("a number for a run id", "mutation", "sandbox_runs:cancel", lambda w: {"sandbox_run_id": 7}, "member", "sandbox_run_id"),
    # ids of another table
    ("a thread id for a workspace", "mutation", "threads:create", lambda w: {"workspace_id": w.thread}, "member",
     "corral_workspaces"),
    ("a workspace id for a thread", "mutation", "sandbox_runs:create",
     lambda w: {"workspace_id": w.workspace, "thread_id": w.workspace}, "member", "corral_threads"),
    ("a thread id for a run", "mutation", "sandbox_runs:cancel", lambda w: {"sandbox_run_id": w.thread}, "member",
     "corral_sandbox_runs"),
    ("a run id for an artifact", "mutation", "artifacts:update_review_state",
     lambda w: {"artifact_id": w.run, "review_state": "approved"}, "admin", "corral_artifacts"),
    ("a workspace id for a run, in artifacts:create", "mutation", "artifacts:create",
     lambda w: artifact_args(w, sandbox_run_id=w.workspace), "member", "corral_sandbox_runs"),
    ("a workspace id for a key", "mutation", "workspace_keys:revoke_api_key",
     lambda w: {"workspace_id": w.workspace, "key_id": w.workspace}, "owner", "corral_workspace_api_keys"),
    ("something else for a storage id", "mutation", "artifacts:create", lambda w: artifact_args(w, storage_id=w.run),
     "member", "InvalidArgument"),
    # unknown enum values
    ("an unknown role", "mutation", "workspace_members:add_member",
     lambda w: {"workspace_id": w.workspace, "user_id": uid("new"), "role": "superuser"}, "owner", "role"),
    ("owner is no role to give", "mutation", "workspace_members:update_role",
     lambda w: {"workspace_id": w.workspace, "user_id": uid("mem"), "new_role": "owner"}, "owner", "new_role"),
    ("an unknown kind of run", "mutation", "sandbox_runs:create",
     lambda w: {"workspace_id": w.workspace, "thread_id": w.thread, "kind": "marathon"}, "member", "kind"),
    ("an unknown review state", "mutation", "artifacts:update_review_state",
     lambda w: {"artifact_id": w.artifact, "review_state": "maybe"}, "admin", "review_state"),
    ("an unknown artifact type", "mutation", "artifacts:create", lambda w: artifact_args(w, type="movie"), "member", "type"),
    # transitions out of terminal states
    ("canceling a canceled run", "mutation", "sandbox_runs:cancel", lambda w: {"sandbox_run_id": w.ended}, "member",
     "is canceled and cannot become canceled"),
    ("an approval already given", "mutation", "artifacts:update_review_state",
     lambda w: {"artifact_id": w.artifact, "review_state": "pending"}, "admin", "already pending"),
    # reviews by members
    ("a review by a member", "mutation", "artifacts:update_review_state",
     lambda w: {"artifact_id": w.artifact, "review_state": "approved"}, "member", "Forbidden"),
    ("a review by an outsider", "mutation", "artifacts:update_review_state",
     lambda w: {"artifact_id": w.artifact, "review_state": "approved"}, "outsider", "NotFound"),
    # adding the owner again
    ("adding the owner again", "mutation", "workspace_members:add_member",
     lambda w: {"workspace_id": w.workspace, "user_id": uid("own"), "role": "member"}, "owner", "AlreadyMember"),
    ("inviting the owner's email", "mutation", "workspace_members:add_member",
     lambda w: {"workspace_id": w.workspace, "email": "olive@example.com", "role": "admin"}, "owner", "AlreadyMember"),
    # names over the length limit
    ("a workspace name over 100", "mutation", "workspaces:create", lambda w: {"name": "x" * 101}, "owner",
     "must be at most 100 long"),
    ("a rename over 100", "mutation", "workspaces:update", lambda w: {"workspace_id": w.workspace, "name": "x" * 101},
     "owner", "must be at most 100 long"),
    ("a thread title over 200", "mutation", "threads:create", lambda w: {"workspace_id": w.workspace, "title": "x" * 201},
     "member", "must be at most 200 long"),
    ("an artifact title over 200", "mutation", "artifacts:create", lambda w: artifact_args(w, title="x" * 201), "member",
     "must be at most 200 long"),
    ("a key name over 100", "action", "workspace_keys:create_api_key",
     lambda w: {"workspace_id": w.workspace, "name": "k" * 101}, "owner", "must be at most 100 long"),
    ("a blank key name", "action", "workspace_keys:create_api_key", lambda w: {"workspace_id": w.workspace, "name": "  "},
     "owner", "InvalidArgument"),
    # a workspace key used for another workspace
    ("revoking another workspace's key", "mutation", "workspace_keys:revoke_api_key",
     lambda w: {"workspace_id": w.workspace, "key_id": w.other_key["id"]}, "owner", "NotFound"),
    # budgets: past it, no new run
    ("a negative budget", "mutation", "workspaces:set_budget", lambda w: {"workspace_id": w.workspace, "monthly_budget_usd": -1},
     "owner", "InvalidArgument"),
]


@pytest.mark.parametrize("what, kind, path, make_args, who, says", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_by_name_and_nothing_is_written(w, what, kind, path, make_args, who, says):
    caller = getattr(w, who)
    args = make_args(w)
    before = w.node.engine.store.latest_ts()
    with pytest.raises(FunctionError) as refused:
        w.act(path, args, caller) if kind == "action" else call(w.node, kind, path, args, caller)
    error = getattr(refused.value, "data", None) or str(refused.value)
    text = error["code"] + " " + error["message"] if isinstance(error, dict) else error
    assert says in text, f"{what}: {text}"
    assert w.node.engine.store.latest_ts() == before, f"{what} wrote something"


def test_a_budget_reached_refuses_new_runs_and_writes_nothing(w):
    call(w.node, "mutation", "workspaces:set_budget", {"workspace_id": w.workspace, "monthly_budget_usd": 0.0}, w.owner)
    before = w.node.engine.store.latest_ts()
    with pytest.raises(FunctionError) as refused:
        call(w.node, "mutation", "sandbox_runs:create", {"workspace_id": w.workspace, "thread_id": w.thread}, w.member)
    error = refused.value.data  # type: ignore[attr-defined]
    assert error["code"] == "BudgetExceeded" and "of its monthly budget of $0.00" in error["message"]
    assert "raise the budget" in error["message"]
    assert w.node.engine.store.latest_ts() == before


def test_an_internal_move_out_of_a_terminal_state_is_refused_and_writes_nothing(w):
    before = w.node.engine.store.latest_ts()
    for status in ("running", "succeeded", "failed"):
        with pytest.raises(FunctionError) as refused:
            internal(w.node, "mutation", "sandbox_runs:update", {"sandbox_run_id": w.ended, "status": status})
        assert f"is canceled and cannot become {status}" in str(refused.value.data)  # type: ignore[attr-defined]
    assert w.node.engine.store.latest_ts() == before
