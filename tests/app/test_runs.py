"""Sandbox runs: started by a member in a real sandbox (local provider), moved by the state machine,
ended with their sandbox, visible to the workspace's members only, refused past the budget.
SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from corral.engine.auth import Caller
from corral.engine.errors import FunctionError

from .runs_support import PAGE, runs_fixture  # noqa: F401 - gives tests `runs`
from .tenancy_support import call, code, internal, refusal


def test_a_member_starts_a_run_that_boots_then_runs_in_its_workspaces_sandbox(runs):
    run_id = runs.start(max_duration_ms=60_000, idle_timeout_ms=30_000)
    run = runs.run(run_id)
    assert run["status"] == "running" and run["sandbox_id"]
    assert [h["status"] for h in run["history"]] == ["booting", "running"]
    sandbox = runs.sandbox(run["sandbox_id"])
    assert sandbox["owner"] == f"workspace|{runs.workspace}" and sandbox["state"] == "running"
    # One timer: the run's limits are its sandbox's end and idle policy.
    assert sandbox["end_at"] - sandbox["started_at"] == pytest.approx(60_000, abs=2_000)
    assert sandbox["idle_timeout"] == 30_000 and sandbox["on_idle"] == "kill"
    # Every member reaches the sandbox through Corral's functions; an outsider does not.
    for who in (runs.owner, runs.admin, runs.member):
        assert call(runs.node, "query", "sandboxes:get", {"sandbox_id": run["sandbox_id"]}, who)["state"] == "running"
    assert call(runs.node, "query", "sandboxes:get", {"sandbox_id": run["sandbox_id"]}, runs.outsider) is None
    assert runs.run(run_id, runs.outsider) is None
    assert [r["_id"] for r in runs.runs()] == [run_id]
    call(runs.node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": run_id}, runs.member)


def test_defaults_come_from_settings_per_kind(runs):
    job = runs.run(runs.start())
    attempt = runs.run(runs.start(kind="attempt"))
    assert job["max_duration_ms"] == 120_000 and job["idle_timeout_ms"] == 900_000
    assert attempt["max_duration_ms"] == 1_800_000
    assert [r["_id"] for r in runs.runs()] == [attempt["_id"], job["_id"]]  # newest first
    call(runs.node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": job["_id"]}, runs.member)
    assert [r["_id"] for r in runs.runs(status="running")] == [attempt["_id"]]
    assert [r["_id"] for r in runs.runs(status="canceled")] == [job["_id"]]
    by_thread = call(runs.node, "query", "sandbox_runs:list_by_thread", {"thread_id": runs.thread, "paginationOpts": PAGE},
                     runs.admin)
    assert [r["_id"] for r in by_thread["page"]] == [attempt["_id"], job["_id"]] and by_thread["isDone"]
    error = refusal(runs.node, "query", "sandbox_runs:list_by_workspace",
                    {"workspace_id": runs.workspace, "paginationOpts": PAGE, "status": "paused"}, runs.member)
    assert "expected one of 'booting', 'running', 'succeeded', 'failed', 'canceled'" in str(error)
    call(runs.node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": attempt["_id"]}, runs.member)


def test_cancel_kills_the_sandbox_records_who_and_is_audited(runs):
    run_id = runs.start()
    sandbox_id = runs.run(run_id)["sandbox_id"]
    canceled = call(runs.node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": run_id}, runs.member)
    assert canceled["status"] == "canceled" and canceled["error"]["code"] == "Canceled"
    assert canceled["history"][-1]["reason"] == "canceled by https://issuer.test|mem"
    assert runs.sandbox(sandbox_id)["state"] == "killed"
    assert "run.cancel" in [e["action"] for e in runs.audit()]
    # Terminal states have no exits; the refusal names both states, and nothing is written.
    error = refusal(runs.node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": run_id}, runs.member)
    assert error["code"] == "InvalidTransition" and "canceled and cannot become canceled" in error["message"]
    error = internal_error(runs, {"sandbox_run_id": run_id, "status": "running"})
    assert "is canceled and cannot become running" in error
    assert runs.run(run_id)["history"] == canceled["history"]


def internal_error(runs, args):
    with pytest.raises(FunctionError) as err:
        internal(runs.node, "mutation", "sandbox_runs:update", args)
    return str(getattr(err.value, "data", err.value))


def test_update_is_internal_and_checks_the_state_machine(runs):
    run_id = call(runs.node, "mutation", "sandbox_runs:create", {"workspace_id": runs.workspace, "thread_id": runs.thread},
                  runs.member)
    assert runs.run(run_id)["status"] == "booting"
    with pytest.raises(FunctionError):  # internal: no client moves a run
        call(runs.node, "mutation", "sandbox_runs:update", {"sandbox_run_id": run_id, "status": "failed"}, runs.owner)
    assert "is booting and cannot become succeeded" in internal_error(runs, {"sandbox_run_id": run_id, "status": "succeeded"})
    assert "'paused'" in internal_error(runs, {"sandbox_run_id": run_id, "status": "paused"})
    assert runs.run(run_id)["status"] == "booting"


def test_a_sandbox_that_fails_to_start_fails_the_run_with_a_structured_error(runs):
    error = runs.act_refusal("sandbox_runs:start", {"workspace_id": runs.workspace, "thread_id": runs.thread,
                                                    "template": "no-such-template"}, runs.member)
    assert error["code"] == "TemplateNotFound"
    run = runs.runs()[0]
    assert run["status"] == "failed" and run["error"]["code"] == "TemplateNotFound" and run["sandbox_id"] is None
    assert run["_id"] == error["sandbox_run_id"]


@pytest.mark.parametrize("args, wanted", [
    ({"kind": "marathon"}, "kind"),
    ({"max_duration_ms": 10}, "max_duration_ms"),
    ({"idle_timeout_ms": -1}, "idle_timeout_ms"),
    ({"template": ""}, "template"),
])
def test_bad_input_is_refused_before_anything_is_written(runs, args, wanted):
    error = runs.act_refusal("sandbox_runs:start", {"workspace_id": runs.workspace, "thread_id": runs.thread, **args},
                             runs.member)
    assert wanted in str(error)
    assert runs.runs() == []


def test_outsiders_and_the_signed_out_start_nothing(runs):
    for who in (runs.outsider, Caller.anonymous()):
        error = runs.act_refusal("sandbox_runs:start", {"workspace_id": runs.workspace, "thread_id": runs.thread}, who)
        assert code(error) in ("NotFound", "Unauthenticated")
    # Another workspace's thread is no thread of this one.
    error = runs.act_refusal("sandbox_runs:start", {"workspace_id": runs.workspace, "thread_id": runs.other_thread},
                             runs.member)
    assert code(error) == "NotFound"
    assert runs.runs() == []
    error = refusal(runs.node, "query", "sandbox_runs:list_by_workspace",
                    {"workspace_id": runs.workspace, "paginationOpts": PAGE}, runs.outsider)
    assert code(error) == "NotFound"


def test_a_killed_sandbox_ends_its_run_in_the_same_transaction(runs):
    run_id = runs.start()
    sandbox_id = runs.run(run_id)["sandbox_id"]
    internal(runs.node, "mutation", "sandboxes:admin_kill", {"sandbox_id": sandbox_id})
    run = runs.run(run_id)
    assert run["status"] == "canceled" and run["error"]["code"] == "SandboxKilled"


def test_cost_is_billed_for_running_time_and_summed_per_workspace_and_a_budget_refuses_new_runs(runs):
    run_id = runs.start()
    runs.clock.advance(100)
    live = runs.run(run_id)["cost"]
    assert live["running_ms"] >= 100_000 and live["usd"] > 0
    call(runs.node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": run_id}, runs.member)
    ended = runs.run(run_id)["cost"]
    # 2 vCPU × $0.000014 + 0.5 GiB × $0.0000045, per second.
    assert ended["usd"] == pytest.approx(ended["running_ms"] / 1000 * (2 * 0.000014 + 0.5 * 0.0000045), rel=1e-6)
    usage = call(runs.node, "query", "sandbox_runs:usage", {"workspace_id": runs.workspace}, runs.member)
    assert usage["runs"] == 1 and usage["usd"] == pytest.approx(ended["usd"])
    internal_set_budget(runs, ended["usd"] / 2)
    error = runs.act_refusal("sandbox_runs:start", {"workspace_id": runs.workspace, "thread_id": runs.thread}, runs.member)
    assert error["code"] == "BudgetExceeded" and "monthly budget" in error["message"]
    assert len(runs.runs()) == 1


def internal_set_budget(runs, usd):
    call(runs.node, "mutation", "workspaces:set_budget", {"workspace_id": runs.workspace, "monthly_budget_usd": usd}, runs.owner)


def test_paused_time_is_billed_at_the_storage_rate(runs):
    from ..runner.harness import fleet_of, on_loop

    run_id = runs.start(kind="thread")
    run = runs.run(run_id)
    owner = f"workspace|{runs.workspace}"
    fleet = fleet_of(runs.served)
    runs.clock.advance(10)
    on_loop(runs.served, fleet.pause(owner, run["sandbox_id"]))
    runs.clock.advance(100)
    on_loop(runs.served, fleet.connect(owner, run["sandbox_id"], 600))
    runs.clock.advance(10)
    ended = call(runs.node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": run_id}, runs.member)["cost"]
    assert ended["paused_ms"] == pytest.approx(100_000, abs=2_000)
    assert ended["running_ms"] == pytest.approx(20_000, abs=2_000)
    disk_gib = runs.sandbox(run["sandbox_id"])["limits"]["disk_mb"] / 1024
    running = ended["running_ms"] / 1000 * (2 * 0.000014 + 0.5 * 0.0000045)
    paused = ended["paused_ms"] / 1000 * (0.5 + disk_gib) * 0.0000001
    assert ended["usd"] == pytest.approx(running + paused, rel=1e-6)


def test_a_member_finishes_a_run_as_succeeded_or_failed_its_sandbox_killed_and_it_is_audited(runs):
    run_id = runs.start()
    sandbox_id = runs.run(run_id)["sandbox_id"]
    assert code(refusal(runs.node, "mutation", "sandbox_runs:finish", {"sandbox_run_id": run_id, "status": "succeeded"},
                        runs.outsider)) == "NotFound"
    error = refusal(runs.node, "mutation", "sandbox_runs:finish", {"sandbox_run_id": run_id, "status": "canceled"}, runs.member)
    assert "expected one of 'succeeded', 'failed'" in str(error)
    runs.clock.advance(30)
    done = call(runs.node, "mutation", "sandbox_runs:finish", {"sandbox_run_id": run_id, "status": "succeeded"}, runs.member)
    assert done["status"] == "succeeded" and done["error"] is None and done["ended_at"] is not None
    assert done["history"][-1]["reason"] == "succeeded by https://issuer.test|mem"
    assert done["cost"]["running_ms"] >= 30_000 and done["cost"]["usd"] > 0
    assert runs.sandbox(sandbox_id)["state"] == "killed"
    assert runs.run(run_id)["status"] == "succeeded"  # the kill that followed did not make it canceled
    entry = next(e for e in runs.audit() if e["action"] == "run.finish")
    assert entry["target"] == run_id and entry["after"] == {"status": "succeeded", "message": None}
    before = runs.run(run_id)["history"]
    error = refusal(runs.node, "mutation", "sandbox_runs:finish", {"sandbox_run_id": run_id, "status": "failed"}, runs.member)
    assert error["code"] == "InvalidTransition" and "is succeeded and cannot become failed" in error["message"]
    assert runs.run(run_id)["history"] == before
    failed_id = runs.start()
    failed = call(runs.node, "mutation", "sandbox_runs:finish",
                  {"sandbox_run_id": failed_id, "status": "failed", "message": "tests did not pass"}, runs.admin)
    assert failed["status"] == "failed" and failed["error"] == {"code": "RunFailed", "message": "tests did not pass"}
    assert failed["history"][-1]["reason"] == "failed by https://issuer.test|adm: tests did not pass"
    booting = call(runs.node, "mutation", "sandbox_runs:create", {"workspace_id": runs.workspace, "thread_id": runs.thread},
                   runs.member)
    error = refusal(runs.node, "mutation", "sandbox_runs:finish", {"sandbox_run_id": booting, "status": "succeeded"}, runs.member)
    assert error["code"] == "InvalidTransition" and "is booting and cannot become succeeded" in error["message"]
