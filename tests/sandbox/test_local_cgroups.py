"""The cgroup layer on its own: v1 on this host's hierarchies, v2 on the unified one (see ADR 0008)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.sandbox.local.cgroups import (
    CgroupError,
    CgroupLimits,
    Cgroups,
    CgroupV1,
    CgroupV2,
    detect,
    v1_mounts,
    v2_limit_files,
    v2_mount,
)
from tests.conftest import require_tool

LIMITS = CgroupLimits(memory_bytes=64 * 1024 * 1024, pids=32, cpu_count=1)


def _wait(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _state(pid: int) -> str | None:
    """The one-letter scheduler state of a process, None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _spawn_in(groups: Cgroups, name: str) -> subprocess.Popen[bytes]:
    """A shell that joins the group, then loops forever, with a child of its own. It joins before it
    forks: a child forked earlier (`a & b` runs `a` in a subshell, where $$ is still the parent's)
    would stay outside the group, escape freeze and kill, and outlive the test."""
    joins = " && ".join(f"echo $$ > {f}" for f in groups.join_files(name))
    return subprocess.Popen(["/bin/sh", "-c", f"{joins} && exec /bin/sh -c 'sleep 600 & "
                             "while :; do sleep 0.01; done'"], start_new_session=True)


def _exercise(groups: Cgroups, name: str) -> None:
    groups.create(name, LIMITS)
    groups.create(name, LIMITS)  # idempotent
    assert groups.exists(name) and name in groups.names()
    process = _spawn_in(groups, name)
    try:
        _wait(lambda: len(groups.pids(name)) >= 2, "the processes to join")
        groups.freeze(name)
        assert groups.frozen(name)
        # Frozen tasks sleep in the freezer. On v2 a signal (a child's SIGCHLD) can wake one for an
        # instant before it traps again, so wait for the sleep instead of sampling once.
        _wait(lambda: all(_state(pid) in ("S", "D", None) for pid in groups.pids(name)),
              "every process of the frozen group to sleep")
        assert groups.frozen(name)
        groups.thaw(name)
        assert not groups.frozen(name)
        looping = set(groups.pids(name))
        _wait(lambda: set(groups.pids(name)) != looping, "the thawed loop to start new processes")
        usage = groups.usage(name)
        assert usage.cpu_ns >= 0
        groups.freeze(name)
        groups.kill(name)  # a frozen group dies too
        process.wait(timeout=10)
        assert groups.pids(name) == []
    finally:
        if process.poll() is None:
            groups.kill(name)  # the whole group, frozen children included, or rmdir stays busy
            process.kill()
            process.wait()
        groups.remove(name)
        groups.remove(name)  # idempotent
    assert not groups.exists(name)


@pytest.fixture
def root_name() -> Iterator[str]:
    require_tool("root", os.geteuid() == 0, "cgroups are written by root")
    name = "corral-test-" + uuid.uuid4().hex[:8]
    yield name
    for hierarchy in set(v1_mounts().values()) | ({v2_mount()} - {None}):
        assert hierarchy is not None
        path = hierarchy / name
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir():
                    child.rmdir()
            path.rmdir()


def test_v1_limits_freeze_kill_remove(root_name: str) -> None:
    mounts = v1_mounts()
    require_tool("cgroup v1", all(c in mounts for c in ("memory", "pids", "cpu", "cpuacct", "freezer")),
                 "cgroup v1 hierarchies mounted under /sys/fs/cgroup")
    groups = CgroupV1(root_name)
    assert isinstance(detect(root_name), CgroupV1)  # what these hosts run
    groups.create("a", LIMITS)
    try:
        assert int((mounts["memory"] / root_name / "a" / "memory.limit_in_bytes").read_text()) == LIMITS.memory_bytes
        assert (mounts["pids"] / root_name / "a" / "pids.max").read_text().strip() == "32"
        assert (mounts["cpu"] / root_name / "a" / "cpu.cfs_quota_us").read_text().strip() == "100000"
    finally:
        groups.remove("a")
    _exercise(groups, "b")


def test_v2_on_the_unified_hierarchy(root_name: str) -> None:
    """Membership, freeze and kill are v2's core (no controller needed): run them on the real
    unified hierarchy. On a hybrid host the controllers belong to v1, so limits are left out here;
    test_v2_limit_files checks what v2 writes for them."""
    mount = v2_mount()
    require_tool("cgroup2", mount is not None and (mount / "cgroup.subtree_control").exists(),
                 "a cgroup2 hierarchy (hybrid hosts mount it at /sys/fs/cgroup/unified)")
    available = set((mount / "cgroup.controllers").read_text().split())  # type: ignore[operator]
    controllers = tuple(c for c in ("memory", "pids", "cpu") if c in available)
    groups = CgroupV2(root_name, mount, controllers=controllers)
    _exercise(groups, "c")
    if len(controllers) < 3:
        with pytest.raises(CgroupError, match="lacks controllers"):
            CgroupV2(root_name, mount)


def test_v2_limit_files() -> None:
    assert v2_limit_files(CgroupLimits(memory_bytes=512 << 20, pids=100, cpu_count=2)) == {
        "memory.max": str(512 << 20), "memory.swap.max": "0", "pids.max": "100", "cpu.max": "200000 100000"}
    assert v2_limit_files(LIMITS, ("pids",)) == {"pids.max": "32"}


def test_root_name_must_be_relative() -> None:
    for bad in ("", "/abs", "a/../b"):
        with pytest.raises(ValueError):
            CgroupV1(bad, mounts={})
