"""A node served in this process (uvicorn on a thread), so a test can advance its clock.

The node runs everything a served node runs — its lifespan, the scheduler's dispatcher, crons,
HTTP actions — and the test drives it through HTTP or `call()`, and moves time with `clock`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from corral.engine.auth import Caller
from corral.engine.clock import Clock

from ..conftest import free_port, make_settings

ADMIN = Caller.admin()


class ServedNode:
    def __init__(self, node: Any, clock: Clock, server: uvicorn.Server, thread: threading.Thread) -> None:
        self.node = node
        self.clock = clock
        self.server = server
        self.thread = thread
        self.url = node.url

    @property
    def engine(self) -> Any:
        return self.node.engine

    def call(self, kind: str, path: str, args: dict[str, Any] | None = None, caller: Caller = ADMIN) -> Any:
        value, _ts = asyncio.run(self.node.engine.call(kind, path, args or {}, caller))
        return value

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        """Every scheduled job (newest first), through the built-in query, except those of Corral's
        own crons (corral/app/crons.py: the sandbox lifecycle), which tick on their own."""
        listed = self.call("query", "_system:scheduled_functions", {"limit": 1000, **filters})
        return [j for j in listed if not self.is_corrals_own(j["name"])]

    def crons(self) -> list[dict[str, Any]]:
        """The crons of the served functions folder (not Corral's own)."""
        return [c for c in self.call("query", "_system:cron_jobs") if not self.is_corrals_own(c["function"])]

    def is_corrals_own(self, function: str) -> bool:
        module = function.partition(":")[0]
        return str(self.node.registry.modules.get(module, "")).startswith("corral/app/")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.node.stop()


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, what: str = "the condition") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s (last: {value!r})")
        time.sleep(0.02)


def serve(data_dir: Path, database_url: str | None = None, functions: Path | None = None, clock: Clock | None = None,
          **settings: Any) -> ServedNode:
    from corral.node import Node

    clock = clock or Clock()
    port = free_port()
    node = Node(make_settings(data_dir, database_url, functions, port=port, **settings), clock=clock)
    node.start()
    config = uvicorn.Config(node.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            ws="websockets-sansio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"served-node-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            node.stop()
            raise RuntimeError("the in-process node did not start")
        time.sleep(0.01)
    return ServedNode(node, clock, server, thread)


@contextmanager
def served(data_dir: Path, **kwargs: Any) -> Iterator[ServedNode]:
    node = serve(data_dir, **kwargs)
    try:
        yield node
    finally:
        node.stop()


def http(node: ServedNode, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, node.url + path, timeout=30, **kwargs)
