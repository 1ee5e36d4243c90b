"""Removing a workspace on a node with real sandboxes (local provider), carried through by the
node's own scheduler: no document of it is left in any of Corral's tables, no stored file, no
live sandbox — neither in the engine's word nor on the runner — and its keys no longer work,
while another workspace is untouched. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from corral.engine.runtime import NewSandbox

from ..engine.served import wait_until
from ..runner.harness import held_state, on_loop, run
from .runs_support import Runs, runs_fixture  # noqa: F401 - gives tests `runs`
from .tenancy_support import call


def documents(runs: Runs) -> dict[str, list[dict[str, Any]]]:
    """Every document of every one of Corral's tables, read from the store."""
    found: dict[str, list[dict[str, Any]]] = {}
    with runs.node.engine.store.snapshot() as (conn, _ts):
        for table in runs.node.engine.schema.tables:
            if table.startswith("corral_"):
                found[table] = [{"_id": doc_id, **orjson.loads(text)}
                                for _key, doc_id, _ct, text in conn.scan(table, "by_creation_time", None, None, False, None)]
    return found


def of_workspace(docs: dict[str, list[dict[str, Any]]], workspace: str) -> dict[str, list[dict[str, Any]]]:
    """The documents that belong to a workspace: by `workspace_id`, as the workspace, or as its sandboxes' owner."""
    mine = {table: [d for d in rows if workspace in (d.get("workspace_id"), d["_id"])
                    or d.get("owner") == f"workspace|{workspace}"] for table, rows in docs.items()}
    return {table: rows for table, rows in mine.items() if rows}


def steady(docs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Documents without what a sandbox's runner reports on its own time (activity, whether it still holds it)."""
    return {table: [{k: v for k, v in d.items() if k not in ("live", "last_activity", "idle_at")} for d in rows]
            for table, rows in docs.items()}


def file_record(runs: Runs, storage_id: str) -> Any:
    with runs.node.engine.store.snapshot() as (conn, _ts):
        return runs.node.engine.files.read_record(conn, storage_id)


def storage_of(runs: Runs, artifact_id: str, caller: Any) -> str:
    found = on_loop(runs.served, runs.node.engine.call_query("corral/artifacts:stored", {"artifact_id": artifact_id},
                                                             caller, internal_ok=True))
    return str(found["storage_id"])


def test_removing_a_workspace_leaves_no_document_stored_file_or_live_sandbox_and_spares_the_others(runs):
    w, other = runs.workspace, runs.other
    # The workspace: runs (one with an artifact, one canceled), a key and a sandbox the key made,
    # an invitation, a budget, a signed URL, audit entries.
    run_id = runs.start()
    sandbox_id = runs.run(run_id)["sandbox_id"]
    assert run(runs.served, sandbox_id, "echo kept > /home/user/a.txt")[0] == 0
    artifact_id = runs.act("artifacts:capture", {"sandbox_run_id": run_id, "path": "a.txt"}, runs.member)
    storage_id = storage_of(runs, artifact_id, runs.member)
    url = runs.act("artifacts:download_url", {"artifact_id": artifact_id}, runs.member)["url"]
    call(runs.node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": runs.start()}, runs.member)
    key = runs.act("workspace_keys:create_api_key", {"workspace_id": w, "name": "ci"}, runs.owner)["key"]
    keyed = on_loop(runs.served, runs.node.engine.sandboxes.create(f"workspace|{w}", NewSandbox()))["sandbox_id"]
    call(runs.node, "mutation", "workspace_members:add_member", {"workspace_id": w, "email": "new@example.com",
                                                                "role": "member"}, runs.owner)
    call(runs.node, "mutation", "workspaces:set_budget", {"workspace_id": w, "monthly_budget_usd": 10.0}, runs.owner)
    # Another workspace, with the same kinds of things.
    other_run = runs.start(runs.outsider, workspace_id=other, thread_id=runs.other_thread)
    other_sandbox = runs.run(other_run, runs.outsider)["sandbox_id"]
    assert run(runs.served, other_sandbox, "echo theirs > /home/user/b.txt")[0] == 0
    other_artifact = runs.act("artifacts:capture", {"sandbox_run_id": other_run, "path": "b.txt"}, runs.outsider)
    other_key = runs.act("workspace_keys:create_api_key", {"workspace_id": other, "name": "ci"}, runs.outsider)["key"]
    before = documents(runs)
    held = {table: len(rows) for table, rows in of_workspace(before, w).items()}
    assert {"corral_workspaces", "corral_workspace_members", "corral_invitations", "corral_threads", "corral_audit_log",
            "corral_sandbox_runs", "corral_artifacts", "corral_workspace_api_keys", "corral_workspace_usage",
            "corral_sandboxes"} <= held.keys()
    theirs = of_workspace(before, other)

    call(runs.node, "mutation", "workspaces:remove", {"workspace_id": w}, runs.owner)
    wait_until(lambda: not of_workspace(documents(runs), w).get("corral_workspaces"), what="the scheduler removing the workspace")

    left = of_workspace(documents(runs), w)
    # Its sandboxes' documents stay as the record of killed sandboxes (forgotten after sandbox_retention):
    # none is live, and the runner holds none of them.
    sandboxes = left.pop("corral_sandboxes", [])
    assert left == {}, f"documents of the removed workspace were left: {left}"
    assert {s["sandbox_id"] for s in sandboxes} >= {sandbox_id, keyed}
    assert {s["state"] for s in sandboxes} == {"killed"}
    for sid in (sandbox_id, keyed):
        wait_until(lambda s=sid: held_state(runs.served, s) is None, what="the runner killing the sandbox")
    assert file_record(runs, storage_id) is None
    assert httpx.get(url).status_code == 404  # its signed URL names nothing any more
    e2b = runs.served.url + "/e2b/sandboxes"
    assert httpx.get(e2b, headers={"X-API-KEY": key}).status_code == 401  # its keys are gone with it
    # The other workspace is untouched, and still works.
    assert steady(of_workspace(documents(runs), other)) == steady(theirs)
    assert held_state(runs.served, other_sandbox) is not None
    assert file_record(runs, storage_of(runs, other_artifact, runs.outsider)) is not None
    assert [s["sandboxID"] for s in httpx.get(e2b, headers={"X-API-KEY": other_key}).json()] == [other_sandbox]
    assert runs.act("artifacts:download", {"artifact_id": other_artifact}, runs.outsider)["data"] == b"theirs\n"
