"""What a process inside a local sandbox can and cannot reach."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from corral.sandbox.protocol import Limits, ProcessConfig, SandboxSpec

from .local_support import Env, host_uid_of, local_env, require_network_tools, run, sh, wait_for

PROBE = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(3)
    try:
        code = s.connect_ex((host, int(port)))
    except OSError as exc:
        code = exc.errno or -1
    print(target, "open" if code == 0 else f"closed:{code}")
"""


@pytest.fixture
def env() -> Iterator[Env]:
    yield from local_env()


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on the host's 127.0.0.1 that accepts whatever connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    server.close()


def test_namespaces_users_and_root_view(env: Env) -> None:
    async def scenario() -> None:
        provider = env.make()
        sandbox = await provider.create(SandboxSpec(sandbox_id="iso1"))
        try:
            code, out, _ = await sh(sandbox, "readlink /proc/self/ns/pid /proc/self/ns/mnt /proc/self/ns/net; id -u; "
                                              "id -un; echo $HOME; ls /")
            assert code == 0
            lines = out.splitlines()
            pid_ns, mnt_ns, net_ns = lines[:3]
            assert pid_ns != os.readlink("/proc/self/ns/pid"), "no PID namespace of its own"
            assert mnt_ns != os.readlink("/proc/self/ns/mnt")
            assert net_ns != os.readlink("/proc/self/ns/net")
            assert lines[3:6] == ["1000", "user", "/home/user"]
            top = set(lines[6:])
            assert {"usr", "etc", "home", "tmp", "proc", "dev"} <= top
            assert not top & {"root", "work", "srv", "opt", "mnt", "boot"}, f"host directories visible: {top}"
            # On the host, the sandbox runs as its own unprivileged uid, never root.
            for pid in provider.host.cgroups.pids(sandbox.sandbox_id):
                assert host_uid_of(pid) == sandbox.host_uid != 0
            assert sandbox.host_uid >= env.uid_base
            # No capabilities, no new user namespaces, no firewall changes.
            code, out, _ = await sh(sandbox, "grep CapEff /proc/self/status; unshare -r true 2>/dev/null || echo "
                                              "no-userns")
            assert "0000000000000000" in out and "no-userns" in out
        finally:
            await sandbox.kill()

    run(scenario())


def test_secrets_and_other_sandboxes_are_out_of_reach(env: Env) -> None:
    async def scenario() -> None:
        provider = env.make()
        first = await provider.create(SandboxSpec(sandbox_id="isoa"))
        second = await provider.create(SandboxSpec(sandbox_id="isob"))
        try:
            code, _, _ = await sh(first, "echo secret-of-a > /home/user/secret; echo tmp-of-a > /tmp/secret; "
                                         "sleep 300 & echo started")
            assert code == 0
            assert first.host_uid != second.host_uid
            data_dir = str(env.root)
            code, out, _ = await sh(second, f"""
                for f in /home/user/secret /tmp/secret /etc/shadow /etc/gshadow /root /root/.bashrc {data_dir} \\
                         {data_dir}/sandboxes/isoa/state.json {first.paths.disk}/home/secret; do
                    if cat "$f" >/dev/null 2>&1 || ls "$f" >/dev/null 2>&1; then echo "READ""ABLE $f"; fi
                done
                ls /etc | grep -E 'shadow|ssh|sudoers' && echo "LE""AK"
                grep -rl secret-of-a /home /tmp 2>/dev/null
                echo done""")
            assert code == 0
            assert "READABLE" not in out and "LEAK" not in out and "/secret" not in out, out
            assert out.strip() == "done"
            code, out, _ = await sh(second, "ps -eo args")
            assert "sleep" not in out, f"another sandbox's processes are visible: {out}"
            assert len(out.splitlines()) <= 5, out  # header, the agent (pid 1), sh, ps
            passwd = (await sh(second, "cat /etc/passwd"))[1]
            assert "user:x:1000:1000::/home/user:/bin/bash" in passwd
            assert set(line.split(":")[0] for line in passwd.splitlines()) <= {"root", "user", "nobody"}
        finally:
            await first.kill()
            await second.kill()

    run(scenario())


def test_no_network_but_loopback_when_internet_is_off(env: Env, listener: int) -> None:
    async def scenario() -> None:
        sandbox = await env.make().create(SandboxSpec(sandbox_id="neto", allow_internet=False))
        try:
            code, out, _ = await sh(sandbox, "ls /sys/class/net 2>/dev/null || cat /proc/net/dev")
            interfaces = {line.split(":")[0].strip() for line in out.splitlines() if ":" in line} or set(out.split())
            assert interfaces == {"lo"}, out
            code, out, _ = await sh(sandbox, f"python3 -c '{PROBE}' 127.0.0.1:{listener} 127.0.0.1:5432 "
                                              f"10.0.2.2:{listener} 1.1.1.1:443")
            assert code == 0 and "open" not in out.replace("closed", ""), out
        finally:
            await sandbox.kill()

    run(scenario())


