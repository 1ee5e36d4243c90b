"""A hostile sandbox doing its worst against the host: filling the host's disk, redirecting the runner's
connections, reading host paths, and leaving processes behind when it is killed."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import corral
from corral.sandbox.protocol import Limits, SandboxError, SandboxSpec

from .local_support import Env, local_env, require_network_tools, run, sh, wait_for


@pytest.fixture
def env() -> Iterator[Env]:
    yield from local_env()


def _host_bytes_outside_the_disk(paths_dir: Path, runtime: Path, disk_mount: Path) -> int:
    """What the sandbox's host directories hold beside its disk image (whose size is its limit)."""
    total = 0
    for top in (paths_dir, runtime):
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            if here == disk_mount:
                dirnames[:] = []
                continue
            dirnames[:] = [d for d in dirnames if here / d != disk_mount]
            for name in filenames:
                if here / name == paths_dir / "disk.img":
                    continue
                total += os.lstat(here / name).st_blocks * 512
    return total


FILL = """
for target in /.corral/run/fill /.corral/fill /.corral/log /fill /dev/fill /dev/shm/../fill /etc/fill /usr/fill \\
              /var/fill /proc/fill; do
    if dd if=/dev/zero of="$target" bs=1M count=40 conv=notrunc oflag=append 2>/dev/null; then
        echo "wrote-all $target"
    else
        echo "refused $target"
    fi
done
df -m /home/user | tail -1
"""


def test_nothing_the_sandbox_writes_lands_outside_its_disk(env: Env) -> None:
    """The old hole: /.corral/run was a writable bind of a host directory outside the disk image, so
    `dd of=/.corral/run/fill` filled the host's disk. Every place the sandbox can write is on its disk
    (capped at disk_mb) or a small tmpfs charged to its memory (/dev/shm)."""
    async def scenario() -> None:
        sandbox = await env.make().create(SandboxSpec(sandbox_id="fill", limits=Limits(disk_mb=16)))
        try:
            code, out, err = await sh(sandbox, FILL)
            assert code == 0, err
            assert "wrote-all" not in out, out  # 40 MiB fits nowhere: not the 16 MiB disk, not the host
            host_side = _host_bytes_outside_the_disk(sandbox.paths.dir, sandbox.paths.runtime, sandbox.paths.disk)
            assert host_side < 1024 * 1024, f"{host_side} bytes landed on the host outside the sandbox's disk"
            code, out, err = await sh(sandbox, "ls -A /.corral; test -e /.corral/run && echo run-exists; "
                                               "grep -c ' rw,' /proc/self/mountinfo")
            assert "run-exists" not in out, out
        finally:
            await sandbox.kill()

    run(scenario())


def test_the_agent_socket_cannot_be_redirected_even_by_the_sandboxs_own_uid(env: Env) -> None:
    """The old hole: the sandbox owned the directory of its agent's socket and could swap the socket for
    a link to any host socket, which the runner (root) then connected to. Now the socket is bound by root
    in a directory only root can write and is not in the sandbox's view; a process running as the
    sandbox's host uid on the host (one that escaped its namespaces) cannot replace it either."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None

    async def scenario() -> None:
        provider = env.make()
        attacker = await provider.create(SandboxSpec(sandbox_id="swapa"))
        victim = await provider.create(SandboxSpec(sandbox_id="swapv"))
        try:
            assert (await sh(victim, "echo victim-secret > /home/user/secret"))[0] == 0
            # Inside: no socket of the agent anywhere it can see, so nothing to swap.
            code, out, err = await sh(attacker, "find / -xdev -type s 2>/dev/null; find /.corral -type s 2>/dev/null; "
                                                "ls -A /.corral")
            assert "agent.sock" not in out, out
            # On the host, as the sandbox's own uid: plant a link where the socket is.
            socket_path = attacker.paths.socket
            st = os.lstat(socket_path)
            assert stat.S_ISSOCK(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
            directory = os.stat(socket_path.parent)
            assert directory.st_uid == 0 and not directory.st_mode & 0o022
            for attempt in ([f"ln -sf {victim.paths.socket} {socket_path}"],
                            [f"ln -s {victim.paths.socket} {socket_path}.new && mv -f {socket_path}.new {socket_path}"],
                            [f"rm -f {socket_path}"]):
                result = subprocess.run([setpriv, "--reuid", str(attacker.host_uid), "--regid", str(attacker.host_uid),
                                         "--clear-groups", "/bin/sh", "-c", *attempt], capture_output=True, text=True)
                assert result.returncode != 0, (attempt, result.stdout, result.stderr)
            assert stat.S_ISSOCK(os.lstat(socket_path).st_mode)
            # The runner still reaches the attacker's own agent, and only it.
            code, out, _ = await sh(attacker, "cat /home/user/secret 2>&1; echo attacker-ok")
            assert "victim-secret" not in out and "attacker-ok" in out
            assert (await sh(victim, "cat /home/user/secret"))[1] == "victim-secret\n"
        finally:
            await attacker.kill()
            await victim.kill()

    run(scenario())


PEEK = r"""
import ctypes, glob, os, socket
libc = ctypes.CDLL(None, use_errno=True)
print("== mountinfo"); print(open("/proc/self/mountinfo").read()); print(open("/proc/1/mountinfo").read())
print("== fds")
for link in glob.glob("/proc/[0-9]*/fd/*") + glob.glob("/proc/[0-9]*/cwd") + glob.glob("/proc/[0-9]*/exe") \
        + glob.glob("/proc/[0-9]*/root") + glob.glob("/proc/[0-9]*/map_files/*"):
    try:
        print(link, os.readlink(link))
    except OSError:
        pass
