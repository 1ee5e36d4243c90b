"""Workspace-scoped API keys with the official `e2b` SDK against a node with real sandboxes (local
provider): a key sees and drives exactly its workspace's sandboxes — its runs' and those it creates —
in every listing and call; another workspace's sandbox is E2B's 404. SQLite and PostgreSQL."""

from __future__ import annotations

import itertools

import pytest
from e2b import AuthenticationException, Sandbox, SandboxNotFoundException

from ..app.runs_support import Runs, runs_fixture  # noqa: F401 - gives tests `runs`
from ..app.tenancy_support import call, code, refusal
from ..interop.e2b_target import E2bTarget


def key_of(runs: Runs, workspace: str, caller) -> str:  # type: ignore[no-untyped-def]
    made = runs.act("workspace_keys:create_api_key", {"workspace_id": workspace, "name": "ci"}, caller)
    assert made["key"].startswith("e2b_") and "hash" not in made
    return str(made["key"])


def target(runs: Runs, key: str) -> E2bTarget:
    return E2bTarget(url=runs.served.url, api_key=key, other_key=key, revoked_key=key, real_users=True)


def listed(runs: Runs, key: str) -> set[str]:
    with target(runs, key).environment():
        return {s.sandbox_id for s in Sandbox.list().next_items()}


def test_a_workspace_key_sees_and_drives_its_workspaces_sandboxes_only(runs):
    mine, theirs = key_of(runs, runs.workspace, runs.admin), key_of(runs, runs.other, runs.outsider)
    run_sandbox = runs.run(runs.start())["sandbox_id"]
    with target(runs, mine).environment():
        sbx = Sandbox.connect(run_sandbox)  # the run's sandbox, through the SDK
        assert sbx.commands.run("echo from the sdk").stdout == "from the sdk\n"
        made = Sandbox.create(timeout=120)  # one the key creates belongs to the workspace too
    doc = runs.sandbox(made.sandbox_id)
    assert doc["owner"] == f"workspace|{runs.workspace}"
    assert call(runs.node, "query", "sandboxes:get", {"sandbox_id": made.sandbox_id}, runs.member)["state"] == "running"
    assert listed(runs, mine) == {run_sandbox, made.sandbox_id}
    assert listed(runs, theirs) == set()
    with target(runs, theirs).environment():
        for sandbox_id in (run_sandbox, made.sandbox_id):
            with pytest.raises(SandboxNotFoundException):
                Sandbox.connect(sandbox_id)
            assert Sandbox.kill(sandbox_id) is False  # E2B's 404
    assert runs.sandbox(run_sandbox)["state"] == "running"
    with target(runs, mine).environment():
        assert Sandbox.kill(made.sandbox_id) is True


def test_no_key_crosses_workspaces(runs):
    """A table: every key × every workspace's sandbox — visible exactly when they are the same workspace."""
    keys = {runs.workspace: key_of(runs, runs.workspace, runs.owner), runs.other: key_of(runs, runs.other, runs.outsider)}
    sandboxes = {}
    for workspace, key in keys.items():
        with target(runs, key).environment():
            sandboxes[workspace] = Sandbox.create(timeout=120).sandbox_id
    for (key_ws, key), (box_ws, box) in itertools.product(keys.items(), sandboxes.items()):
        with target(runs, key).environment():
            if key_ws == box_ws:
                assert Sandbox.get_info(box).sandbox_id == box
            else:
                with pytest.raises(SandboxNotFoundException):
                    Sandbox.get_info(box)
        assert (box in listed(runs, key)) == (key_ws == box_ws)
    for workspace, key in keys.items():
        with target(runs, key).environment():
            Sandbox.kill(sandboxes[workspace])


