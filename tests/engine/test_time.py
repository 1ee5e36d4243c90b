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
            q = client.subscribe("workspaces:list_mine")
            client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
            node.clock.advance(3600)
            assert client.recv_until(lambda m: m["type"] == "Ping", timeout=15) == {"type": "Ping"}
        finally:
            client.close()