def test_internet_on_has_a_route_but_never_the_host(env: Env, listener: int) -> None:
    require_network_tools()

    async def scenario() -> None:
        sandbox = await env.make().create(SandboxSpec(sandbox_id="neton", allow_internet=True))
        try:
            code, out, _ = await sh(sandbox, "cat /proc/net/route; ls /sys/class/net 2>/dev/null; cat /proc/net/dev")
            assert "tap0" in out
            routes = [line.split() for line in out.splitlines() if line.startswith("tap0")]
            assert any(r[1] == "00000000" for r in routes), f"no default route: {out}"
            host_ips = [ip for ip in _host_ipv4s() if not ip.startswith("127.")]
            targets = [f"127.0.0.1:{listener}", "127.0.0.1:5432", f"10.0.2.2:{listener}", "10.0.2.2:5432",
                       "10.0.2.2:22", "192.168.1.1:80", "172.16.0.1:80", "169.254.169.254:80", "100.64.0.1:80",
                       *(f"{ip}:{listener}" for ip in host_ips)]
            code, out, _ = await sh(sandbox, f"python3 -c '{PROBE}' " + " ".join(targets))
            assert code == 0
            for target in targets:
                assert f"{target} closed" in out, f"{target} is reachable from the sandbox:\n{out}"
            # The user cannot lift the firewall.
            code, _, _ = await sh(sandbox, "nft flush ruleset 2>/dev/null || iptables -F 2>/dev/null")
            assert code != 0
        finally:
            await sandbox.kill()

    run(scenario())


def _host_ipv4s() -> list[str]:
    from corral.sandbox.local.network import host_addresses

    return host_addresses()


def test_memory_hog_dies_inside_its_limit(env: Env) -> None:
    async def scenario() -> None:
        sandbox = await env.make().create(SandboxSpec(sandbox_id="mem", limits=Limits(memory_mb=64)))
        try:
            code, out, _ = await sh(sandbox, "python3 -c 'x = bytearray(400 * 1024 * 1024); x[::4096] = b\"1\" * "
                                              "len(x[::4096]); print(\"survived\")'; echo exit=$?")
            assert "survived" not in out
            assert "exit=137" in out, out  # SIGKILL from the cgroup's OOM killer
            code, out, _ = await sh(sandbox, "echo still-here")  # the sandbox lives on
            assert out.strip() == "still-here"
        finally:
            await sandbox.kill()

    run(scenario())


def test_fork_bomb_is_held_by_the_pids_limit(env: Env) -> None:
    async def scenario() -> None:
        provider = env.make()
        sandbox = await provider.create(SandboxSpec(sandbox_id="bomb", limits=Limits(pids=64, cpu_count=1)))
        pids_dir = provider.host.cgroups.mounts["pids"] / env.cgroup_root / "bomb"  # type: ignore[attr-defined]
        try:
            assert int((pids_dir / "pids.max").read_text()) == 64
            # A real fork bomb, in the background: the limit holds it, the host stays usable.
            events = await sandbox.processes.start(ProcessConfig(cmd="/bin/bash", args=["-c", "b() { b | b & }; b"]))
            await events.aclose()  # type: ignore[attr-defined]

            def limit_hit() -> bool:
                return "max 0" not in (pids_dir / "pids.events").read_text()

            await wait_for(limit_hit, "the fork bomb to reach the pids limit")
            for _ in range(20):
                assert int((pids_dir / "pids.current").read_text()) <= 64
                await asyncio.sleep(0.01)
            assert subprocess.run(["true"]).returncode == 0  # the host can still fork
        finally:
            await sandbox.kill()
        assert not provider.host.cgroups.exists("bomb")

    run(scenario())


def test_disk_limit_is_real(env: Env) -> None:
    async def scenario() -> None:
        sandbox = await env.make().create(SandboxSpec(sandbox_id="disk", limits=Limits(disk_mb=32)))
        try:
            code, out, err = await sh(sandbox, "dd if=/dev/zero of=/tmp/big bs=1M count=64 2>&1; echo exit=$?; "
                                               "df -m /home/user | tail -1")
            assert "No space left on device" in out, out
            assert "exit=1" in out
            total_mb = int(out.splitlines()[-1].split()[1])
            assert total_mb <= 32
        finally:
            await sandbox.kill()

    run(scenario())


STEAL_LOG = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(438, os.pidfd_open(int(sys.argv[1])), 2, 0)  # pidfd_getfd of its stderr
if fd < 0:
    print("no-getfd", ctypes.get_errno()); sys.exit(0)
try:
    for _ in range(64):
        os.write(fd, b"x" * (1 << 20))
    print("wrote-all")
except OSError as exc:
    print("stopped", exc.errno)
"""


def test_log_descriptors_taken_by_the_sandbox_fill_only_its_own_disk(env: Env) -> None:
    """Bubblewrap and the agent hold the sandbox's log as stderr; a process of the same uid can take that
    descriptor (pidfd_getfd, ptrace). Writing through it must be bounded by the sandbox's disk."""
    async def scenario() -> None:
        provider = env.make()
        sandbox = await provider.create(SandboxSpec(sandbox_id="logfill", limits=Limits(disk_mb=16)))
        try:
            code, out, err = await sh(sandbox, f"python3 -c '{STEAL_LOG}' 1")  # the agent, the sandbox's init
            assert code == 0, err
            if out.startswith("no-getfd"):
                pytest.skip(f"pidfd_getfd is not available here: {out}")
            assert out.strip() == "stopped 28", out  # ENOSPC: the sandbox's disk, not the host's
            host_side = sum(f.stat().st_size for f in sandbox.paths.dir.iterdir() if f.name != "disk.img")
            assert host_side < 1024 * 1024
        finally:
            await sandbox.kill()

    run(scenario())
