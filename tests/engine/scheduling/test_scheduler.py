"""The scheduler, on SQLite and on PostgreSQL: `ctx.scheduler.run_after/run_at/cancel`, the
`_scheduled_functions` table, exactly-once mutations, at-most-once actions, restarts, two nodes.

Time is the node's clock: tests advance it instead of sleeping, and wait for what they expect
with bounded polling.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from corral.engine.auth import Caller, identity_from_claims
from corral.engine.clock import Clock
from corral.engine.errors import FunctionError

from ...conftest import ROOT
from ..served import ADMIN, ServedNode, serve, served, wait_until
from ..sync_client import SyncClient

SERVICES = ROOT / "tests" / "fixtures" / "services"


@pytest.fixture
def node(tmp_path: Path, database_url: str | None):  # type: ignore[no-untyped-def]
    with served(tmp_path / "data", database_url=database_url, functions=SERVICES) as running:
        yield running


def runs(node: ServedNode, label: str) -> list[dict]:
    return node.call("query", "jobs:runs", {"label": label})  # type: ignore[no-any-return]


def job(node: ServedNode, job_id: str) -> dict:
    return node.call("query", "jobs:job", {"job_id": job_id})  # type: ignore[no-any-return]


def state(node: ServedNode, job_id: str) -> str:
    return job(node, job_id)["state"]["kind"]  # type: ignore[no-any-return]


def settled(node: ServedNode, job_id: str, kind: str = "success") -> dict:
    wait_until(lambda: state(node, job_id) == kind, what=f"job {job_id} reaching {kind}")
    return job(node, job_id)


def barrier(node: ServedNode, label: str = "barrier") -> None:
    """Schedule a job due now and wait for it: every job due before it has been dispatched too."""
    job_id = node.call("mutation", "jobs:schedule", {"label": label})
    settled(node, job_id)


# -- scheduling from a mutation ---------------------------------------------------------

def test_a_job_runs_once_and_its_record_shows_name_args_times_and_state(node):
    job_id = node.call("mutation", "jobs:schedule", {"label": "hello"})
    done = settled(node, job_id)
    assert len(runs(node, "hello")) == 1
    assert done["name"] == "jobs:record"
    assert done["args"] == {"label": "hello"}
    assert done["scheduledTime"] <= done["completedTime"]
    assert done["state"] == {"kind": "success"}
    listed = node.jobs()
    assert [j["_id"] for j in listed] == [job_id]


def test_a_delayed_job_waits_for_the_engine_clock(node):
    job_id = node.call("mutation", "jobs:schedule", {"label": "later", "delay": 3600})
    assert state(node, job_id) == "pending"
    node.clock.advance(3500)
    barrier(node)
    assert state(node, job_id) == "pending" and runs(node, "later") == []
    node.clock.advance(100)
    settled(node, job_id)
    assert len(runs(node, "later")) == 1


def test_run_at_takes_a_datetime_or_seconds_and_a_past_time_runs_now(node):
    now = node.clock.time()
    past = node.call("mutation", "jobs:schedule_at", {"label": "past", "when": now - 60})
    settled(node, past)
    future = node.call("mutation", "jobs:schedule_at", {"label": "future", "when": now + 120})
    node.clock.advance(60)
    barrier(node)
    assert state(node, future) == "pending"
    assert job(node, future)["scheduledTime"] == pytest.approx((now + 120) * 1000)
    node.clock.advance(61)
    settled(node, future)


def test_a_mutation_that_fails_schedules_nothing(node):
    with pytest.raises(FunctionError, match="changed my mind"):
        node.call("mutation", "jobs:schedule_then_fail", {"label": "never"})
    barrier(node)
    assert [j["name"] for j in node.jobs()] == ["jobs:record"]  # only the barrier
    assert runs(node, "never") == []


def test_a_failing_scheduled_mutation_is_marked_failed_and_its_writes_are_rolled_back(node):
    job_id = node.call("mutation", "jobs:schedule", {"label": "doomed", "target": "jobs:fail"})
    done = settled(node, job_id, "failed")
    assert "doomed failed on purpose" in done["state"]["error"]
    assert done["completedTime"] >= done["scheduledTime"]
    assert runs(node, "doomed") == []


def test_scheduled_mutations_may_schedule_more(node):
    node.call("mutation", "jobs:schedule_chain", {"label": "chain", "length": 4})
    wait_until(lambda: all(len(runs(node, f"chain-{i}")) == 1 for i in range(5)), what="the whole chain")
    assert len([j for j in node.jobs() if j["name"] == "jobs:chain"]) == 5


def test_scheduled_actions_run_at_most_once_and_failures_are_recorded(node):
    ok = node.call("mutation", "jobs:schedule", {"label": "acted", "target": "jobs:act"})
    broken = node.call("mutation", "jobs:schedule", {"label": "oops", "target": "jobs:act_fail"})
    settled(node, ok)
    failed = settled(node, broken, "failed")
    assert "oops broke" in failed["state"]["error"]
    assert len(runs(node, "acted")) == 1


def test_a_running_action_shows_in_progress(node):
    job_id = node.call("mutation", "jobs:schedule", {"label": "gated", "target": "jobs:wait_for_gate"})
    wait_until(lambda: state(node, job_id) == "inProgress", what="the action starting")
    node.call("mutation", "jobs:open_gate", {"name": "gated"})
    settled(node, job_id)
    assert len(runs(node, "gated")) == 1


def test_cancel_stops_a_pending_job_and_leaves_finished_ones_alone(node):
    pending = node.call("mutation", "jobs:schedule", {"label": "canceled", "delay": 60})
    node.call("mutation", "jobs:cancel", {"job_id": pending})
    canceled = job(node, pending)
    assert canceled["state"] == {"kind": "canceled"} and "completedTime" in canceled
    node.call("mutation", "jobs:cancel", {"job_id": pending})  # again: nothing changes
    node.clock.advance(61)
    barrier(node)
    assert runs(node, "canceled") == [] and state(node, pending) == "canceled"
    done = node.call("mutation", "jobs:schedule", {"label": "done"})
    settled(node, done)
    node.call("mutation", "jobs:cancel", {"job_id": done})
    assert state(node, done) == "success"


def test_scheduling_and_canceling_from_an_action(node):
    later = node.call("action", "jobs:schedule_from_action", {"label": "from action", "delay": 30})
    assert state(node, later) == "pending"
    node.call("action", "jobs:cancel_from_action", {"job_id": later})
    assert state(node, later) == "canceled"
    now = node.call("action", "jobs:schedule_from_action", {"label": "from action now"})
    settled(node, now)
    assert len(runs(node, "from action now")) == 1


def test_auth_does_not_carry_into_scheduled_functions(node):
    user = Caller.user(identity_from_claims({"iss": "https://issuer.example", "sub": "ada"}))
    job_id = node.call("mutation", "jobs:schedule", {"label": "as ada"}, caller=user)
    settled(node, job_id)
    assert [r["who"] for r in runs(node, "as ada")] == [None]


def test_a_live_query_of_a_job_follows_its_state(node):
    job_id = node.call("mutation", "jobs:schedule", {"label": "watched", "delay": 10})
    client = SyncClient(node.url)
    try:
        q = client.subscribe("jobs:job", {"job_id": job_id})
        client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
        assert client.results[q]["state"] == {"kind": "pending"}
        node.clock.advance(10)
        client.recv_until(lambda m: m["type"] == "Transition" and client.results[q]["state"] == {"kind": "success"}, timeout=15)
    finally:
        client.close()


def test_finished_jobs_are_forgotten_after_the_retention_and_pending_ones_kept(node):
    done = node.call("mutation", "jobs:schedule", {"label": "old"})
    settled(node, done)
    far = node.call("mutation", "jobs:schedule", {"label": "far", "delay": 30 * 86400})
    node.clock.advance(7 * 86400 + node.node.settings.maintenance_interval + 1)
    wait_until(lambda: done not in {j["_id"] for j in node.jobs()}, what="the old job being forgotten")
    assert state(node, far) == "pending"


# -- restarts -------------------------------------------------------------------------------

def test_jobs_survive_a_restart_of_the_node(tmp_path, database_url):
    clock = Clock()
    first = serve(tmp_path / "data", database_url=database_url, functions=SERVICES, clock=clock)
    try:
        mutation_job = first.call("mutation", "jobs:schedule", {"label": "after restart", "delay": 600})
        action_job = first.call("mutation", "jobs:schedule", {"label": "action after restart", "delay": 600, "target": "jobs:act"})
    finally:
        first.stop()
    with served(tmp_path / "data", database_url=database_url, functions=SERVICES, clock=clock) as second:
        assert state(second, mutation_job) == "pending"
        clock.advance(600)
        settled(second, mutation_job)
        settled(second, action_job)
        assert len(runs(second, "after restart")) == 1 and len(runs(second, "action after restart")) == 1


def test_an_action_cut_short_by_a_stop_is_marked_failed_and_never_rerun(tmp_path, database_url):
    clock = Clock()
    first = serve(tmp_path / "data", database_url=database_url, functions=SERVICES, clock=clock)
    try:
        job_id = first.call("mutation", "jobs:schedule", {"label": "cut short", "target": "jobs:wait_for_gate"})
        wait_until(lambda: state(first, job_id) == "inProgress", what="the action starting")
    finally:
        first.stop()
    with served(tmp_path / "data", database_url=database_url, functions=SERVICES, clock=clock) as second:
        clock.advance(second.node.settings.maintenance_interval)  # PostgreSQL: the next check for stopped nodes
        failed = settled(second, job_id, "failed")
        assert "stopped before it finished" in failed["state"]["error"]
        second.call("mutation", "jobs:open_gate", {"name": "cut short"})
        barrier(second)
        assert runs(second, "cut short") == []


# -- bad input: the scheduling mutation fails, not a later job --------------------------------

BAD_INPUT = {
    "unknown function": "there is no such function",
    "a query": "only mutations and actions can be scheduled",
    "not a function": "name a function by its 'module:function' path",
    "missing argument": "`label`",
    "wrong argument type": "`label`",
    "unknown argument": "extra",
    "arguments not an object": "are an object",
    "not a Convex value": "not a Convex value",
    "negative delay": "0 seconds or more",
    "NaN delay": "0 seconds or more",
    "delay as text": "a delay in seconds",
    "naive datetime": "timezone-aware",
    "milliseconds for run_at": "looks like milliseconds",
    "too many jobs": "at most 1000 jobs",
    "arguments too large": "too large",
    "cancel a bad id": "not the id of a scheduled function",
    "cancel an id of another table": "not the id of a scheduled function",
    "write the system table": "system table",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_scheduling_input_fails_the_scheduling_mutation(make_node, case):
    node = make_node(functions=SERVICES)

    def call(kind: str, path: str, args: dict) -> object:
        return asyncio.run(node.engine.call(kind, path, args, ADMIN))[0]

    with pytest.raises(FunctionError) as err:
        call("mutation", "jobs:schedule_bad", {"case": case})
    assert BAD_INPUT[case] in err.value.message
    assert call("query", "_system:scheduled_functions", {}) == []
    assert call("query", "jobs:runs", {"label": "before the bad call"}) == []  # the whole mutation was rolled back


def test_bad_scheduling_input_from_an_action_fails_the_action(node):
    with pytest.raises(FunctionError, match="0 seconds or more"):
        node.call("action", "jobs:schedule_from_action", {"label": "never", "delay": -1})
    with pytest.raises(FunctionError, match="not the id of a scheduled function"):
        node.call("action", "jobs:cancel_from_action", {"job_id": "nope"})
    assert node.jobs() == []


def test_canceling_a_job_that_does_not_exist_fails(node):
    job_id = node.call("mutation", "jobs:schedule", {"label": "gone"})
    settled(node, job_id)
    node.clock.advance(7 * 86400 + node.node.settings.maintenance_interval + 1)
    wait_until(lambda: node.jobs() == [], what="the job being forgotten")
    with pytest.raises(FunctionError, match="no such scheduled function"):
        node.call("mutation", "jobs:cancel", {"job_id": job_id})


# -- two nodes on one PostgreSQL --------------------------------------------------------------

def _post(url: str, route: str, body: dict, key: str | None = None) -> dict:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Convex {key}"
    response = httpx.post(url + route, content=orjson.dumps(body), headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["status"] == "success", payload
    return payload["value"]  # type: ignore[no-any-return]


def _int(value: object) -> int:
    if isinstance(value, dict) and "$integer" in value:
        return int.from_bytes(base64.b64decode(value["$integer"]), "little", signed=True)
    return int(value)  # type: ignore[call-overload]


def test_two_nodes_run_each_job_exactly_once(live_node_factory, postgres_url):
    node_a = live_node_factory(functions=SERVICES, database_url=postgres_url, env={"CORRAL_ENV_NODE_NAME": "a"})
    node_b = live_node_factory(functions=SERVICES, database_url=postgres_url, env={"CORRAL_ENV_NODE_NAME": "b"})
    mutations, actions = 300, 60
    for batch in range(3):
        _post(node_a.url if batch % 2 == 0 else node_b.url, "/api/mutation",
              {"path": "jobs:schedule_many", "args": {"prefix": f"m{batch}", "count": mutations // 3}})
    _post(node_b.url, "/api/mutation", {"path": "jobs:schedule_many", "args": {"prefix": "act", "count": actions, "target": "jobs:act"}})
    total = mutations + actions

    def done() -> bool:
        jobs = _post(node_a.url, "/api/query", {"path": "_system:scheduled_functions", "args": {"limit": 1000}}, node_a.admin_key)
        return len(jobs) == total and all(j["state"]["kind"] == "success" for j in jobs)

    wait_until(done, timeout=90, what=f"{total} jobs succeeding")
    recorded = _post(node_b.url, "/api/query", {"path": "jobs:runs", "args": {}})
    labels = [r["label"] for r in recorded]
    assert len(labels) == total and len(set(labels)) == total, "a job ran twice or not at all"
    assert {r["node"] for r in recorded} <= {"a", "b"}
    assert _int(_post(node_a.url, "/api/query", {"path": "jobs:run_count", "args": {}})) == total


def test_a_job_scheduled_at_a_time_runs_on_one_node_after_that_time(live_node_factory, postgres_url):
    nodes = [live_node_factory(functions=SERVICES, database_url=postgres_url, env={"CORRAL_ENV_NODE_NAME": name}) for name in "ab"]
    when = datetime.now(UTC).timestamp() + 1.0
    job_id = _post(nodes[0].url, "/api/mutation", {"path": "jobs:schedule_at", "args": {"label": "timed", "when": when}})

    def finished() -> dict | None:
        found = _post(nodes[1].url, "/api/query", {"path": "jobs:job", "args": {"job_id": job_id}})
        return found if found["state"]["kind"] == "success" else None

    done = wait_until(finished, timeout=30, what="the timed job")
    assert done["completedTime"] >= when * 1000
    assert len(_post(nodes[0].url, "/api/query", {"path": "jobs:runs", "args": {"label": "timed"}})) == 1
