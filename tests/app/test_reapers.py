"""The reapers and the sandbox timers a run's limits are: idle runs, runs stuck booting and runs past
their maximum duration are ended and their real sandboxes killed, by advancing the engine's clock
(never by sleeping). SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from corral.engine.auth import Caller

from ..engine.served import wait_until
from ..runner.harness import held_state, run
from .runs_support import runs_fixture  # noqa: F401 - gives tests `runs`
from .tenancy_support import Tenancy, call, internal


def test_an_idle_run_is_canceled_and_its_sandbox_killed_by_the_idle_timer(runs):
    run_id = runs.start(idle_timeout_ms=30_000)
    sandbox_id = runs.run(run_id)["sandbox_id"]
    runs.clock.advance(20)
    assert run(runs.served, sandbox_id, "echo busy")[0] == 0  # activity on the sandbox is the run's activity
    wait_until(lambda: runs.sandbox(sandbox_id)["last_activity"] >= runs.clock.now_ms() - 1000, what="activity recorded")
    runs.clock.advance(20)
    runs.tick("sandboxes:pause_idle")
    assert runs.run(run_id)["status"] == "running"  # 20 s since its last command: not idle yet
    runs.clock.advance(11)
    runs.tick("sandboxes:pause_idle")
    ended = runs.run(run_id)
    assert ended["status"] == "canceled" and ended["error"]["code"] == "IdleTimeout"
    assert ended["history"][-1]["reason"] == "idle" and "30 s" in ended["error"]["message"]
    assert runs.sandbox(sandbox_id)["state"] == "killed"
    wait_until(lambda: held_state(runs.served, sandbox_id) is None, what="the runner killing the sandbox")


def test_a_run_past_its_maximum_duration_fails_when_its_sandbox_times_out(runs):
    run_id = runs.start(max_duration_ms=60_000)
    sandbox_id = runs.run(run_id)["sandbox_id"]
    runs.clock.advance(61)
    runs.tick("sandboxes:expire")
    ended = runs.run(run_id)
    assert ended["status"] == "failed" and ended["error"]["code"] == "MaxDuration" and "60 s" in ended["error"]["message"]
    assert ended["cost"]["running_ms"] >= 60_000 and ended["cost"]["usd"] > 0
    wait_until(lambda: held_state(runs.served, sandbox_id) is None, what="the runner killing the sandbox")


def test_the_reaper_ends_an_overdue_run_whose_sandbox_timer_did_not_fire(runs):
    run_id = runs.start(max_duration_ms=60_000)
    sandbox_id = runs.run(run_id)["sandbox_id"]
    # its timer cannot fire: its runner stopped answering (the sandbox is lost), and the run goes on
    internal(runs.node, "mutation", "sandboxes:transition", {"sandbox_id": sandbox_id, "to": "lost"})
    runs.clock.advance(61)
    runs.tick("sandboxes:expire")
    assert runs.run(run_id)["status"] == "running"
    runs.tick("reapers:tick")  # (the node's own cron may have ticked first: what it ends is the same)
    ended = runs.run(run_id)
    assert ended["status"] == "failed" and ended["error"]["code"] == "MaxDuration"
    assert runs.sandbox(sandbox_id)["state"] == "killed"
    wait_until(lambda: held_state(runs.served, sandbox_id) is None, what="the runner killing the sandbox")


# -- without sandboxes: the node's crons do not run here, so every write is the test's -----------

@pytest.fixture
def tenancy(make_node, database_url):  # type: ignore[no-untyped-def]
    t = Tenancy(make_node(database_url=database_url, functions=None))
    t.thread = call(t.node, "mutation", "threads:create", {"workspace_id": t.workspace}, t.owner)
    return t


def tick(node):
    return asyncio.run(node.engine.call_action("corral/reapers:tick", {}, Caller.admin(), internal_ok=True))


def booting(t, n=1):
    return [call(t.node, "mutation", "sandbox_runs:create", {"workspace_id": t.workspace, "thread_id": t.thread}, t.member)
            for _ in range(n)]


def test_runs_stuck_booting_fail_after_the_boot_timeout_in_batches(tenancy):
    t = tenancy
    stuck = booting(t, 120)  # more than one batch
    t.node.clock.advance(299)
    assert tick(t.node) == {"candidates": 0, "ended": 0, "failed": 0}
    t.node.clock.advance(2)
    fresh = booting(t)[0]
    assert tick(t.node) == {"candidates": 120, "ended": 120, "failed": 0}
    for run_id in (stuck[0], stuck[-1]):
        run = call(t.node, "query", "sandbox_runs:get", {"sandbox_run_id": run_id}, t.member)
        assert run["status"] == "failed" and run["error"]["code"] == "BootTimeout"
        assert run["history"][-1]["reason"] == "boot_timeout"
    assert call(t.node, "query", "sandbox_runs:get", {"sandbox_run_id": fresh}, t.member)["status"] == "booting"
    usage = call(t.node, "query", "sandbox_runs:usage", {"workspace_id": t.workspace}, t.member)
    assert usage["runs"] == 120 and usage["usd"] == 0


def test_a_tick_that_finds_nothing_writes_nothing(tenancy):
    t = tenancy
    booting(t, 3)
    before = t.node.engine.store.latest_ts()
    for _ in range(3):
        assert tick(t.node)["candidates"] == 0
    assert t.node.engine.store.latest_ts() == before  # no transaction committed, not even an empty one


def test_one_run_that_cannot_be_ended_never_stops_the_others(make_node, database_url):
    """A real failure, not a stand-in: one stuck run's document is so near the document size limit
    that ending it (its history, error and cost grow it) is refused; its batch fails, is retried run
    by run, and every other run is ended."""
    import json

    limit = 4096
    t = Tenancy(make_node(database_url=database_url, functions=None, max_document_bytes=limit))
    t.thread = call(t.node, "mutation", "threads:create", {"workspace_id": t.workspace}, t.owner)
    stuck = booting(t, 5)
    doc = internal(t.node, "query", "sandbox_runs:lookup", {"sandbox_run_id": stuck[2]})
    padding = limit - len(json.dumps(doc)) - 40  # fits now; ending it adds well over 40 bytes
    internal(t.node, "mutation", "sandbox_runs:update", {"sandbox_run_id": stuck[2], "sandbox_id": "x" * padding})
    t.node.clock.advance(301)
    assert tick(t.node) == {"candidates": 5, "ended": 4, "failed": 1}
    statuses = [call(t.node, "query", "sandbox_runs:get", {"sandbox_run_id": r}, t.member)["status"] for r in stuck]
    assert statuses == ["failed", "failed", "booting", "failed", "failed"]


def test_a_run_whose_action_died_after_its_sandbox_booted_is_failed_and_the_sandbox_killed(runs):
    """The action asked for the sandbox and died before it could say so: the sandbox names its run
    (metadata), so the run knows it, and the boot reaper ends both."""
    from corral.engine.runtime import NewSandbox

    from ..runner.harness import on_loop

    run_id = call(runs.node, "mutation", "sandbox_runs:create", {"workspace_id": runs.workspace, "thread_id": runs.thread},
                  runs.member)
    owner = f"workspace|{runs.workspace}"
    made = on_loop(runs.served, runs.node.engine.sandboxes.create(owner, NewSandbox(metadata={"corral_run": run_id})))
    assert runs.run(run_id)["sandbox_id"] == made["sandbox_id"] and runs.run(run_id)["status"] == "booting"
    runs.clock.advance(301)
    runs.tick("reapers:tick")
    ended = runs.run(run_id)
    assert ended["status"] == "failed" and ended["error"]["code"] == "BootTimeout"
    assert runs.sandbox(made["sandbox_id"])["state"] == "killed"
    wait_until(lambda: held_state(runs.served, made["sandbox_id"]) is None, what="the runner killing the sandbox")


def test_a_sandbox_that_comes_up_for_a_run_canceled_while_booting_is_killed_at_once(runs):
    from corral.engine.runtime import NewSandbox

    from ..runner.harness import on_loop

    run_id = call(runs.node, "mutation", "sandbox_runs:create", {"workspace_id": runs.workspace, "thread_id": runs.thread},
                  runs.member)
    call(runs.node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": run_id}, runs.member)
    owner = f"workspace|{runs.workspace}"
    made = on_loop(runs.served, runs.node.engine.sandboxes.create(owner, NewSandbox(metadata={"corral_run": run_id})))
    assert made["state"] == "killed" and runs.run(run_id)["status"] == "canceled"
    wait_until(lambda: held_state(runs.served, made["sandbox_id"]) is None, what="the runner killing the sandbox")
