"""Sandboxes a test run leaves behind: killing them under a directory, and finding what is left at its end.

Sandboxes deliberately outlive their node and runner, so a test that deletes its data directory
without killing them leaks processes, a loop-mounted disk, cgroups and a runtime directory under
/run/corral. Fixtures that hold data directories call `kill_sandboxes_under(dir)` before they go;
the session fixture in tests/conftest.py then checks with `find()` that nothing of this session is
left. Every local provider of the session (in this process or in a child node or runner, through
CORRAL_SANDBOX_CGROUP_ROOT) puts its cgroups under SESSION_CGROUP_ROOT, which is what scopes the
check to this run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SESSION_CGROUP_ROOT = f"corral-t{os.getpid()}-{uuid.uuid4().hex[:6]}"
RUNTIME_PARENT = Path("/run/corral")
STATE_GLOBS = ("sandboxes/*/state.json", "*/sandboxes/*/state.json", "*/*/sandboxes/*/state.json",
               "*/*/*/sandboxes/*/state.json")


def kill_sandboxes_under(path: Path) -> None:
    """Kill every sandbox whose provider root is under `path` (local: adopt and kill; host: kill its agent)."""
    local_roots: set[Path] = set()
    for pattern in STATE_GLOBS:
        for state_file in path.glob(pattern):
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(state_file.read_text())
                if "host_uid" in state:
                    local_roots.add(state_file.parent.parent.parent)
                elif state.get("agent_pid"):
                    _kill_host_agent(state)
    for root in sorted(local_roots):
        asyncio.run(_kill_local(root))


async def _kill_local(root: Path) -> None:
    from corral.sandbox.local import LocalProvider

    provider = LocalProvider(root)
    try:
        for sandbox in await provider.adopt():
            await sandbox.kill()
    finally:
        await provider.close()


def _kill_host_agent(state: dict[str, object]) -> None:
    from corral.sandbox import proctree

    agent = state.get("agent_pid")
    ticks = state.get("agent_start_ticks")
    if isinstance(agent, int) and proctree.is_alive(agent, ticks if isinstance(ticks, int) else None):
        proctree.send(agent, signal.SIGSTOP)
        proctree.kill_descendants(agent)
        proctree.send(agent, signal.SIGKILL)


# -- what is left at the end of the session ---------------------------------------------------

@dataclass
class Leftovers:
    cgroups: list[Path] = field(default_factory=list)  # sandbox groups (leaves) under the session's root
    processes: list[int] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)  # "/dev/loopN: backing file"
    runtime_dirs: list[Path] = field(default_factory=list)
    parents: list[Path] = field(default_factory=list)  # the session's cgroup roots themselves (not a leak)

    def __bool__(self) -> bool:
        return bool(self.cgroups or self.processes or self.mounts or self.loops or self.runtime_dirs)

    def describe(self) -> str:
        parts = {"processes": self.processes, "cgroups": [str(p) for p in self.cgroups], "mounts": self.mounts,
                 "loop devices": self.loops, "runtime dirs": [str(p) for p in self.runtime_dirs]}
        return "; ".join(f"{k}: {v}" for k, v in parts.items() if v)


def _hierarchies() -> list[Path]:
    from corral.sandbox.local.cgroups import V1_CONTROLLERS, v1_mounts, v2_mount

    mounts = v1_mounts()
    found = {mounts[c] for c in V1_CONTROLLERS if c in mounts}
    unified = v2_mount()
    if unified is not None:
        found.add(unified)
    return sorted(found)


def find(cgroup_root: str = SESSION_CGROUP_ROOT) -> Leftovers:
    left = Leftovers()
    ids: set[str] = set()
    pids: set[int] = set()
    for hierarchy in _hierarchies():
        top = hierarchy / cgroup_root
        if not top.is_dir():
            continue
        for dirpath, dirnames, _files in os.walk(top):
            here = Path(dirpath)
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (here / "cgroup.procs").read_text().split())
            if dirnames or here == top:
                left.parents.append(here)
            else:
                left.cgroups.append(here)
                ids.add(here.name)
    left.processes = sorted(pids)
    owned: list[Path] = []
    if RUNTIME_PARENT.is_dir():
        for owner in RUNTIME_PARENT.glob("*/owner.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                name = str(json.loads(owner.read_text())["cgroup_root"])
                if name == cgroup_root or name.startswith(cgroup_root + "/"):
                    owned.append(owner.parent)
    left.runtime_dirs = sorted(owned)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    left.mounts = [p for p in points
                   if any(p.endswith(f"/{i}/disk") for i in ids) or any(p.startswith(f"{d}/") for d in owned)]
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            target = backing.read_text().strip()
            if any(f"/sandboxes/{i}/disk.img" in target for i in ids):
                left.loops.append(f"/dev/{backing.parent.parent.name}: {target}")
    return left


def clear(left: Leftovers) -> None:
    """Kill, unmount, detach and remove what `find()` reported (best effort)."""
    from corral.sandbox.local.disk import unmount

    groups = sorted(left.cgroups, key=lambda p: len(p.parts), reverse=True)
    for _attempt in range(50):
        alive = False
        for group in groups:
            freezer = group / "freezer.state"
            with contextlib.suppress(OSError):
                procs = [int(p) for p in (group / "cgroup.procs").read_text().split()]
                if procs:
                    alive = True
                    if freezer.exists():
                        freezer.write_text("FROZEN")
                    for pid in procs:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    if freezer.exists():
                        freezer.write_text("THAWED")
        if not alive:
            break
        time.sleep(0.1)
    for pid in left.processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for point in left.mounts:
        with contextlib.suppress(OSError):
            unmount(Path(point))
    for group in [*groups, *sorted(left.parents, key=lambda p: len(p.parts), reverse=True)]:
        with contextlib.suppress(OSError):
            group.rmdir()
    for directory in left.runtime_dirs:
        shutil.rmtree(directory, ignore_errors=True)