for path in glob.glob("/proc/[0-9]*/cmdline") + glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/maps"):
    try:
        print(path, open(path, "rb").read().replace(b"\0", b" ").decode(errors="replace"))
    except OSError:
        pass
print("== sockets of pid 1")
pidfd = os.pidfd_open(1)
for name in os.listdir("/proc/1/fd"):
    if not os.readlink(f"/proc/1/fd/{name}").startswith("socket:"):
        continue
    fd = libc.syscall(438, pidfd, int(name), 0)  # pidfd_getfd
    if fd < 0:
        print("no-getfd", ctypes.get_errno())
        continue
    s = socket.socket(fileno=fd)
    try:
        print("sockname", s.getsockname())
    except OSError as exc:
        print("sockname-error", exc)
    finally:
        s.detach()
print("== unix"); print(open("/proc/net/unix").read())
"""


def test_no_host_path_is_visible_inside(env: Env) -> None:
    """The old hole: the sandbox's mountinfo named the data directory and the checkout (the sources of its
    binds), and its pid 1 held the log by its host path. Nothing the sandbox can read names them now."""
    checkout = str(Path(corral.__file__).resolve().parent.parent)

    async def scenario() -> None:
        provider = env.make()
        sandbox = await provider.create(SandboxSpec(sandbox_id="peek"))
        try:
            code, out, err = await sh(sandbox, f"python3 -c '{PEEK}'")
            assert code == 0, err
            assert "== sockets of pid 1" in out
            host_paths = {str(env.root.resolve()), checkout, str(provider.runtime), str(sandbox.paths.runtime),
                          str(env.root.parent)}
            for line in out.splitlines():
                for path in host_paths:
                    assert path not in line, f"{path} shows inside the sandbox: {line}"
        finally:
            await sandbox.kill()

    run(scenario())


def _state_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _zombies_of(pid: int) -> list[str]:
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        name, rest = text.rsplit(")", 1)
        fields = rest.split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(f"{stat_file.parent.name} {name.split('(', 1)[1]}")
    return found


def test_a_killed_sandbox_with_internet_leaves_no_zombie(env: Env) -> None:
    """The old hole: killing an internet-enabled sandbox left its slirp4netns a zombie child of the runner
    until the next create reaped it. Every child is reaped by the kill itself."""
    require_network_tools()

    async def scenario() -> None:
        provider = env.make()
        earlier = set(_zombies_of(os.getpid()))  # what other tests in this process left is not this test's
        for round_ in range(2):
            sandbox = await provider.create(SandboxSpec(sandbox_id=f"zomb{round_}", allow_internet=True))
            assert (await sh(sandbox, "echo up"))[1] == "up\n"
            await sandbox.kill()
            assert set(_zombies_of(os.getpid())) - earlier == set(), "a child of the runner is left unreaped after the kill"

    run(scenario())


def test_a_sandbox_that_ends_itself_leaves_no_zombie(env: Env) -> None:
    """A sandbox stops its own agent (its pid 1 takes SIGTERM): bubblewrap and slirp4netns exit, and the
    runner reaps them as they end, not at the next create or kill."""
    require_network_tools()

    async def scenario() -> None:
        provider = env.make()
        earlier = set(_zombies_of(os.getpid()))  # what other tests in this process left is not this test's
        sandbox = await provider.create(SandboxSpec(sandbox_id="selfend", allow_internet=True))
        try:
            with contextlib.suppress(SandboxError):  # the agent goes away mid-command
                await sh(sandbox, "kill -TERM 1; sleep 5")
            bwrap = sandbox.state.bwrap_pid
            assert bwrap is not None
            await wait_for(lambda: _state_of(bwrap) in (None, "Z"), "bubblewrap to end with the agent")
            await wait_for(lambda: set(_zombies_of(os.getpid())) - earlier == set(), "the runner to reap the sandbox's processes",
                           timeout=5)
        finally:
            await sandbox.kill()

    run(scenario())


def test_sandboxes_keep_running_when_their_data_directory_is_made_private(env: Env) -> None:
    """An older Corral left the data directory searchable, so the provider kept its runtime directory
    under it; made 0700 (as the node now does at start), the next provider moves its runtime directory to
    /run/corral but still reaches, and cleans up, the sandboxes that run from the old one."""
    parent = env.root.parent
    os.chmod(parent, 0o755)

    async def scenario() -> None:
        first = env.make()
        assert first.runtime == env.root / "rt"
        sandbox = await first.create(SandboxSpec(sandbox_id="moved"))
        assert (await sh(sandbox, "echo before > /home/user/f"))[0] == 0
        await first.close()
        os.chmod(parent, 0o700)
        second = env.make()
        assert second.runtime != env.root / "rt"
        adopted = {s.sandbox_id: s for s in await second.adopt()}["moved"]
        assert (await sh(adopted, "cat /home/user/f"))[1] == "before\n"  # type: ignore[arg-type]
        await adopted.kill()
        assert not (env.root / "rt" / "moved").exists()
        await second.close()
        assert not (env.root / "rt").exists(), "the old runtime directory (and its share) outlived its sandboxes"
        with open("/proc/self/mountinfo") as f:
            assert str(env.root) not in f.read()

    run(scenario())
