"""Control groups for sandboxes: limits, membership, freezing and killing, v1 or v2 behind one interface.

A group is named `<root_name>/<sandbox_id>` in every hierarchy the driver uses. Processes join
a group by writing their pid to each of `join_files(name)` before they exec into the sandbox.
On cgroup v1 (separate hierarchies per controller) the driver uses memory, pids, cpu, cpuacct
and freezer; on v2 one unified directory holds everything, with `cgroup.freeze` and
`cgroup.kill`. See docs/adr/0008-cgroups-v1-and-v2.md.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

CPU_PERIOD_US = 100_000
POLL_S = 0.0005


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file."""


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    pids: int
    cpu_count: int


@dataclass(frozen=True)
class CgroupUsage:
    cpu_ns: int  # cumulative CPU time of the group
    memory_bytes: int  # charged memory, page cache included
    cache_bytes: int  # of which page cache (files, tmpfs)
    memory_limit: int


def _write(path: Path, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        raise CgroupError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in _read(path).split()]
    except FileNotFoundError:
        return []


def _rmdir(path: Path, deadline: float) -> None:
    """rmdir a cgroup; the kernel may report it busy for a moment after its last process exited."""
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {exc.strerror}") from exc
            time.sleep(POLL_S)


def _parse_stat(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Cgroups(ABC):
    """One way of placing sandboxes in cgroups (v1 or v2), rooted at `root_name` in each hierarchy."""

    version: int

    def __init__(self, root_name: str) -> None:
        if not root_name or root_name.startswith("/") or ".." in root_name.split("/"):
            raise ValueError(f"cgroup root name must be a relative path, got {root_name!r}")
        self.root_name = root_name

    @abstractmethod
    def create(self, name: str, limits: CgroupLimits) -> None:
        """Create the group (and its parents) and write its limits; idempotent."""

    @abstractmethod
    def join_files(self, name: str) -> list[Path]:
        """Files a process writes its pid to, to join the group in every hierarchy."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def pids(self, name: str) -> list[int]:
        """Processes (thread group ids) in the group; empty when it does not exist."""

    @abstractmethod
    def freeze(self, name: str, timeout: float = 5.0) -> None:
        """Freeze every process of the group; returns once the kernel reports it frozen."""

    @abstractmethod
    def thaw(self, name: str) -> None: ...

    @abstractmethod
    def frozen(self, name: str) -> bool: ...

    @abstractmethod
    def kill(self, name: str, timeout: float = 10.0) -> None:
        """SIGKILL every process of the group, forks racing the kill included; returns once it is empty."""

    @abstractmethod
    def remove(self, name: str, timeout: float = 5.0) -> None:
        """Remove the (empty) group from every hierarchy; idempotent."""

    @abstractmethod
    def usage(self, name: str) -> CgroupUsage: ...

    def oom_kills(self, name: str) -> int:
        """Processes of the group the kernel killed for exceeding its memory limit (0 when unknown)."""
        return 0

    @abstractmethod
    def names(self) -> list[str]:
        """Groups under the root name, in any hierarchy (for sweeping leftovers)."""

    def _wait_empty(self, name: str, deadline: float) -> None:
        while self.pids(name):
            if time.monotonic() > deadline:
                raise CgroupError(f"cgroup {self.root_name}/{name} still has processes {self.pids(name)}")
            time.sleep(POLL_S)


V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")


class CgroupV1(Cgroups):
    """cgroup v1: one directory per hierarchy (memory, pids, cpu, cpuacct, freezer)."""

    version = 1

    def __init__(self, root_name: str, mounts: dict[str, Path] | None = None) -> None:
        super().__init__(root_name)
        self.mounts = mounts if mounts is not None else v1_mounts()
        missing = [c for c in V1_CONTROLLERS if c not in self.mounts]
        if missing:
            raise CgroupError(f"cgroup v1 controllers not mounted: {', '.join(missing)}; "
                              "mount them under /sys/fs/cgroup or use a cgroup v2 host")
        # One directory per distinct hierarchy: cpu and cpuacct are often co-mounted.
        self._hierarchies = sorted({self.mounts[c] for c in V1_CONTROLLERS})

    def _dir(self, controller: str, name: str) -> Path:
        return self.mounts[controller] / self.root_name / name

    def _dirs(self, name: str) -> list[Path]:
        return [h / self.root_name / name for h in self._hierarchies]

    def create(self, name: str, limits: CgroupLimits) -> None:
        for path in self._dirs(name):
            path.mkdir(parents=True, exist_ok=True)
        mem = self._dir("memory", name)
        _write(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
        if (mem / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit either
            _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        with contextlib.suppress(CgroupError):
            _write(mem / "memory.swappiness", "0")
        _write(self._dir("pids", name) / "pids.max", str(limits.pids))
        cpu = self._dir("cpu", name)
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(CPU_PERIOD_US * limits.cpu_count))

    def join_files(self, name: str) -> list[Path]:
        return [path / "cgroup.procs" for path in self._dirs(name)]

    def exists(self, name: str) -> bool:
        return any(path.is_dir() for path in self._dirs(name))

    def pids(self, name: str) -> list[int]:
        seen: set[int] = set()
        for path in self._dirs(name):
            seen.update(_read_pids(path / "cgroup.procs"))
        return sorted(seen)

    def freeze(self, name: str, timeout: float = 5.0) -> None:
        state = self._dir("freezer", name) / "freezer.state"
        _write(state, "FROZEN")
        deadline = time.monotonic() + timeout
        while _read(state).strip() != "FROZEN":
            if time.monotonic() > deadline:
                raise CgroupError(f"{state} did not reach FROZEN within {timeout} s")
            time.sleep(POLL_S)

    def thaw(self, name: str) -> None:
        _write(self._dir("freezer", name) / "freezer.state", "THAWED")

    def frozen(self, name: str) -> bool:
        try:
            return _read(self._dir("freezer", name) / "freezer.state").strip() != "THAWED"
        except FileNotFoundError:
            return False

    def kill(self, name: str, timeout: float = 10.0) -> None:
        # v1 has no cgroup.kill: freeze so nothing forks while we look, SIGKILL all, thaw so
        # the signals are delivered, and repeat until empty (a process may have been mid-fork).
        deadline = time.monotonic() + timeout
        if not self._dir("freezer", name).is_dir():
            _kill_all(self.pids(name))
            self._wait_empty(name, deadline)
            return
        while self.pids(name):
            with contextlib.suppress(CgroupError):
                self.freeze(name, timeout=max(0.1, deadline - time.monotonic()))
            _kill_all(self.pids(name))
            self.thaw(name)
            end = min(deadline, time.monotonic() + 0.5)
            while self.pids(name) and time.monotonic() < end:
                time.sleep(POLL_S)
            if time.monotonic() > deadline and self.pids(name):
                raise CgroupError(f"cgroup {self.root_name}/{name} still has processes {self.pids(name)}")

    def remove(self, name: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for path in self._dirs(name):
            _rmdir(path, deadline)

    def usage(self, name: str) -> CgroupUsage:
        mem = self._dir("memory", name)
        stat = _parse_stat(_read(mem / "memory.stat"))
        return CgroupUsage(
            cpu_ns=int(_read(self._dir("cpuacct", name) / "cpuacct.usage")),
            memory_bytes=int(_read(mem / "memory.usage_in_bytes")),
            cache_bytes=stat.get("total_cache", stat.get("cache", 0)),
            memory_limit=int(_read(mem / "memory.limit_in_bytes")),
        )

    def oom_kills(self, name: str) -> int:
        try:
            return _parse_stat(_read(self._dir("memory", name) / "memory.oom_control")).get("oom_kill", 0)
        except (OSError, CgroupError, ValueError):
            return 0

    def names(self) -> list[str]:
        found: set[str] = set()
        for hierarchy in self._hierarchies:
            root = hierarchy / self.root_name
            if root.is_dir():
                found.update(p.name for p in root.iterdir() if p.is_dir())
        return sorted(found)


V2_CONTROLLERS = ("memory", "pids", "cpu")


class CgroupV2(Cgroups):
    """cgroup v2: one directory in the unified hierarchy, with cgroup.freeze and cgroup.kill.

    `controllers` are the ones to enable and limit; a host whose v2 hierarchy lacks one fails
    at construction. Passing fewer (tests on hybrid hosts, where v1 holds the controllers)
    runs without those limits.
    """

    version = 2

    def __init__(self, root_name: str, mount: Path | None = None,
                 controllers: tuple[str, ...] = V2_CONTROLLERS) -> None:
        super().__init__(root_name)
        found = mount or v2_mount()
        if found is None:
            raise CgroupError("no cgroup2 hierarchy is mounted")
        self.mount: Path = found
        self.controllers = controllers
        available = set(_read(self.mount / "cgroup.controllers").split())
        missing = [c for c in controllers if c not in available]
        if missing:
            raise CgroupError(f"cgroup v2 at {self.mount} lacks controllers {', '.join(missing)} "
                              "(on a hybrid host they are bound to v1: use CgroupV1)")

    def _dir(self, name: str) -> Path:
        return self.mount / self.root_name / name

    def _enable_controllers(self) -> None:
        if not self.controllers:
            return
        wanted = " ".join("+" + c for c in self.controllers)
        parent = self.mount
        for part in Path(self.root_name).parts:
            enabled = set(_read(parent / "cgroup.subtree_control").split())
            if not set(self.controllers) <= enabled:
                _write(parent / "cgroup.subtree_control", wanted)
            parent = parent / part
            parent.mkdir(exist_ok=True)
        enabled = set(_read(parent / "cgroup.subtree_control").split())
        if not set(self.controllers) <= enabled:
            _write(parent / "cgroup.subtree_control", wanted)

    def create(self, name: str, limits: CgroupLimits) -> None:
        (self.mount / self.root_name).mkdir(parents=True, exist_ok=True)
        self._enable_controllers()
        path = self._dir(name)
        path.mkdir(exist_ok=True)
        for key, value in v2_limit_files(limits, self.controllers).items():
            _write(path / key, value)

    def join_files(self, name: str) -> list[Path]:
        return [self._dir(name) / "cgroup.procs"]

    def exists(self, name: str) -> bool:
        return self._dir(name).is_dir()

    def pids(self, name: str) -> list[int]:
        return sorted(set(_read_pids(self._dir(name) / "cgroup.procs")))

    def _events(self, name: str) -> dict[str, int]:
        return _parse_stat(_read(self._dir(name) / "cgroup.events"))

    def freeze(self, name: str, timeout: float = 5.0) -> None:
        _write(self._dir(name) / "cgroup.freeze", "1")
        deadline = time.monotonic() + timeout
        while self._events(name).get("frozen") != 1:
            if time.monotonic() > deadline:
                raise CgroupError(f"{self._dir(name)} did not freeze within {timeout} s")
            time.sleep(POLL_S)

    def thaw(self, name: str) -> None:
        _write(self._dir(name) / "cgroup.freeze", "0")

    def frozen(self, name: str) -> bool:
        try:
            return self._events(name).get("frozen") == 1
        except FileNotFoundError:
            return False

    def kill(self, name: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        path = self._dir(name)
        if not path.is_dir():
            return
        if (path / "cgroup.kill").exists():
            _write(path / "cgroup.kill", "1")
        else:  # kernels before 5.14
            self.freeze(name)
            _kill_all(self.pids(name))
            self.thaw(name)
        self._wait_empty(name, deadline)

    def remove(self, name: str, timeout: float = 5.0) -> None:
        _rmdir(self._dir(name), time.monotonic() + timeout)

    def usage(self, name: str) -> CgroupUsage:
        path = self._dir(name)
        cpu = _parse_stat(_read(path / "cpu.stat"))
        if "memory" in self.controllers:
            stat = _parse_stat(_read(path / "memory.stat"))
            current = int(_read(path / "memory.current"))
            raw_limit = _read(path / "memory.max").strip()
            limit = 0 if raw_limit == "max" else int(raw_limit)
            cache = stat.get("file", 0)
        else:
            current = limit = cache = 0
        return CgroupUsage(cpu_ns=cpu.get("usage_usec", 0) * 1000, memory_bytes=current,
                           cache_bytes=cache, memory_limit=limit)

    def oom_kills(self, name: str) -> int:
        if "memory" not in self.controllers:
            return 0
        try:
            return _parse_stat(_read(self._dir(name) / "memory.events")).get("oom_kill", 0)
        except (OSError, CgroupError, ValueError):
            return 0

    def names(self) -> list[str]:
        root = self.mount / self.root_name
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def v2_limit_files(limits: CgroupLimits, controllers: tuple[str, ...] = V2_CONTROLLERS) -> dict[str, str]:
    """The v2 interface files and values that express `limits`, for the enabled controllers."""
    files: dict[str, str] = {}
    if "memory" in controllers:
        files["memory.max"] = str(limits.memory_bytes)
        files["memory.swap.max"] = "0"
    if "pids" in controllers:
        files["pids.max"] = str(limits.pids)
    if "cpu" in controllers:
        files["cpu.max"] = f"{CPU_PERIOD_US * limits.cpu_count} {CPU_PERIOD_US}"
    return files


def _cgroup_mounts() -> list[tuple[str, Path, set[str]]]:
    """(fstype, mount point, super options) of every cgroup mount in this mount namespace."""
    found: list[tuple[str, Path, set[str]]] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            fstype, _source, options = (post.split() + ["", "", ""])[:3]
            if fstype in ("cgroup", "cgroup2") and fields[3] == "/":
                found.append((fstype, Path(fields[4]), set(options.split(","))))
    return found


def v1_mounts() -> dict[str, Path]:
    """Controller name → mount point of its v1 hierarchy."""
    out: dict[str, Path] = {}
    for fstype, point, options in _cgroup_mounts():
        if fstype == "cgroup":
            for controller in V1_CONTROLLERS:
                if controller in options:
                    out.setdefault(controller, point)
    return out


def v2_mount() -> Path | None:
    for fstype, point, _options in _cgroup_mounts():
        if fstype == "cgroup2":
            return point
    return None


def detect(root_name: str) -> Cgroups:
    """v1 when the controllers sit in v1 hierarchies (hybrid hosts included), else v2."""
    mounts = v1_mounts()
    if all(c in mounts for c in V1_CONTROLLERS):
        return CgroupV1(root_name, mounts)
    return CgroupV2(root_name)
