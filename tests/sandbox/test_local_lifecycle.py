"""Create, pause, resume, kill, adopt after a restart, resume after a reboot; templates and bad input."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.sandbox.local import LocalProvider, LocalSandbox, templates
from corral.sandbox.protocol import (
    End,
    InvalidSpec,
    Limits,
    ProcessConfig,
    SandboxNotFound,
    SandboxSpec,
    SandboxStateError,
    TemplateNotFound,
)

from .local_support import Env, local_env, require_network_tools, run, sh, wait_for

COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.01; done"


@pytest.fixture
def env() -> Iterator[Env]:
    yield from local_env()


def _counter(sandbox: LocalSandbox) -> int:
    try:
        return int((sandbox.paths.disk / "tmp" / "counter").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


async def _start_counter(sandbox: LocalSandbox) -> int:
    events = await sandbox.processes.start(ProcessConfig(cmd="/bin/sh", args=["-c", COUNTER]), tag="counter")
    start = await events.__anext__()
    await events.aclose()  # type: ignore[attr-defined]  # closing the stream does not stop the process
    await wait_for(lambda: _counter(sandbox) > 2, "the counter to run")
    return int(start.pid)  # type: ignore[union-attr]


async def _advances(sandbox: LocalSandbox) -> None:
    before = _counter(sandbox)
    await wait_for(lambda: _counter(sandbox) > before + 2, "the counter to advance")


def test_pause_freezes_and_resume_continues_the_same_process(env: Env) -> None:
    async def scenario() -> None:
        provider = env.make()
        sandbox = await provider.create(SandboxSpec(sandbox_id="pause1"))
        try:
            pid = await _start_counter(sandbox)
            await sandbox.pause()
            assert (await sandbox.info()).state == "paused"
            frozen_at = _counter(sandbox)
            for _ in range(20):  # polled for a while: it never moves
                await asyncio.sleep(0.01)
                assert _counter(sandbox) == frozen_at
            with pytest.raises(SandboxStateError):
                await sandbox.pause()
            await sandbox.resume()
            info = await sandbox.info()
            assert info.state == "running" and info.memory_kept
            await _advances(sandbox)
            assert pid in [p.pid for p in await sandbox.processes.list()]
            await sandbox.resume()  # no-op when running
        finally:
            await sandbox.kill()

    run(scenario())


def test_kill_of_a_paused_sandbox_leaves_nothing(env: Env) -> None:
    async def scenario() -> None:
        provider = env.make()
        sandbox = await provider.create(SandboxSpec(sandbox_id="pausedkill"))
        await _start_counter(sandbox)
        await sandbox.pause()
        uid = sandbox.host_uid
        await sandbox.kill()
        await sandbox.kill()  # idempotent
        assert not provider.host.cgroups.exists("pausedkill")
        assert not sandbox.paths.dir.exists() and not sandbox.paths.runtime.exists()
        assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                    if str(sandbox.paths.disk) in line]
        from .local_support import processes_of_uid

        leftovers = processes_of_uid(uid)
        assert leftovers == [], [(p, Path(f"/proc/{p}/status").read_text()[:200], Path(f"/proc/{p}/cmdline").read_bytes()) for p in leftovers]
        with pytest.raises(SandboxNotFound):
            provider.get("pausedkill")
        with pytest.raises(SandboxNotFound):
            await sandbox.info()

    run(scenario())


def test_a_restarted_provider_adopts_running_and_paused_sandboxes(env: Env) -> None:
    async def first_life() -> tuple[int, int]:
        provider = env.make()
        running = await provider.create(SandboxSpec(sandbox_id="alive", envs={"WHO": "alive"}))
        paused = await provider.create(SandboxSpec(sandbox_id="frozen"))
        await sh(running, "echo kept > /home/user/note")
        pid = await _start_counter(paused)
        await paused.pause()
        await provider.close()  # the runner goes away; the sandboxes do not
        return pid, running.host_uid

    async def second_life(pid: int, uid: int) -> None:
        provider = env.make()
        with pytest.raises(SandboxNotFound):
            provider.get("alive")
        adopted = {s.sandbox_id for s in await provider.adopt()}
        assert adopted == {"alive", "frozen"}
        running, paused = provider.get("alive"), provider.get("frozen")
        assert running.host_uid == uid
        code, out, _ = await sh(running, "cat /home/user/note; echo $WHO")
        assert out.split() == ["kept", "alive"]
        info = await paused.info()
        assert info.state == "paused" and info.memory_kept
        frozen_at = _counter(paused)
        await asyncio.sleep(0.05)
        assert _counter(paused) == frozen_at
        await paused.resume()
        await _advances(paused)
        assert pid in [p.pid for p in await paused.processes.list()]
        # a new sandbox does not take an adopted one's uid
        other = await provider.create(SandboxSpec(sandbox_id="third"))
        assert other.host_uid not in (running.host_uid, paused.host_uid)
        for sandbox in (running, paused, other):
            await sandbox.kill()

    pid, uid = run(first_life())
    run(second_life(pid, uid))


def test_after_a_reboot_a_paused_sandbox_resumes_from_its_files(env: Env) -> None:
    boots = {"id": "boot-one"}

    async def before() -> None:
        provider = env.make(boot_id=lambda: boots["id"])
        sandbox = await provider.create(SandboxSpec(sandbox_id="reboot", envs={"KEEP": "yes"}))
        await sh(sandbox, "echo survived > /home/user/file; mkdir -p /tmp/dir; echo t > /tmp/dir/x")
        await _start_counter(sandbox)
        await sandbox.pause()
        await provider.close()

    async def after() -> None:
        provider = env.make(boot_id=lambda: boots["id"])
        assert [s.sandbox_id for s in await provider.adopt()] == ["reboot"]
        sandbox = provider.get("reboot")
        info = await sandbox.info()
        assert info.state == "paused" and not info.memory_kept
        await sandbox.resume()
        info = await sandbox.info()
        assert info.state == "running" and not info.memory_kept
        code, out, _ = await sh(sandbox, "cat /home/user/file /tmp/dir/x; echo $KEEP")
        assert out.split() == ["survived", "t", "yes"]
        code, out, _ = await sh(sandbox, "ps -eo args")
        assert "/tmp/counter" not in out.replace("ps -eo args", ""), f"memory was not lost: {out}"
        assert [p.pid for p in await sandbox.processes.list()] == []
        await sandbox.pause()
        await sandbox.resume()
        await sandbox.kill()

    run(before())
    boots["id"] = "boot-two"  # the state's boot id no longer matches: the host "rebooted"
    run(after())


def test_bad_input(env: Env) -> None:
    async def scenario() -> None:
        provider = env.make()
        with pytest.raises(TemplateNotFound):
            await provider.create(SandboxSpec(sandbox_id="nope", template="no-such-template"))
        for limits in (Limits(memory_mb=10**9), Limits(memory_mb=0), Limits(cpu_count=0), Limits(cpu_count=10**6),
                       Limits(pids=0), Limits(pids=10**9), Limits(disk_mb=-1), Limits(disk_mb=10**12)):
            with pytest.raises(InvalidSpec):
                await provider.create(SandboxSpec(sandbox_id="absurd", limits=limits))
        for bad_id in ("UPPER", "with-dash", "", "x" * 65, "../etc"):
            with pytest.raises(InvalidSpec):
                await provider.create(SandboxSpec(sandbox_id=bad_id))
        with pytest.raises(InvalidSpec):
            await provider.create(SandboxSpec(sandbox_id="env", envs={"A=B": "c"}))
        sandbox = await provider.create(SandboxSpec(sandbox_id="dup"))
        with pytest.raises(InvalidSpec):
            await provider.create(SandboxSpec(sandbox_id="dup"))
        await sandbox.kill()
        assert not list((env.root / "sandboxes").iterdir())

    run(scenario())


def test_a_relative_root_works(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """`corral serve --data-dir ./data` hands the provider a relative root; bwrap runs elsewhere."""
    require_network_tools()
    monkeypatch.chdir(env.root.parent)

    async def scenario() -> None:
        provider = LocalProvider(Path(env.root.name), uid_base=env.uid_base, cgroup_root=env.cgroup_root)
        sandbox = await provider.create(SandboxSpec(sandbox_id="relative", allow_internet=True))
        try:
            assert (await sh(sandbox, "echo hi"))[:2] == (0, "hi\n")
        finally:
            await sandbox.kill()

    run(scenario())


def test_info_and_metrics(env: Env) -> None:
    async def scenario() -> None:
        provider = env.make()
        limits = Limits(cpu_count=1, memory_mb=256, disk_mb=64, pids=100)
        sandbox = await provider.create(SandboxSpec(sandbox_id="metrics", limits=limits, envs={"A": "1"}))
        try:
            info = await sandbox.info()
            assert (info.sandbox_id, info.template, info.state, info.limits) == ("metrics", "base", "running", limits)
            await sh(sandbox, "head -c 5000000 /dev/urandom > /home/user/blob")
            metrics = await sandbox.metrics()
            assert metrics.cpu_count == 1 and metrics.mem_total == 256 * 1024 * 1024
            assert 0 < metrics.mem_used < metrics.mem_total
            assert metrics.disk_used >= 5_000_000 and metrics.disk_total <= 64 * 1024 * 1024
            assert 0.0 <= metrics.cpu_used_pct <= 100.0
            assert (await sh(sandbox, "echo $A"))[1].strip() == "1"
        finally:
            await sandbox.kill()

    run(scenario())


def _tiny_rootfs(rootfs: Path) -> None:
    """A root filesystem with a few of the host's programs and their libraries, and no Python."""
    programs = [shutil.which(p) or p for p in ("bash", "sh", "cat", "ls", "id")]
    libraries = subprocess.run(["ldd", *programs], capture_output=True, text=True).stdout
    files = {str(Path(p).resolve()) for p in programs}
    files |= {word for word in libraries.split() if word.startswith("/") and not word.endswith(":")}
    def inside(path: Path) -> Path:  # where a host path lands in the tiny root (its /bin, /lib* are usr/...)
        return rootfs / "usr" / path.relative_to("/usr" if path.is_relative_to("/usr") else "/")

    for name in files:
        source = Path(name).resolve()
        inside(source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, inside(source))
        alias = inside(Path(name))
        if not alias.exists():
            alias.parent.mkdir(parents=True, exist_ok=True)
            alias.symlink_to(source)  # absolute: resolved inside the sandbox
    for program in programs:
        link = rootfs / "usr" / "bin" / Path(program).name
        if not os.path.lexists(link):
            link.symlink_to(Path(program).resolve())
    for top in ("bin", "lib", "lib64"):
        (rootfs / top).symlink_to(f"usr/{top}")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "template-marker").write_text("not allowlisted\n")
    (rootfs / "etc" / "shadow").write_text("root:secret-hash:::::::\n")
    (rootfs / "etc" / "profile").write_text("# the template's profile\n")
    (rootfs / "opt" / "tool").mkdir(parents=True)
    (rootfs / "opt" / "tool" / "hello").write_text("hello from the template\n")


