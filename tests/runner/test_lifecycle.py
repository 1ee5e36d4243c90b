"""A sandbox's life through the fleet, on the node's embedded runner (host provider): create, pause,
connect, kill, timeouts and idleness by advancing the engine's clock, retention, ownership,
placement, and a node restart re-adopting its sandboxes. SQLite and PostgreSQL where storage matters."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.engine.clock import Clock
from corral.fleet import InvalidAccessToken, ListQuery, ProviderUnavailable
from corral.sandbox.host import HostProvider
from corral.sandbox.protocol import (
    CapacityError,
    InvalidSpec,
    SandboxNotFound,
    SandboxSpec,
    SandboxStateError,
    TemplateNotFound,
)

from ..engine.served import wait_until
from .harness import (
    OTHER,
    OWNER,
    create,
    fleet_node,
    fleet_of,
    held_state,
    on_loop,
    record,
    run,
    state,
)


@pytest.fixture
def node(short_dir: Path, database_url: str | None):  # type: ignore[no-untyped-def]
    with fleet_node(short_dir / "data", database_url=database_url) as running:
        yield running


def test_create_records_the_sandbox_and_runs_commands(node):
    made = create(node, metadata={"user": "ada"}, envs={"X": "42"}, timeout=120)
    doc = record(node, made.sandbox_id)
    assert doc["state"] == "running" and doc["owner"] == OWNER and doc["runner"] == fleet_of(node).runner_name
    assert doc["metadata"] == {"user": "ada"} and doc["template"] == "base"
    assert made.end_at == pytest.approx(made.started_at + 120, abs=1)
    assert made.access_token and made.state == "running"
    assert run(node, made.sandbox_id, "echo $X") == (0, b"42\n")


def test_pause_and_connect_resume_with_memory_kept(node):
    made = create(node)
    fleet = fleet_of(node)
    on_loop(node, fleet.pause(OWNER, made.sandbox_id))
    assert state(node, made.sandbox_id) == "paused" and held_state(node, made.sandbox_id) == "paused"
    with pytest.raises(SandboxStateError):
        on_loop(node, fleet.pause(OWNER, made.sandbox_id))
    with pytest.raises(SandboxNotFound, match="paused"):
        run(node, made.sandbox_id, "true")  # no auto_resume: a paused sandbox is not there for envd
    before = node.clock.time()  # the engine's clock runs in real time between the reads: bracket, not approx
    resumed, was_paused = on_loop(node, fleet.connect(OWNER, made.sandbox_id, 600))
    assert was_paused and resumed.state == "running" and held_state(node, made.sandbox_id) == "running"
    assert before + 600 <= resumed.end_at <= node.clock.time() + 600
    again, was_paused = on_loop(node, fleet.connect(OWNER, made.sandbox_id, 10))  # never shortens
    assert not was_paused and again.end_at == resumed.end_at


def test_kill_is_final_and_leaves_nothing_on_the_runner(node):
    made = create(node)
    fleet = fleet_of(node)
    on_loop(node, fleet.kill(OWNER, made.sandbox_id))
    assert state(node, made.sandbox_id) == "killed" and held_state(node, made.sandbox_id) is None
    wait_until(lambda: record(node, made.sandbox_id)["live"] is False, what="the kill confirmed by the runner")
    for call in (fleet.kill(OWNER, made.sandbox_id), fleet.connect(OWNER, made.sandbox_id, 60),
                 fleet.data_plane(made.sandbox_id, made.access_token)):
        with pytest.raises(SandboxNotFound):
            on_loop(node, call)
    assert on_loop(node, fleet.get(OWNER, made.sandbox_id)).state == "killed"
    assert on_loop(node, fleet.list(OWNER, ListQuery())).records == []


def test_metrics_are_a_history_sampled_at_start_and_every_interval(node):
    made = create(node)
    fleet = fleet_of(node)

    def samples(start: float | None = None, end: float | None = None) -> list:
        return on_loop(node, fleet.metrics(OWNER, made.sandbox_id, start, end))

    first = samples()
    assert first and first[0].cpu_count >= 1  # sampled when it started
    node.clock.advance(node.node.settings.sandbox_metrics_interval)
    wait_until(lambda: len(samples()) > len(first), what="the next sample")
    history = samples()
    assert [m.timestamp for m in history] == sorted(m.timestamp for m in history)
    assert samples(start=history[-1].timestamp + 1) == []
    assert samples(end=history[0].timestamp) == history[:1]
    on_loop(node, fleet.pause(OWNER, made.sandbox_id))
    kept = samples()
    on_loop(node, fleet.executor.sample_running())  # what the runner does every interval
    assert samples() == kept  # a paused sandbox keeps its history and gets no new samples while frozen
    on_loop(node, fleet.kill(OWNER, made.sandbox_id))
    with pytest.raises(SandboxNotFound):
        samples()


def test_another_owners_sandbox_does_not_exist(node):
    made = create(node)
    fleet = fleet_of(node)
    for call in (fleet.get(OTHER, made.sandbox_id), fleet.kill(OTHER, made.sandbox_id),
                 fleet.pause(OTHER, made.sandbox_id), fleet.connect(OTHER, made.sandbox_id, 60),
                 fleet.set_timeout(OTHER, made.sandbox_id, 60)):
        with pytest.raises(SandboxNotFound):
            on_loop(node, call)
    assert on_loop(node, fleet.list(OTHER, ListQuery())).records == []
    assert state(node, made.sandbox_id) == "running"


def test_a_wrong_access_token_is_refused(node):
    made = create(node)
    with pytest.raises(InvalidAccessToken):
        run(node, made.sandbox_id, "true", token="nope")
    with pytest.raises(InvalidAccessToken):
        run(node, made.sandbox_id, "true", token="")
    insecure = create(node, secure=False)
    assert insecure.access_token == "" and run(node, insecure.sandbox_id, "echo open", token="") == (0, b"open\n")


def test_list_filters_by_metadata_and_state_and_pages(node):
    fleet = fleet_of(node)
    made = [create(node, metadata={"n": str(i), "team": "a" if i % 2 else "b"}) for i in range(5)]
    on_loop(node, fleet.pause(OWNER, made[0].sandbox_id))
    page = on_loop(node, fleet.list(OWNER, ListQuery(limit=2)))
    seen = [r.sandbox_id for r in page.records]
    while page.next_token:
        page = on_loop(node, fleet.list(OWNER, ListQuery(limit=2, next_token=page.next_token)))
        seen += [r.sandbox_id for r in page.records]
    assert seen == [m.sandbox_id for m in reversed(made)]
    team_a = on_loop(node, fleet.list(OWNER, ListQuery(metadata={"team": "a"})))
    assert {r.sandbox_id for r in team_a.records} == {made[1].sandbox_id, made[3].sandbox_id}
    paused = on_loop(node, fleet.list(OWNER, ListQuery(states=("paused",))))
    assert [r.sandbox_id for r in paused.records] == [made[0].sandbox_id]
    oldest_first = on_loop(node, fleet.list(OWNER, ListQuery(order="asc", limit=1)))
    assert [r.sandbox_id for r in oldest_first.records] == [made[0].sandbox_id]


def test_bad_timeouts_are_refused(node):
    fleet = fleet_of(node)
    for timeout in (-1, 0, float("nan"), 10 * 86400):
        with pytest.raises(InvalidSpec):
            create(node, timeout=timeout)
    made = create(node)
    with pytest.raises(InvalidSpec):
        on_loop(node, fleet.set_timeout(OWNER, made.sandbox_id, -5))


# -- time: the engine's clock moves, the crons act, the runner follows ---------------------------

def test_a_timeout_kills_the_sandbox(node):
    made = create(node, timeout=60)
    node.clock.advance(61)
    wait_until(lambda: state(node, made.sandbox_id) == "killed", what="the sandbox expiring")
    wait_until(lambda: held_state(node, made.sandbox_id) is None, what="the runner killing it")


def test_a_timeout_pauses_the_sandbox_when_on_timeout_is_pause(node):
    made = create(node, timeout=60, on_timeout="pause")
    node.clock.advance(61)
    wait_until(lambda: state(node, made.sandbox_id) == "paused", what="the sandbox pausing")
    wait_until(lambda: held_state(node, made.sandbox_id) == "paused", what="the runner pausing it")
    assert record(node, made.sandbox_id)["paused_reason"] == "timeout"
    with pytest.raises(SandboxNotFound):
        run(node, made.sandbox_id, "true")
    _, resumed = on_loop(node, fleet_of(node).connect(OWNER, made.sandbox_id, 60))
    assert resumed and run(node, made.sandbox_id, "echo back") == (0, b"back\n")


def test_auto_resume_wakes_a_timed_out_sandbox_on_traffic(node):
    made = create(node, timeout=60, on_timeout="pause", auto_resume=True)
    node.clock.advance(61)
    wait_until(lambda: held_state(node, made.sandbox_id) == "paused", what="the runner pausing it")
    before = node.clock.now_ms()
    assert run(node, made.sandbox_id, "echo awake") == (0, b"awake\n")
    assert state(node, made.sandbox_id) == "running"
    assert before + 60_000 <= record(node, made.sandbox_id)["end_at"] <= node.clock.now_ms() + 60_000


def test_set_timeout_moves_the_deadline_and_zero_acts_now(node):
    fleet = fleet_of(node)
    made = create(node, timeout=60)
    on_loop(node, fleet.set_timeout(OWNER, made.sandbox_id, 3600))
    node.clock.advance(120)
    assert state(node, made.sandbox_id) == "running"
    on_loop(node, fleet.set_timeout(OWNER, made.sandbox_id, 0))
    assert state(node, made.sandbox_id) == "killed" and held_state(node, made.sandbox_id) is None


def test_an_idle_sandbox_is_paused_and_traffic_resumes_it(node):
    made = create(node, timeout=3600)
    node.clock.advance(601)
    wait_until(lambda: state(node, made.sandbox_id) == "paused", what="the idle pause")
    assert record(node, made.sandbox_id)["paused_reason"] == "idle"
    wait_until(lambda: held_state(node, made.sandbox_id) == "paused", what="the runner pausing it")
    assert run(node, made.sandbox_id, "echo hi") == (0, b"hi\n")  # an idle pause is invisible to clients
    doc = record(node, made.sandbox_id)
    assert doc["state"] == "running" and doc["end_at"] == pytest.approx(made.end_at * 1000, abs=1)


def test_touch_and_traffic_reset_the_idle_clock(node):
    made = create(node, timeout=3600)
    fleet = fleet_of(node)
    node.clock.advance(400)
    on_loop(node, fleet.touch(made.sandbox_id))
    node.clock.advance(400)  # 800 s since create, 400 s since the touch
    run(node, made.sandbox_id, "true")  # data-plane traffic counts as activity too
    wait_until(lambda: record(node, made.sandbox_id)["last_activity"] >= node.clock.now_ms() - 5_000, what="the activity written")
    node.clock.advance(400)
    assert state(node, made.sandbox_id) == "running"
    node.clock.advance(201)
    wait_until(lambda: state(node, made.sandbox_id) == "paused", what="the idle pause after the last activity")


def test_a_sandbox_paused_past_the_retention_is_killed_and_cleaned(node):
    made = create(node)
    keep = create(node)
    on_loop(node, fleet_of(node).pause(OWNER, made.sandbox_id))
    on_loop(node, fleet_of(node).set_timeout(OWNER, keep.sandbox_id, 86400))
    node.clock.advance(29 * 86400)
    node.clock.advance(86400 + 3600)  # 30 days and an hour: the hourly sweep has run
    wait_until(lambda: state(node, made.sandbox_id) == "killed", what="the retention kill")
    wait_until(lambda: held_state(node, made.sandbox_id) is None, what="the runner cleaning it")
    assert not (Path(node.node.settings.data_dir) / "sandboxes" / made.sandbox_id).exists()


# -- placement and bad input ------------------------------------------------------------------------

def test_placement_respects_capacity_and_labels(short_dir):
    with fleet_node(short_dir / "data", runner_capacity=2, runner_labels="ssd,big") as node:
        create(node)
        second = create(node, runner_labels=("ssd",))
        with pytest.raises(CapacityError, match="no runner"):
            create(node)
        on_loop(node, fleet_of(node).kill(OWNER, second.sandbox_id))
        wait_until(lambda: record(node, second.sandbox_id)["live"] is False, what="the kill confirmed")
        create(node)  # room again
        with pytest.raises(CapacityError, match="gpu"):
            create(node, runner_labels=("gpu",))


def test_an_unknown_template_is_refused_and_nothing_is_recorded(node):
    with pytest.raises(TemplateNotFound):
        create(node, template="no-such-template")
    assert node.call("query", "corral/sandboxes:page", {"owner": OWNER, "states": ["running"], "limit": 10})["sandboxes"] == []


def test_local_without_bubblewrap_fails_clearly_and_never_falls_back_to_host(short_dir, monkeypatch):
    monkeypatch.setattr("corral.runner.providers.shutil.which", lambda name: None)
    with fleet_node(short_dir / "data", sandbox_provider="local") as node:
        with pytest.raises(ProviderUnavailable, match="apt-get install bubblewrap"):
            create(node)
        assert not (short_dir / "data" / "sandboxes").exists()


def test_an_unknown_provider_is_refused_with_the_choices(short_dir):
    with fleet_node(short_dir / "data", sandbox_provider="docker") as node, pytest.raises(ProviderUnavailable, match="local, host"):
        create(node)


# -- restarts ----------------------------------------------------------------------------------------

def test_a_node_restart_re_adopts_running_and_paused_sandboxes(short_dir, database_url):
    clock = Clock()
    with fleet_node(short_dir / "data", database_url=database_url, clock=clock) as first:
        running = create(first, timeout=3600)
        paused = create(first, timeout=3600)
        run(first, running.sandbox_id, "echo started > mark; sleep 1000 &")
        on_loop(first, fleet_of(first).pause(OWNER, paused.sandbox_id))
        name = fleet_of(first).runner_name
    with fleet_node(short_dir / "data", database_url=database_url, clock=clock) as second:
        assert fleet_of(second).runner_name == name
        assert state(second, running.sandbox_id) == "running" and state(second, paused.sandbox_id) == "paused"
        assert run(second, running.sandbox_id, "cat mark") == (0, b"started\n")
        _, resumed = on_loop(second, fleet_of(second).connect(OWNER, paused.sandbox_id, 60))
        assert resumed and run(second, paused.sandbox_id, "echo awake") == (0, b"awake\n")


def test_at_start_the_runner_kills_sandboxes_the_engine_does_not_know(short_dir):
    data = short_dir / "data"
    with fleet_node(data) as first:
        known = create(first)

    async def stray() -> str:
        provider = HostProvider(data)
        made = await provider.create(SandboxSpec(sandbox_id="stray1"))
        await provider.close()
        return made.sandbox_id

    asyncio.run(stray())
    assert (data / "sandboxes" / "stray1").is_dir()
    with fleet_node(data) as second:
        assert not (data / "sandboxes" / "stray1").exists()
        assert state(second, known.sandbox_id) == "running"


def test_the_sandbox_limit_settings_are_the_limits_of_every_create_that_asks_for_none(short_dir):
    with fleet_node(short_dir / "data", sandbox_cpu_count=1, sandbox_memory_mb=256, sandbox_disk_mb=300,
                    sandbox_pids=100) as node:
        made = create(node)
        assert record(node, made.sandbox_id)["limits"] == {"cpu_count": 1, "memory_mb": 256, "disk_mb": 300, "pids": 100}
        on_loop(node, fleet_of(node).kill(OWNER, made.sandbox_id))
