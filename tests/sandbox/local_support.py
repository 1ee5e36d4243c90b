"""Helpers for the local provider's tests: a provider per test on its own root, uids and cgroups."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from corral.sandbox.local import LocalProvider, LocalSandbox
from corral.sandbox.local.cgroups import v1_mounts
from corral.sandbox.protocol import Data, End, ProcessConfig
from tests.conftest import require_tool
from tests.sandbox_leftovers import SESSION_CGROUP_ROOT

T = TypeVar("T")
DEADLINE = 60.0  # seconds any one test may take talking to sandboxes; generous, never a timing assertion


def require_local() -> None:
    """The provider's prerequisites: root, bubblewrap, cgroup v1 controllers, loop devices."""
    require_tool("root", os.geteuid() == 0, "the local provider runs as root")
    require_tool("bwrap", shutil.which("bwrap") is not None, "apt-get install bubblewrap")
    require_tool("setpriv", shutil.which("setpriv") is not None, "apt-get install util-linux")
    require_tool("mkfs.ext4", shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:/usr/bin") is not None,
                 "apt-get install e2fsprogs")
    require_tool("loop devices", os.path.exists("/dev/loop-control"), "a kernel with loop devices (modprobe loop)")
    mounts = v1_mounts()
    require_tool("cgroup v1", all(c in mounts for c in ("memory", "pids", "cpu", "cpuacct", "freezer")),
                 "cgroup v1 hierarchies mounted under /sys/fs/cgroup")


def require_network_tools() -> None:
    require_tool("slirp4netns", shutil.which("slirp4netns") is not None, "apt-get install slirp4netns")
    require_tool("nft", shutil.which("nft", path="/usr/sbin:/usr/bin") is not None, "apt-get install nftables")


def run(coro: Coroutine[Any, Any, T], timeout: float = DEADLINE) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Env:
    """A provider root, uid range and cgroup root of one test; `make()` gives providers on them."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cl", dir="/tmp")) / "data"
        self.cgroup_root = f"{SESSION_CGROUP_ROOT}/{uuid.uuid4().hex[:8]}"  # the session checks what is left
        self.uid_base = 2_000_000 + random.randrange(1000) * 1000

    def make(self, **kwargs: Any) -> LocalProvider:
        return LocalProvider(self.root, uid_base=self.uid_base, cgroup_root=self.cgroup_root, **kwargs)

    def cleanup(self) -> None:
        """Whatever a failing test left: kill it all, so that the next test starts clean."""
        provider = self.make()
        run(_kill_all(provider))
        run(provider.close())
        mounts = v1_mounts()
        for hierarchy in {mounts[c] for c in ("memory", "pids", "cpu", "cpuacct", "freezer")}:
            with contextlib.suppress(FileNotFoundError, OSError):
                (hierarchy / self.cgroup_root).rmdir()
        shutil.rmtree(self.root.parent, ignore_errors=True)


async def _kill_all(provider: LocalProvider) -> None:
    for sandbox in await provider.adopt():
        await sandbox.kill()


def local_env() -> Iterator[Env]:
    """The body of each test module's `env` fixture."""
    require_local()
    environment = Env()
    yield environment
    environment.cleanup()


async def sh(sandbox: LocalSandbox, script: str, *, envs: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `script` with /bin/sh in the sandbox: (exit code, stdout, stderr)."""
    events = await sandbox.processes.start(ProcessConfig(cmd="/bin/sh", args=["-c", script], envs=envs or {}))
    out, err = bytearray(), bytearray()
    async for event in events:
        if isinstance(event, Data):
            (err if event.stream == "stderr" else out).extend(event.data)
        elif isinstance(event, End):
            return event.exit_code, out.decode(errors="replace"), err.decode(errors="replace")
    raise AssertionError("the process stream ended without an End event")


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def host_uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def processes_of_uid(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, AssertionError):
                if host_uid_of(int(entry)) == uid:
                    found.append(int(entry))
    return found


def mountinfo_lines(needle: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if needle in line]


def loop_devices_of(path_prefix: str) -> list[str]:
    """Loop devices backed by a file under `path_prefix` (losetup, when present)."""
    if shutil.which("losetup", path="/usr/sbin:/sbin:/usr/bin") is None:
        return []
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if path_prefix in line]
