"""Crons, on SQLite and on PostgreSQL: intervals and cron expressions in UTC, one run at a time,
late ticks skipped, declarations checked at start, and one run per tick across two nodes."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from corral.engine.clock import Clock
from corral.engine.errors import SchemaError
from corral.engine.scheduling import CronExpression, Crons

from ...conftest import ROOT, make_settings
from ..served import ServedNode, served, wait_until

CRONS = ROOT / "tests" / "fixtures" / "crons"
TICKER = ROOT / "tests" / "fixtures" / "ticker"


@pytest.fixture
def node(tmp_path: Path, database_url: str | None):  # type: ignore[no-untyped-def]
    # Actions' time limit is on the same clock: long enough for the slow cron's run to outlast ticks.
    with served(tmp_path / "data", database_url=database_url, functions=CRONS, action_timeout=3600.0) as running:
        yield running


def ticks(node: ServedNode, label: str) -> int:
    return int(node.call("query", "ticks:count", {"label": label}))


def cron(node: ServedNode, name: str) -> dict:
    return next(c for c in node.crons() if c["name"] == name)


def cron_jobs(node: ServedNode, function: str, label: str) -> list[dict]:
    """The jobs a cron has scheduled, oldest first."""
    return sorted((j for j in node.jobs(name=function) if j["args"].get("label") == label), key=lambda j: j["scheduledTime"])


def test_declared_crons_are_listed_with_their_next_run(node):
    listed = {c["name"]: c for c in node.crons()}
    assert set(listed) == {"every minute", "at three", "slow"}
    assert listed["every minute"]["schedule"] == "every 60s"
    assert listed["every minute"]["function"] == "ticks:tick"
    assert listed["every minute"]["args"] == {"label": "minute"}
    assert listed["at three"]["schedule"] == "cron 0 3 * * *"
    assert listed["every minute"]["nextRun"] == pytest.approx(node.clock.now_ms() + 60_000, abs=5_000)


def test_an_interval_cron_runs_once_per_interval(node):
    first_tick = cron(node, "every minute")["nextRun"]
    node.clock.advance(60)
    wait_until(lambda: ticks(node, "minute") == 1, what="the first tick")
    node.clock.advance(60)
    wait_until(lambda: ticks(node, "minute") == 2, what="the second tick")
    jobs = cron_jobs(node, "ticks:tick", "minute")
    assert [j["scheduledTime"] for j in jobs] == [first_tick, first_tick + 60_000]
    assert all(j["state"]["kind"] == "success" for j in jobs)


def test_ticks_missed_while_late_are_skipped_not_stacked(node):
    node.clock.advance(10 * 60)
    wait_until(lambda: ticks(node, "minute") == 1, what="the late tick")
    wait_until(lambda: cron(node, "every minute")["nextRun"] > node.clock.now_ms(), what="the cron moving past now")
    assert len(cron_jobs(node, "ticks:tick", "minute")) == 1
    assert ticks(node, "minute") == 1


def test_a_run_that_has_not_finished_makes_the_next_tick_skip(node):
    node.clock.advance(5 * 60)
    first = wait_until(lambda: cron_jobs(node, "ticks:slow", "slow"), what="the slow cron starting")[0]
    wait_until(lambda: cron_jobs(node, "ticks:slow", "slow")[0]["state"]["kind"] == "inProgress", what="the slow run in progress")
    for _ in range(2):
        before = cron(node, "slow")["nextRun"]
        node.clock.advance(5 * 60)
        wait_until(lambda before=before: cron(node, "slow")["nextRun"] > before, what="the skipped tick")
        assert [j["_id"] for j in cron_jobs(node, "ticks:slow", "slow")] == [first["_id"]]
    node.call("mutation", "ticks:open_gate", {"name": "slow"})
    wait_until(lambda: cron_jobs(node, "ticks:slow", "slow")[0]["state"]["kind"] == "success", what="the slow run finishing")
    node.clock.advance(5 * 60)
    wait_until(lambda: len(cron_jobs(node, "ticks:slow", "slow")) == 2, what="the next run after the slow one")


def test_a_cron_expression_runs_at_its_utc_time(node):
    now = datetime.fromtimestamp(node.clock.time(), UTC)
    three = now.replace(hour=3, minute=0, second=0, microsecond=0)
    if three <= now:
        three += timedelta(days=1)
    assert cron(node, "at three")["nextRun"] == three.timestamp() * 1000
    node.clock.advance((three - now).total_seconds() - 30)
    barrier_cron = cron(node, "at three")
    assert barrier_cron["nextRun"] > node.clock.now_ms() and ticks(node, "three") == 0
    node.clock.advance(30)
    wait_until(lambda: ticks(node, "three") == 1, what="the 03:00 run")
    [job] = cron_jobs(node, "ticks:tick", "three")
    assert job["scheduledTime"] == three.timestamp() * 1000
    assert cron(node, "at three")["nextRun"] == (three + timedelta(days=1)).timestamp() * 1000


def test_a_restart_keeps_each_crons_schedule(tmp_path, database_url):
    clock = Clock()
    with served(tmp_path / "data", database_url=database_url, functions=CRONS, clock=clock) as first:
        before = {c["name"]: c["nextRun"] for c in first.crons()}
    clock.advance(30)
    with served(tmp_path / "data", database_url=database_url, functions=CRONS, clock=clock) as second:
        after = {c["name"]: c["nextRun"] for c in second.crons()}
        assert after == before
        clock.advance(30)
        wait_until(lambda: ticks(second, "minute") == 1, what="the tick planned before the restart")


def test_crons_no_longer_declared_are_removed(tmp_path):
    with served(tmp_path / "data", functions=CRONS) as first:
        assert len(first.crons()) == 3
    with served(tmp_path / "data", functions=TICKER) as second:
        assert [c["name"] for c in second.crons()] == ["every second"]


# -- declarations checked when the node starts -------------------------------------------

def _folder(tmp_path: Path, crons_py: str) -> Path:
    folder = tmp_path / "functions"
    folder.mkdir()
    (folder / "schema.py").write_text("")
    (folder / "work.py").write_text(textwrap.dedent("""
        from corral import MutationCtx, QueryCtx, internal_mutation, query

        @internal_mutation
        def job(ctx: MutationCtx, n: int) -> None:
            pass

        @query
        def look(ctx: QueryCtx) -> None:
            pass
    """))
    (folder / "crons.py").write_text(textwrap.dedent(crons_py))
    return folder


BAD_DECLARATIONS = {
    "bad expression": ('crons.cron("c", "61 * * * *", work.job, {"n": 1})', "minute"),
    "four fields": ('crons.cron("c", "* * * *", work.job, {"n": 1})', "needs 5"),
    "never matches": ('crons.cron("c", "0 0 30 2 *", work.job, {"n": 1})', "matches no date"),
    "unknown function": ('crons.interval("c", "work:nope", {}, minutes=1)', "no such function"),
    "a query": ('crons.interval("c", work.look, {}, minutes=1)', "only mutations and actions"),
    "bad arguments": ('crons.interval("c", work.job, {"n": "x"}, minutes=1)', "`n`"),
    "too short": ('crons.interval("c", work.job, {"n": 1}, seconds=0.5)', "at least 1 second"),
    "same name twice": ('crons.interval("c", work.job, {"n": 1}, minutes=1)\ncrons.interval("c", work.job, {"n": 2}, minutes=2)', "two crons named"),
    "no function": ('crons.interval("c", minutes=1)', "names no function"),
}


@pytest.mark.parametrize("case", sorted(BAD_DECLARATIONS))
def test_a_bad_cron_declaration_stops_the_node_with_a_message(tmp_path, case):
    from corral.node import Node

    line, message = BAD_DECLARATIONS[case]
    folder = _folder(tmp_path, "from corral import Crons\nfrom . import work\n\ncrons = Crons()\n" + line + "\n")
    with pytest.raises(SchemaError) as err:
        Node(make_settings(tmp_path / "data", functions=folder))
    assert message in err.value.message
    assert "crons.py" in err.value.message


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/15 * * * *", "2030-01-01 10:07", "2030-01-01 10:15"),
        ("0 9 * * 1-5", "2030-01-04 09:00", "2030-01-07 09:00"),  # Friday 09:00 → Monday
        ("0 0 1 * *", "2030-01-15 00:00", "2030-02-01 00:00"),
        ("0 0 29 2 *", "2030-03-01 00:00", "2032-02-29 00:00"),
        ("30 2 1 * MON", "2030-01-01 03:00", "2030-01-07 02:30"),  # day of month OR day of week
        ("@hourly", "2030-01-01 10:00", "2030-01-01 11:00"),
        ("0 12 * JAN,jul SUN", "2030-01-01 00:00", "2030-01-06 12:00"),
        ("5-10/5 * * * *", "2030-01-01 00:06", "2030-01-01 00:10"),
    ],
)
def test_cron_expressions_follow_the_usual_rules_in_utc(expression, after, expected):
    def at(text: str) -> float:
        return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()

    assert CronExpression.parse(expression).next_run(at(after), at(after)) == at(expected)


def test_the_named_helpers_are_cron_expressions():
    crons = Crons()
    crons.hourly("h", "work:job", minute_utc=5)
    crons.daily("d", "work:job", hour_utc=3, minute_utc=30)
    crons.weekly("w", "work:job", day_of_week="monday", hour_utc=8)
    crons.monthly("m", "work:job", day=1, hour_utc=0)
    assert {n: s.schedule.describe() for n, s in crons.specs.items()} == {
        "h": "cron 5 * * * *", "d": "cron 30 3 * * *", "w": "cron 0 8 * * 1", "m": "cron 0 0 1 * *"}
    with pytest.raises(ValueError, match="day_of_week"):
        crons.weekly("bad", "work:job", day_of_week="someday")


# -- two nodes on one PostgreSQL ---------------------------------------------------------------

def test_with_two_nodes_each_tick_runs_once(live_node_factory, postgres_url):
    nodes = [live_node_factory(functions=TICKER, database_url=postgres_url, env={"CORRAL_ENV_NODE_NAME": n}) for n in "ab"]

    def summary(node) -> dict:  # type: ignore[no-untyped-def]
        response = httpx.post(node.url + "/api/query", content=orjson.dumps({"path": "ticks:summary", "args": {}}),
                              headers={"content-type": "application/json"}, timeout=30)
        value = response.json()["value"]
        return {**value, "ticks": int(value["ticks"]), "succeeded": int(value["succeeded"])}  # int64s arrive as text

    wait_until(lambda: summary(nodes[0])["succeeded"] >= 5, timeout=60, what="five ticks")
    for node in nodes:
        seen = summary(node)
        assert seen["ticks"] == seen["succeeded"], "a tick ran twice, or a job succeeded without running"
        times = seen["times"]
        assert len(times) == len(set(times)), "one tick was scheduled twice"
        assert all((b - a) % 1000 == 0 for a, b in zip(times, times[1:], strict=False)), "the ticks keep the cron's phase"
        assert set(seen["nodes"]) <= {"a", "b"}


def test_crons_of_corral_s_own_package_are_found_like_those_of_a_functions_folder():
    """Corral's own crons (corral/app/crons.py) are loaded from an importable package, not a folder."""
    from corral.engine.functions import Registry
    from corral.engine.scheduling import load_crons

    registry = Registry()
    registry.load_package("corral.app", "corral/app", namespace="corral")
    found = {s.name: s.path for s in load_crons(registry)}
    assert found["expire sandboxes"] == "corral/sandboxes:expire"
    assert found["expire runner leases"] == "corral/runners:expire_leases"
