"""Time comes from the engine's clock and durations from settings: a test advances the clock
instead of waiting, for deadlines, heartbeats and housekeeping alike."""

from __future__ import annotations

import asyncio

from corral.engine.clock import Clock

from .served import served
from .sync_client import SyncClient


def test_a_clock_sleep_ends_when_the_clock_is_advanced():
    clock = Clock()

    async def main() -> bool:
        sleeper = asyncio.create_task(clock.sleep(3600))
        await asyncio.sleep(0)
        await asyncio.to_thread(clock.advance, 3600)
        await asyncio.wait_for(sleeper, 30)  # raises unless the advance ended the hour-long wait
        return sleeper.done()

    assert asyncio.run(main())


def test_the_sync_heartbeat_follows_the_engine_clock(tmp_path):
    with served(tmp_path / "data", ping_interval=3600.0) as node:
        client = SyncClient(node.url)
        try:
            q = client.subscribe("corral/workspaces:list")
            client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
            node.clock.advance(3600)
            assert client.recv_until(lambda m: m["type"] == "Ping", timeout=15) == {"type": "Ping"}
        finally:
            client.close()


def test_an_action_runs_out_of_time_when_the_engine_clock_passes_its_limit(make_node):
    from corral.engine.errors import FunctionTimeout

    from ..conftest import ROOT
    from .served import ADMIN

    clock = Clock()
    node = make_node(functions=ROOT / "tests" / "fixtures" / "services", clock=clock, action_timeout=600.0)

    async def main() -> None:
        # An action waiting for a gate nobody opens: only the limit ends it.
        call = asyncio.create_task(node.engine.call("action", "jobs:wait_for_gate", {"label": "never"}, ADMIN))
        await asyncio.sleep(0.1)
        assert not call.done()
        await asyncio.to_thread(clock.advance, 600)
        await asyncio.wait_for(call, 30)

    try:
        asyncio.run(main())
    except FunctionTimeout as exc:
        assert "limit of 600 s" in exc.message
    else:
        raise AssertionError("the action outlived its limit")


def test_postgres_trims_its_commit_log_on_the_engine_clock(make_node, postgres_url):
    import time

    import psycopg

    from ..conftest import ROOT
    from .served import ADMIN

    clock = Clock()
    node = make_node(database_url=postgres_url, functions=ROOT / "tests" / "fixtures" / "services", clock=clock,
                     commit_log_retention=60.0, commit_log_cleanup_interval=3600.0)
    for n in range(5):
        asyncio.run(node.engine.call("mutation", "jobs:open_gate", {"name": f"g{n}"}, ADMIN))

    def logged() -> int:
        with psycopg.connect(postgres_url) as conn:
            return int(conn.execute("SELECT count(*) FROM _commit_log").fetchone()[0])  # type: ignore[index]

    before = logged()
    assert before >= 5
    clock.advance(3600 + 60)  # past the retention, and time for the next trim
    deadline = time.monotonic() + 15
    while logged() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged() == 1, "the newest commit stays, every older one past the retention is trimmed"
