"""Nodes with a fleet, served in this process, and remote runners in their own processes.

A served node runs its fleet on the server's event loop; `on_loop` runs a coroutine there from
the test's thread. Sandboxes use the `host` provider here (fast); tests/runner/test_local.py
uses `local`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from corral.engine.auth import Caller
from corral.fleet import CreateRequest, Fleet, SandboxRecord
from corral.sandbox.protocol import Data, End, ProcessConfig, Sandbox

from ..conftest import free_port
from ..engine.served import ServedNode, served, wait_until

T = TypeVar("T")
ADMIN = Caller.admin()
OWNER = "api-key|owner1"
OTHER = "api-key|someone-else"
NO_LEASE_EXPIRY = 10 * 365 * 86400.0  # tests that jump the clock far keep runners up unless leases are the point


def fleet_of(node: ServedNode) -> Fleet:
    fleet: Fleet = node.node.fleet
    return fleet


def on_loop(node: ServedNode, work: Awaitable[T], timeout: float = 60.0) -> T:
    """Run a coroutine on the node's event loop (where its fleet lives) and return its result."""
    loop = fleet_of(node).loop
    assert loop is not None, "the fleet has not started"
    return asyncio.run_coroutine_threadsafe(work, loop).result(timeout)  # type: ignore[arg-type]


@contextmanager
def fleet_node(data_dir: Path, **settings: Any) -> Iterator[ServedNode]:
    """A served node whose embedded runner uses the host provider (`sandbox_provider=None`: the default, local)."""
    options: dict[str, Any] = {"sandbox_provider": "host", "runner_lease": NO_LEASE_EXPIRY, "functions": None}
    options.update(settings)
    options = {k: v for k, v in options.items() if v is not None or k in ("functions", "database_url", "clock")}
    with served(data_dir, **options) as node:
        wait_until(lambda: fleet_of(node).loop is not None and (not fleet_of(node)._embedded_enabled or
                                                                fleet_of(node).unavailable or fleet_of(node).daemon),
                   what="the fleet starting")
        yield node


def create(node: ServedNode, owner: str = OWNER, **request: Any) -> SandboxRecord:
    return on_loop(node, fleet_of(node).create(owner, CreateRequest(**request)))


def record(node: ServedNode, sandbox_id: str) -> dict[str, Any] | None:
    """The engine's document of a sandbox."""
    return node.call("query", "corral/sandboxes:lookup", {"sandbox_id": sandbox_id})  # type: ignore[no-any-return]


def state(node: ServedNode, sandbox_id: str) -> str | None:
    doc = record(node, sandbox_id)
    return None if doc is None else str(doc["state"])


async def run_command(sandbox: Sandbox, command: str, shell: tuple[str, ...] = ("/bin/sh", "-c")) -> tuple[int, bytes]:
    """Run `command` with `shell` (the E2B SDK's is `/bin/bash -l -c`): its exit code and stdout."""
    events = await sandbox.processes.start(ProcessConfig(cmd=shell[0], args=[*shell[1:], command]))
    out = b""
    code = -1
    async for event in events:
        if isinstance(event, Data) and event.stream == "stdout":
            out += event.data
        elif isinstance(event, End):
            code = event.exit_code
    return code, out


def run(node: ServedNode, sandbox_id: str, command: str, token: str | None = None,
        shell: tuple[str, ...] = ("/bin/sh", "-c")) -> tuple[int, bytes]:
    """Run a command through the fleet's data plane, as the E2B layer would."""
    fleet = fleet_of(node)
    if token is None:
        doc = record(node, sandbox_id)
        access = "" if doc is None else doc["access_token"]
    else:
        access = token

    async def go() -> tuple[int, bytes]:
        sandbox = await fleet.data_plane(sandbox_id, access)
        return await run_command(sandbox, command, shell)

    return on_loop(node, go())


async def _held(fleet: Fleet, sandbox_id: str) -> str | None:
    assert fleet.executor is not None
    try:
        return (await fleet.executor.sandbox(sandbox_id).info()).state
    except Exception:  # noqa: BLE001
        return None


def held_state(node: ServedNode, sandbox_id: str) -> str | None:
    """What the embedded runner's provider says of a sandbox (None: it does not hold it)."""
    return on_loop(node, _held(fleet_of(node), sandbox_id))


# -- remote runners in their own processes --------------------------------------------------

@dataclass
class RunnerProcess:
    process: subprocess.Popen  # type: ignore[type-arg]
    name: str
    port: int
    data_dir: Path
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_runner(server: str, key: str, data_dir: Path, *, name: str = "remote-1", port: int | None = None,
                 labels: tuple[str, ...] = (), capacity: int = 10, wait: bool = True) -> RunnerProcess:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"runner-{name}-{port}-{time.monotonic_ns()}.log"
    args = [sys.executable, "-m", "corral", "runner", "--server", server, "--listen", f"127.0.0.1:{port}",
            "--name", name, "--provider", "host", "--data-dir", str(data_dir), "--capacity", str(capacity)]
    for label in labels:
        args += ["--label", label]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "CORRAL_RUNNER_KEY": key})
    runner = RunnerProcess(process, name, port, data_dir, log)
    if wait:
        wait_until(lambda: "runner.ready" in runner.output() or process.poll() is not None, timeout=30,
                   what="the runner starting")
        assert process.poll() is None, runner.output()
    return runner


def api_key(node: ServedNode, name: str, kind: str) -> tuple[str, str]:
    """A new API key of the node: (the key, its id)."""
    async def make() -> tuple[str, str]:
        secret, made = await node.node.auth.api_keys.create(name, kind)
        return secret, made.id

    return on_loop(node, make())
