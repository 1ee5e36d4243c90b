"""Kill leaves nothing behind, however many times: processes, mounts, loop devices, cgroups, directories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.sandbox.local.cgroups import v1_mounts
from corral.sandbox.protocol import SandboxSpec

from .local_support import (
    Env,
    local_env,
    loop_devices_of,
    mountinfo_lines,
    processes_of_uid,
    require_network_tools,
    run,
    sh,
)

CYCLES = 200


@pytest.fixture
def env() -> Iterator[Env]:
    yield from local_env()


def _snapshot(env: Env, runtime: Path) -> dict[str, object]:
    hierarchies = {v1_mounts()[c] for c in ("memory", "pids", "cpu", "cpuacct", "freezer")}
    return {
        "processes": [pid for slot in range(4) for pid in processes_of_uid(env.uid_base + slot)],
        "mounts": [line for line in mountinfo_lines(str(runtime)) + mountinfo_lines(str(env.root))
                   if f" {runtime / 'share'} " not in line],  # the open provider's share (share.py)
        "loops": loop_devices_of(str(env.root)),
        "cgroups": sorted(str(p) for h in hierarchies for p in (h / env.cgroup_root).glob("*") if p.is_dir()),
        "sandbox dirs": sorted(os.listdir(env.root / "sandboxes")),
        "runtime dirs": sorted(d for d in os.listdir(runtime) if d not in ("templates", "share", "owner.json")),
    }


@pytest.mark.timeout(300)  # ~30 s on an idle host; disks and loop devices are what a busy CI host slows most
def test_many_create_kill_cycles_leave_nothing_behind(env: Env) -> None:
    async def scenario() -> None:
        provider = env.make()
        runtime = provider.runtime
        empty = _snapshot(env, runtime)
        assert not any(empty.values()), empty
        for n in range(CYCLES):
            sandbox = await provider.create(SandboxSpec(sandbox_id=f"c{n}", allow_internet=n % 20 == 0))
            if n % 25 == 0:  # now and then: with a background process, and paused
                await sh(sandbox, "sleep 600 > /dev/null 2>&1 &")
                await sandbox.pause()
            assert sandbox.host_uid == env.uid_base  # the slot is reused after each kill
            await sandbox.kill()
        assert _snapshot(env, runtime) == empty
        await provider.close()
        assert mountinfo_lines(str(runtime)) == [], "the share stays mounted after its provider closed"

    require_network_tools()
    run(scenario(), timeout=280)
