"""The host provider's lifecycle: create, pause/resume, kill, adopt after a restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from corral.sandbox import proctree
from corral.sandbox.agent_channel import AgentGone
from corral.sandbox.host import HostProvider, HostSandbox
from corral.sandbox.protocol import (
    InvalidSpec,
    ProcessConfig,
    SandboxNotFound,
    SandboxSpec,
    SandboxStateError,
    Start,
    TemplateNotFound,
)

from .conftest import collect, run


async def echo(sandbox: HostSandbox, text: str) -> bytes:
    out, _, _ = await collect(await sandbox.processes.start(ProcessConfig(cmd="echo", args=[text])))
    return out


async def started(sandbox: HostSandbox, config: ProcessConfig) -> int:
    events = await sandbox.processes.start(config)
    first = await anext(events)
    assert isinstance(first, Start)
    await events.aclose()  # type: ignore[attr-defined]
    return first.pid


async def wait_for(condition: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


def test_create_info_metrics_and_kill_leaves_nothing(root: Path) -> None:
    async def scenario() -> None:
        provider = HostProvider(root)
        sandbox = await provider.create(SandboxSpec(sandbox_id="abc123", envs={"K": "v"}))
        assert provider.get("abc123") is sandbox
        info = await sandbox.info()
        assert (info.sandbox_id, info.state, info.template) == ("abc123", "running", "base")
        assert await echo(sandbox, "hi") == b"hi\n"
        state = json.loads((sandbox.directory / "state.json").read_text())
        assert state["state"] == "running" and state["envs"] == {"K": "v"}
        assert oct((sandbox.directory / "state.json").stat().st_mode & 0o777) == "0o600"
        sleeper = await started(sandbox, ProcessConfig(cmd="/bin/bash", args=["-c", "sleep 60 & sleep 60"]))
        metrics = await sandbox.metrics()
        assert metrics.mem_used > 0 and metrics.disk_total == 1024 * 1024 * 1024
        agent = state["agent_pid"]
        await wait_for(lambda: len(proctree.tree(agent)) >= 4, "agent, bash and two sleeps run")
        await sandbox.kill()
        assert not sandbox.directory.exists()
        assert proctree.tree(agent) == []
        assert not proctree.is_alive(sleeper, 0)
        with pytest.raises(SandboxNotFound):
            provider.get("abc123")
        await sandbox.kill()  # idempotent
        await provider.close()

    run(scenario())


def test_create_rejects_bad_specs(root: Path) -> None:
    async def scenario() -> None:
        provider = HostProvider(root)
        with pytest.raises(InvalidSpec, match="lowercase"):
            await provider.create(SandboxSpec(sandbox_id="Bad/Id"))
        with pytest.raises(TemplateNotFound, match="nope"):
            await provider.create(SandboxSpec(sandbox_id="ok", template="nope"))
        sandbox = await provider.create(SandboxSpec(sandbox_id="twice"))
        with pytest.raises(InvalidSpec, match="already exists"):
            await provider.create(SandboxSpec(sandbox_id="twice"))
        await sandbox.kill()
        await provider.close()

    run(scenario())


def test_pause_stops_every_process_and_resume_continues(root: Path) -> None:
    async def scenario() -> None:
        provider = HostProvider(root)
        sandbox = await provider.create(SandboxSpec(sandbox_id="p1"))
        pid = await started(sandbox, ProcessConfig(cmd="sleep", args=["60"]))
        await sandbox.pause()
        assert (await sandbox.info()).state == "paused"
        # pause waits a while for the kernel to show each process stopped, not forever (a loaded
        # host may deliver the SIGSTOP later): wait for the stop instead of sampling once.
        await wait_for(lambda: proctree.read_stat(pid).state == "T", "the sleep is stopped")  # type: ignore[union-attr]
        with pytest.raises(SandboxStateError):
            await sandbox.pause()
        await sandbox.resume()
        assert (await sandbox.info()).state == "running"
        await wait_for(lambda: proctree.read_stat(pid).state != "T", "the sleep runs again")  # type: ignore[union-attr]
        assert await echo(sandbox, "back") == b"back\n"
        await sandbox.resume()  # no-op when running
        await sandbox.pause()
        await sandbox.kill()  # a paused sandbox is killed too
        assert proctree.read_stat(pid) is None or proctree.read_stat(pid).state == "Z"  # type: ignore[union-attr]
        await provider.close()

    run(scenario())


def test_sandboxes_outlive_their_provider_and_are_adopted(root: Path) -> None:
    async def scenario() -> None:
        first = HostProvider(root)
        sandbox = await first.create(SandboxSpec(sandbox_id="keep"))
        events = await sandbox.processes.start(ProcessConfig(cmd="cat"), stdin=True, tag="survivor")
        start = await anext(events)
        assert isinstance(start, Start)
        await events.aclose()  # type: ignore[attr-defined]
        await first.close()  # the runner goes away; the sandbox does not

        second = HostProvider(root)
        adopted = await second.adopt()
        assert [s.sandbox_id for s in adopted] == ["keep"]
        again = second.get("keep")
        assert (await again.info()).state == "running"
        follower = again.processes.connect(tag="survivor")
        assert await anext(follower) == Start(pid=start.pid)
        await again.processes.send_input(start.pid, b"still here")
        await again.processes.close_stdin(start.pid)
        out, _, end = await collect(follower)
        assert out == b"still here" and end.exit_code == 0
        await again.kill()
        assert await HostProvider(root).adopt() == []

    run(scenario())


def test_a_sandbox_whose_agent_died_is_adopted_paused_and_boots_again(root: Path) -> None:
    async def scenario() -> None:
        first = HostProvider(root)
        sandbox = await first.create(SandboxSpec(sandbox_id="reboot", envs={"KEPT": "yes"}))
        await sandbox.files.write("note.txt", _once(b"survives"))
        agent = json.loads((sandbox.directory / "state.json").read_text())["agent_pid"]
        await first.close()
        os.kill(agent, signal.SIGKILL)  # as a host reboot would
        await asyncio.to_thread(sandbox._popen.wait)  # type: ignore[union-attr]

        second = HostProvider(root)
        (adopted,) = await second.adopt()
        info = await adopted.info()
        assert (info.state, info.memory_kept) == ("paused", False)
        await adopted.resume()
        assert (await adopted.info()).state == "running"
        out, _, _ = await collect(await adopted.processes.start(
            ProcessConfig(cmd="/bin/bash", args=["-c", "cat note.txt; echo \" $KEPT\""])))
        assert out == b"survives yes\n"
        await adopted.kill()

    run(scenario())


async def _once(data: bytes):  # type: ignore[no-untyped-def]
    yield data


def test_the_client_reconnects_when_the_agent_socket_reappears(root: Path) -> None:
    async def scenario() -> None:
        provider = HostProvider(root)
        sandbox = await provider.create(SandboxSpec(sandbox_id="again"))
        client = sandbox.client
        first = (await client.ping())["pid"]
        os.kill(first, signal.SIGKILL)
        await asyncio.to_thread(sandbox._popen.wait)  # type: ignore[union-attr]
        with pytest.raises(AgentGone):
            await client.ping()
        await sandbox.resume()  # running, but its agent is gone: booted again
        assert (await client.ping())["pid"] != first
        assert await echo(sandbox, "same client") == b"same client\n"
        await sandbox.kill()
        await provider.close()

    run(scenario())