def test_named_template_from_a_root_directory(env: Env, tmp_path: Path) -> None:
    rootfs = env.root.parent / "rootfs"
    os.chmod(env.root.parent, 0o711)
    _tiny_rootfs(rootfs)
    provider = env.make()
    with pytest.raises(ValueError):
        provider.add_template("base", rootfs)
    with pytest.raises(ValueError):
        provider.add_template("bad", tmp_path)  # not a root filesystem
    template = provider.add_template("tiny", rootfs)
    assert template.name == "tiny"
    assert [t.name for t in provider.list_templates()] == ["base", "tiny"]
    assert templates.get(env.root, "tiny", etc_root=provider.runtime / "templates").rootfs == rootfs.resolve()

    async def scenario() -> None:
        sandbox = await provider.create(SandboxSpec(sandbox_id="tpl", template="tiny"))
        try:
            code, out, err = await sh(sandbox, "cat /opt/tool/hello; ls /etc /usr/bin; id -un")
            assert code == 0, err
            assert "hello from the template" in out and "passwd" in out and "profile" in out
            assert "shadow" not in out and "template-marker" not in out  # an allowlist, not a copy
            assert "python3" not in out  # the agent runs on the host's Python, out of sight
            assert out.split()[-1] == "user"
        finally:
            await sandbox.kill()

    run(scenario())