def test_only_owners_and_admins_manage_keys_and_a_revoked_key_is_refused(runs):
    for who in (runs.member, runs.outsider):
        error = runs.act_refusal("workspace_keys:create_api_key", {"workspace_id": runs.workspace, "name": "x"}, who)
        assert code(error) in ("Forbidden", "NotFound")
        assert code(refusal(runs.node, "query", "workspace_keys:list_api_keys", {"workspace_id": runs.workspace}, who)) in (
            "Forbidden", "NotFound")
    key = key_of(runs, runs.workspace, runs.owner)
    error = runs.act_refusal("workspace_keys:create_api_key", {"workspace_id": runs.workspace, "name": "ci"}, runs.admin)
    assert error["code"] == "ApiKeyExists"
    [listed_key] = call(runs.node, "query", "workspace_keys:list_api_keys", {"workspace_id": runs.workspace}, runs.admin)
    assert listed_key["name"] == "ci" and listed_key["revoked"] is None and key not in str(listed_key)
    # A key of another workspace is no key of this one.
    other_key = runs.act("workspace_keys:create_api_key", {"workspace_id": runs.other, "name": "o"}, runs.outsider)
    error = refusal(runs.node, "mutation", "workspace_keys:revoke_api_key",
                    {"workspace_id": runs.workspace, "key_id": other_key["id"]}, runs.owner)
    assert error["code"] == "NotFound"
    revoked = call(runs.node, "mutation", "workspace_keys:revoke_api_key",
                   {"workspace_id": runs.workspace, "key_id": listed_key["id"]}, runs.admin)
    assert revoked["revoked"] is not None and revoked["already_revoked"] is False
    assert {"api_key.create", "api_key.revoke"} <= {e["action"] for e in runs.audit()}
    with target(runs, key).environment(), pytest.raises(AuthenticationException):
        Sandbox.list().next_items()
    assert listed(runs, other_key["key"]) == set()  # the other workspace's key still works


def test_a_command_through_the_sdk_is_the_runs_activity_and_postpones_its_idle_end(runs):
    from ..engine.served import wait_until

    key = key_of(runs, runs.workspace, runs.admin)
    run_id = runs.start(idle_timeout_ms=30_000)
    first = runs.run(run_id)["sandbox"]
    assert first["idle_at"] == first["last_activity"] + 30_000
    runs.clock.advance(20)
    with target(runs, key).environment():
        sbx = Sandbox.connect(first["sandbox_id"])
        assert sbx.commands.run("echo busy").stdout == "busy\n"
    wait_until(lambda: runs.run(run_id)["sandbox"]["last_activity"] >= first["last_activity"] + 20_000,
               what="the command counted as the run's activity")
    shown = runs.run(run_id)["sandbox"]  # what a member sees of the run: its last activity, its idle end
    assert shown["idle_at"] == shown["last_activity"] + 30_000 and shown["idle_at"] >= first["idle_at"] + 20_000
    runs.clock.advance(16)  # past sandbox_touch_interval, so this activity is written at once
    with target(runs, key).environment():  # a file written through envd counts too
        Sandbox.connect(first["sandbox_id"]).files.write("/home/user/notes.txt", "more work")
    wait_until(lambda: runs.run(run_id)["sandbox"]["last_activity"] >= shown["last_activity"] + 16_000,
               what="the file write counted as the run's activity")
    runs.clock.advance(20)  # 56 s since it started, 20 since the write: idle by the first deadlines, not by the last
    runs.tick("sandboxes:pause_idle")
    assert runs.run(run_id)["status"] == "running"
    runs.clock.advance(11)
    runs.tick("sandboxes:pause_idle")
    ended = runs.run(run_id)
    assert ended["status"] == "canceled" and ended["error"]["code"] == "IdleTimeout"


def test_extending_a_runs_sandbox_never_outlives_the_runs_maximum_duration(runs):
    """The run's limit is its sandbox's timer: the SDK's connect and set_timeout may not push it further."""
    key = key_of(runs, runs.workspace, runs.owner)
    run = runs.run(runs.start())
    before = runs.sandbox(run["sandbox_id"])["end_at"]
    with target(runs, key).environment():
        sbx = Sandbox.connect(run["sandbox_id"], timeout=3600)
        sbx.set_timeout(3600)
    after = runs.sandbox(run["sandbox_id"])["end_at"]
    assert after == before  # a 2-minute job stays a 2-minute job
    with target(runs, key).environment():
        made = Sandbox.create(timeout=60)  # a sandbox of no run: its timeout is the key's to set
        made.set_timeout(600)
    assert runs.sandbox(made.sandbox_id)["end_at"] > runs.sandbox(run["sandbox_id"])["end_at"]
    with target(runs, key).environment():
        made.kill()
