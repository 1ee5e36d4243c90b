"""Commands and PTYs in a host sandbox, as a user of the E2B SDK would notice them."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.sandbox.agent_client import AgentClient
from corral.sandbox.protocol import End, ProcessConfig, ProcessNotFound, PtySize, Start

from .conftest import HostBox, collect, read_until, run


def bash(command: str, **kwargs: object) -> ProcessConfig:
    return ProcessConfig(cmd="/bin/bash", args=["-l", "-c", command], **kwargs)  # type: ignore[arg-type]


def test_output_exit_code_and_stderr(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            events = await sandbox.processes.start(bash("echo hello; echo oops >&2; exit 3"))
            first = await anext(events)
            assert isinstance(first, Start) and first.pid > 0
            out, err, end = await collect(events)
            assert (out, err) == (b"hello\n", b"oops\n")
            assert end == End(exit_code=3, exited=True, status="exit status 3")

    run(scenario())


def test_environment_cwd_and_home(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root, envs={"SANDBOX_WIDE": "a", "BOTH": "sandbox"}) as sandbox:
            config = bash('echo "$SANDBOX_WIDE $BOTH $OWN|$HOME|$PWD"', envs={"BOTH": "process", "OWN": "b"})
            out, _, end = await collect(await sandbox.processes.start(config))
            home = str(sandbox.home)
            assert out.decode() == f"a process b|{home}|{home}\n"
            assert end.exit_code == 0
            await sandbox.files.make_dir("work")
            out, _, _ = await collect(await sandbox.processes.start(bash("pwd", cwd="work")))
            assert out.decode() == f"{home}/work\n"
            with pytest.raises(Exception, match="does not exist"):
                await sandbox.processes.start(bash("pwd", cwd="/no/such/dir"))

    run(scenario())


def test_stdin_streaming_and_close(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            events = await sandbox.processes.start(ProcessConfig(cmd="cat"), stdin=True)
            start = await anext(events)
            assert isinstance(start, Start)
            await sandbox.processes.send_input(start.pid, b"first line\n")
            assert await read_until(events, b"first line\n") == b"first line\n"
            await sandbox.processes.send_input(start.pid, b"second")
            await sandbox.processes.close_stdin(start.pid)
            out, _, end = await collect(events)
            assert out == b"second" and end.status == "exit status 0"

    run(scenario())


def test_signals_end_the_process_as_envd_says(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            for signal, code, status in (("SIGTERM", -15, "signal: terminated"), ("SIGKILL", -9, "signal: killed")):
                events = await sandbox.processes.start(ProcessConfig(cmd="sleep", args=["30"]))
                start = await anext(events)
                assert isinstance(start, Start)
                await sandbox.processes.signal(start.pid, signal)  # type: ignore[arg-type]
                _, _, end = await collect(events)
                assert (end.exit_code, end.exited, end.status) == (code, False, status)
            with pytest.raises(ProcessNotFound):
                await sandbox.processes.signal(999999, "SIGKILL")

    run(scenario())


def test_background_process_outlives_its_client_and_is_followed_by_pid_and_tag(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            events = await sandbox.processes.start(
                bash('while read line; do echo "got $line"; done; echo done'), tag="worker", stdin=True)
            start = await anext(events)
            assert isinstance(start, Start)
            await events.aclose()  # type: ignore[attr-defined]  # the client goes away…

            other = AgentClient(sandbox.client.socket_path)  # …and another one comes back
            try:
                listed = await other.processes.list()
                assert [(p.pid, p.tag, p.config.cmd) for p in listed] == [(start.pid, "worker", "/bin/bash")]
                by_tag = other.processes.connect(tag="worker")
                by_pid = other.processes.connect(pid=start.pid)
                assert await anext(by_tag) == Start(pid=start.pid)
                assert await anext(by_pid) == Start(pid=start.pid)
                await other.processes.send_input(start.pid, b"one\n")
                assert await read_until(by_tag, b"got one\n") == b"got one\n"
                assert await read_until(by_pid, b"got one\n") == b"got one\n"
                await other.processes.close_stdin(start.pid)
                for follower in (by_tag, by_pid):
                    out, _, end = await collect(follower)
                    assert out == b"done\n" and end.exit_code == 0
                assert await other.processes.list() == []
                with pytest.raises(ProcessNotFound):
                    await anext(other.processes.connect(pid=start.pid))
                with pytest.raises(ProcessNotFound):
                    await anext(other.processes.connect(tag="worker"))
            finally:
                await other.close()

    run(scenario())


def test_output_keeps_flowing_without_followers(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            # 4 MiB is far more than a pipe holds: it only finishes if the agent keeps reading.
            events = await sandbox.processes.start(bash("head -c 4194304 /dev/zero; echo finished > marker"))
            await anext(events)
            await events.aclose()  # type: ignore[attr-defined]
            marker = sandbox.home / "marker"
            for _ in range(2000):
                if marker.exists() and marker.read_text() == "finished\n":
                    break
                await _tick()
            assert marker.read_text() == "finished\n"

    run(scenario())


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.005)


def test_pty_runs_an_interactive_shell_and_resizes(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            events = await sandbox.processes.start(ProcessConfig(cmd="/bin/bash", args=["-i", "-l"]),
                                                   pty=PtySize(cols=80, rows=24))
            start = await anext(events)
            assert isinstance(start, Start)
            await sandbox.processes.send_input(start.pid, b"tty; echo TERM=$TERM\n", pty=True)
            seen = await read_until(events, b"TERM=xterm-256color")
            assert b"/dev/pts/" in seen
            await sandbox.processes.resize(start.pid, PtySize(cols=100, rows=30))
            await sandbox.processes.send_input(start.pid, b"stty size\n", pty=True)
            await read_until(events, b"30 100")
            await sandbox.processes.send_input(start.pid, b"exit 7\n", pty=True)
            _, _, end = await collect(events)
            assert end.exit_code == 7

    run(scenario())


def test_starting_a_missing_command_says_so(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            with pytest.raises(Exception, match="no-such-command"):
                await sandbox.processes.start(ProcessConfig(cmd="no-such-command"))
            out, _, end = await collect(await sandbox.processes.start(bash("no-such-command")))
            assert end.exit_code == 127

    run(scenario())
