"""Time limits: a runaway query or mutation is stopped and rolled back; the writer serves on."""

from __future__ import annotations

import asyncio
import time

import pytest

from corral.engine.auth import Caller
from corral.engine.errors import FunctionTimeout

ANON = Caller.anonymous()


def test_a_runaway_query_is_stopped_with_a_clear_error(make_node):
    node = make_node(function_timeout=0.3)
    with pytest.raises(FunctionTimeout, match="misc:spin ran longer than its limit of 0.3 s"):
        asyncio.run(node.engine.call("query", "misc:spin", {}, ANON))
    assert asyncio.run(node.engine.call("query", "misc:echo", {"value": "still here"}, ANON))[0] == "still here"


def test_a_runaway_mutation_is_rolled_back_and_the_writer_serves_everyone_else(make_node, database_url):
    node = make_node(database_url, function_timeout=0.3)

    async def scenario():  # type: ignore[no-untyped-def]
        runaway = asyncio.create_task(node.engine.call("mutation", "misc:spin_writer", {}, ANON))
        others = [node.engine.call("mutation", "misc:open_account", {"owner": f"o{i}", "balance": 1}, ANON) for i in range(5)]
        results = await asyncio.gather(runaway, *others, return_exceptions=True)
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[0], FunctionTimeout)
    assert "rolled back" in results[0].message
    assert all(isinstance(r, tuple) for r in results[1:])
    accounts = asyncio.run(node.engine.call("query", "misc:account_count", {}, ANON))[0]
    assert accounts == 5  # the runaway's insert left no trace


def test_the_limit_follows_the_engine_clock(make_node):
    """The watchdog reads the engine's clock: advancing it stops a function without waiting."""
    from corral.engine.clock import Clock

    clock = Clock()
    node = make_node(function_timeout=3600.0, clock=clock)

    def spinning() -> bool:  # its limit counts from when it starts, in a reader thread: advance after that
        return any(g.label == "query misc:spin" for g in list(node.engine.watchdog._active.values()))

    async def scenario():  # type: ignore[no-untyped-def]
        task = asyncio.create_task(node.engine.call("query", "misc:spin", {}, ANON))
        deadline = time.monotonic() + 30
        while not spinning() and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        clock.advance(3601)
        return await asyncio.gather(task, return_exceptions=True)

    (result,) = asyncio.run(scenario())
    assert isinstance(result, FunctionTimeout)