def test_a_template_registered_again_gives_new_sandboxes_its_new_etc(env: Env) -> None:
    """`corral template add` (templates.add on the data dir, as the CLI does) replacing a template:
    the next sandbox sees the new root's /etc, not the one generated for the old."""
    rootfs = env.root.parent / "rootfs"
    os.chmod(env.root.parent, 0o711)
    _tiny_rootfs(rootfs)
    (rootfs / "etc").mkdir(exist_ok=True)
    provider = env.make()

    async def os_release() -> str:
        sandbox = await provider.create(SandboxSpec(sandbox_id="again", template="tiny"))
        try:
            code, out, err = await sh(sandbox, "cat /etc/os-release")
            assert code == 0, err
            return out
        finally:
            await sandbox.kill()

    for release in ("first", "second"):
        (rootfs / "etc" / "os-release").write_text(f"NAME={release}\n")
        templates.add(env.root, "tiny", rootfs)
        assert run(os_release()) == f"NAME={release}\n"


def test_the_data_plane_works_inside_the_namespaces(env: Env) -> None:
    """The agent's commands, PTYs and files, inside bubblewrap (the host provider's tests cover their details)."""
    from corral.sandbox.protocol import End, PtySize, Start

    from .conftest import collect, read_until
    from .test_files import chunks, next_events, read_all

    async def scenario() -> None:
        sandbox = await env.make().create(SandboxSpec(sandbox_id="plane", allow_internet=False))
        try:
            processes, files = sandbox.processes, sandbox.files
            # a PTY: input and resize
            events = await processes.start(ProcessConfig(cmd="/bin/bash", args=["-i"]), pty=PtySize(cols=80, rows=24))
            start = await anext(events)
            assert isinstance(start, Start)
            await processes.send_input(start.pid, b"tty; stty size\n", pty=True)
            assert b"/dev/pts/" in await read_until(events, b"24 80")
            await processes.resize(start.pid, PtySize(cols=100, rows=30))
            await processes.send_input(start.pid, b"stty size; exit 3\n", pty=True)
            await read_until(events, b"30 100")
            assert (await collect(events))[2].exit_code == 3
            # stdin, closing it; a background process followed again by pid, then signalled
            events = await processes.start(ProcessConfig(cmd="cat"), stdin=True)
            start = await anext(events)
            await processes.send_input(start.pid, b"in")  # type: ignore[union-attr]
            await processes.close_stdin(start.pid)  # type: ignore[union-attr]
            assert (await collect(events))[0] == b"in"
            events = await processes.start(ProcessConfig(cmd="/bin/sh", args=["-c", "echo up; sleep 600"]))
            start = await anext(events)
            await events.aclose()  # type: ignore[attr-defined]
            pid = start.pid  # type: ignore[union-attr]
            assert pid in [p.pid for p in await processes.list()]
            again = processes.connect(pid=pid)
            assert isinstance(await anext(again), Start)  # followed again, by pid
            await processes.signal(pid, "SIGKILL")
            ends = [e async for e in again if isinstance(e, End)]
            assert ends and ends[0].exit_code != 0
            # files: write, list with depth, rename, watch
            await files.make_dir("w/sub")
            watch = files.watch("w", recursive=True)
            await watch.ready  # type: ignore[attr-defined]
            await files.write("w/sub/a.txt", chunks(b"abc"))
            assert ("sub/a.txt", "create") in await next_events(watch, {("sub/a.txt", "create")})
            await watch.aclose()  # type: ignore[attr-defined]
            assert sorted(e.name for e in await files.list("w", depth=2)) == ["a.txt", "sub"]
            await files.rename("w/sub/a.txt", "w/b.txt")
            assert await read_all(files, "w/b.txt") == b"abc"
            assert (await files.stat("/home/user/w/b.txt")).size == 3
        finally:
            await sandbox.kill()

    run(scenario())


def test_a_process_killed_by_the_memory_limit_ends_saying_out_of_memory(env: Env) -> None:
    async def scenario() -> None:
        provider = env.make()
        sandbox = await provider.create(SandboxSpec(sandbox_id="oom1", limits=Limits(memory_mb=64)))
        try:
            grow = "python3 -c 'b = []\nwhile True: b.append(bytearray(8 << 20))'"
            events = await sandbox.processes.start(ProcessConfig(cmd="/bin/bash", args=["-l", "-c", grow]))
            end = None
            async for event in events:
                if isinstance(event, End):
                    end = event
            assert end is not None and end.exit_code in (-9, 137)
            assert end.error is not None and "out of memory" in end.error and "64 MiB" in end.error
            code, out, _ = await sh(sandbox, "echo still-here")
            assert (code, out) == (0, "still-here\n")  # the sandbox lives on
            ok = await sandbox.processes.start(ProcessConfig(cmd="/bin/sh", args=["-c", "kill -9 $$"]))
            async for event in ok:
                if isinstance(event, End):
                    assert event.error is None  # a SIGKILL that is not the memory limit's says nothing of memory
        finally:
            await sandbox.kill()
            await provider.close()

    run(scenario())
