"""Fixtures for sandbox tests: a host provider under a short temporary directory."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from corral.sandbox import proctree
from corral.sandbox.host import HostProvider, HostSandbox
from corral.sandbox.protocol import Data, End, ProcessEvent, SandboxSpec

T = TypeVar("T")
DEADLINE = 60.0  # seconds any one test may wait for the sandbox; generous, never a timing assertion


@pytest.fixture
def root() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be too deep.
    path = Path(tempfile.mkdtemp(prefix="cs", dir="/tmp"))
    yield path
    for state_file in path.glob("sandboxes/*/state.json"):  # a failed test may leave its agents running
        state = json.loads(state_file.read_text())
        agent = state.get("agent_pid")
        if agent and proctree.is_alive(agent, state.get("agent_start_ticks")):
            proctree.send(agent, signal.SIGSTOP)
            proctree.kill_descendants(agent)
            proctree.send(agent, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


async def collect(events: AsyncIterator[ProcessEvent]) -> tuple[bytes, bytes, End]:
    """stdout, stderr and the End of a process stream, read to its end."""
    out, err = bytearray(), bytearray()
    async for event in events:
        if isinstance(event, Data):
            (err if event.stream == "stderr" else out).extend(event.data)
        elif isinstance(event, End):
            return bytes(out), bytes(err), event
    raise AssertionError("the process stream ended without an End event")


async def read_until(events: AsyncIterator[ProcessEvent], needle: bytes) -> bytes:
    """Output (any stream) up to and including `needle`."""
    seen = bytearray()
    async for event in events:
        if isinstance(event, Data):
            seen.extend(event.data)
            if needle in seen:
                return bytes(seen)
        elif isinstance(event, End):
            raise AssertionError(f"process ended ({event.status}) before printing {needle!r}; printed {bytes(seen)!r}")
    raise AssertionError(f"stream ended before {needle!r}; got {bytes(seen)!r}")


class HostBox:
    """A host provider with one sandbox, killed on exit."""

    def __init__(self, root: Path, envs: dict[str, str] | None = None, sandbox_id: str = "sb1") -> None:
        self.root = root
        self.envs = envs or {}
        self.sandbox_id = sandbox_id

    async def __aenter__(self) -> HostSandbox:
        self.provider = HostProvider(self.root)
        self.sandbox = await self.provider.create(SandboxSpec(sandbox_id=self.sandbox_id, envs=self.envs))
        return self.sandbox

    async def __aexit__(self, *exc: object) -> None:
        await self.sandbox.kill()
        await self.provider.close()
