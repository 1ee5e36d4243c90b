"""The `local` provider: sandboxes as bubblewrap namespaces, cgroups and a loop-mounted disk on this host.

    provider = LocalProvider(Path("/var/lib/corral/local"))
    sandbox = await provider.create(SandboxSpec(sandbox_id="abc123"))
    events = await sandbox.processes.start(ProcessConfig(cmd="/bin/bash", args=["-lc", "echo hi"]))

The provider must run as root (it mounts disks, writes cgroups and drops each sandbox to its
own unprivileged host uid). Sandboxes are not its children in any way that matters: they
outlive it, and a new provider on the same root takes them back with `adopt()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from .. import proctree
from ..agent_client import AGENT_DIR
from ..protocol import (
    InvalidSpec,
    Limits,
    Sandbox,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
    TemplateNotFound,
)
from . import disk, share, templates
from .boot import Host, Tools
from .cgroups import Cgroups, detect
from .sandbox import LocalSandbox
from .state import SandboxState, StateFile
from .uids import UID_DIR, UidClaims

ID_RE = re.compile(r"^[a-z0-9]{1,64}$")
ENV_KEY_RE = re.compile(r"^[^=\x00]+$")
MIN_LIMITS = Limits(cpu_count=1, memory_mb=16, disk_mb=16, pids=8)
MAX_CPUS = 256
MAX_DISK_MB = 1024 * 1024  # 1 TiB (sparse: only what is written takes space)
MAX_PIDS = 4_194_304  # the kernel's pid_max ceiling
READY_TIMEOUT_S = 15.0
RUNTIME_PARENT = Path("/run/corral")
RUNTIME_OWNER = "owner.json"  # in a runtime directory under RUNTIME_PARENT: the root it serves
STALE_EMPTY_S = 60.0  # an empty runtime directory this old belongs to no provider
log = structlog.get_logger("corral.sandbox.local")
CGROUP_ROOT_ENV = "CORRAL_SANDBOX_CGROUP_ROOT"  # where sandboxes' cgroups go (default "corral")


def _host_memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1 << 20


def _searchable(path: Path) -> bool:
    """Can other users reach `path` (bubblewrap runs as the sandbox's uid)?"""
    return all(os.stat(parent).st_mode & 0o001 for parent in path.resolve().parents)


def _runtime_dir(root: Path) -> Path:
    """Under the root when others can reach it; else a directory of its own under /run."""
    if _searchable(root):
        return root / "rt"
    return RUNTIME_PARENT / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def sweep_runtime_dirs(parent: Path = RUNTIME_PARENT) -> list[Path]:
    """Remove the runtime directories under `parent` that no provider can come back to.

    That is one whose root (named in its owner file) is gone and under which nothing is mounted,
    or an empty one older than a minute (a provider that stopped between mkdir and its owner file).
    A directory of a root that still exists is left alone: its provider may be running, or come
    back to adopt its sandboxes.
    """
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except FileNotFoundError:
        return removed
    mounted = _mount_points()
    now = time.time()
    for directory in entries:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if not directory.is_dir() or directory.is_symlink() or directory == UID_DIR:
                continue
            owner = directory / RUNTIME_OWNER
            if owner.exists():
                root = Path(json.loads(owner.read_text())["root"])
                prefix = f"{directory}/"
                own_share = str(directory / share.SHARE)
                if root.exists() or any(m.startswith(prefix) and m != own_share for m in mounted):
                    continue
                share.release(directory)
                shutil.rmtree(directory)
                removed.append(directory)
            elif not any(directory.iterdir()) and now - directory.stat().st_mtime > STALE_EMPTY_S:
                directory.rmdir()
                removed.append(directory)
    return removed


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


class LocalProvider:
    name = "local"

    def __init__(self, root: Path, *, uid_base: int = 1_000_000, uid_count: int = 100_000,
                 cgroup_root: str | None = None, cgroups: Cgroups | None = None, runtime_dir: Path | None = None,
                 boot_id: Callable[[], str] = proctree.boot_id, tools: Tools | None = None,
                 ready_timeout: float = READY_TIMEOUT_S, uid_claims: UidClaims | None = None,
                 default_limits: Limits | None = None) -> None:
        if os.geteuid() != 0:
            raise SandboxError("the local provider needs root (it mounts disks and writes cgroups); "
                               "run the runner as root, or use the host provider")
        if uid_base < 65536 or uid_count < 1:
            raise ValueError("uid_base must be at least 65536 (above every host account) and uid_count positive")
        root = Path(root).absolute()  # bwrap and slirp4netns run in other directories: a relative root would not resolve
        self.root = root
        self.uid_base = uid_base
        self.uid_count = uid_count
        self.ready_timeout = ready_timeout
        self._boot_id = boot_id
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "sandboxes").mkdir(mode=0o700, exist_ok=True)
        runtime = runtime_dir or _runtime_dir(root)
        if root in runtime.parents:
            os.chmod(root, 0o711)  # searchable, not listable: the sandboxes' uids pass through to rt/
        elif runtime_dir is None:
            sweep_runtime_dirs(runtime.parent)  # those of roots deleted without their provider closing
        runtime.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(runtime, 0o711)
        cgroup_root = cgroup_root or os.environ.get(CGROUP_ROOT_ENV) or "corral"
        if runtime_dir is None and root not in runtime.parents:
            (runtime / RUNTIME_OWNER).write_text(json.dumps({"root": str(root.resolve()), "cgroup_root": cgroup_root}))
        if not _searchable(runtime):
            raise SandboxError(f"sandboxes cannot reach {runtime}: a directory above it does not let other users "
                               "search it (chmod o+x it, or pass another runtime_dir)")
        self.runtime = runtime
        self.host = Host(root, runtime, cgroups or detect(cgroup_root), tools or Tools.find())
        self.share = share.ensure(runtime)  # the agent and the templates' /etc, bound from a tmpfs (share.py)
        self.host.agent_dir = share.install_agent(self.share, Path(AGENT_DIR))
        self._sandboxes: dict[str, LocalSandbox] = {}
        self.uids = uid_claims or UidClaims()
        self._claimed: dict[str, int] = {}  # sandbox id → the host uid it holds a claim on
        self._lock = asyncio.Lock()
        self._host_memory_mb = _host_memory_mb()
        self.default_limits = default_limits or Limits()
        # Warm what the first create would otherwise make: the base /etc and the default disk image.
        templates.get(root, templates.BASE, etc_root=self._etc_root)
        disk.pristine_image(self.host.images, self.default_limits.disk_mb)

    # -- protocol ----------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> LocalSandbox:
        self._validate(spec)
        template = templates.get(self.root, spec.template, etc_root=self._etc_root)
        async with self._lock:
            if spec.sandbox_id in self._sandboxes or self.host.paths(spec.sandbox_id).dir.exists():
                raise InvalidSpec(f"a sandbox {spec.sandbox_id!r} already exists on this host: pick another id")
            paths = self.host.paths(spec.sandbox_id)
            paths.dir.mkdir(mode=0o700)  # first: a claim whose sandbox directory is missing is stale
            try:
                host_uid = await asyncio.to_thread(self._allocate, spec.sandbox_id)
            except BaseException:
                paths.dir.rmdir()
                raise
        state = SandboxState(spec=spec, slot=host_uid - self.uid_base, host_uid=host_uid, boot_id=self._boot_id(),
                             phase="running", started_at=time.time(), cgroup_version=self.host.cgroups.version)
        try:
            state, process = await asyncio.to_thread(self._boot_new, state, template)
            self.host.reap_when_done(spec.sandbox_id, asyncio.get_running_loop())
        except BaseException:
            await asyncio.to_thread(self._discard, spec.sandbox_id)
            raise
        sandbox = LocalSandbox(self.host, state, template, boot_id=self._boot_id, on_killed=self._forget,
                               process=process)
        self._sandboxes[spec.sandbox_id] = sandbox
        try:
            await sandbox.wait_ready(self.ready_timeout)
        except BaseException:
            await sandbox.kill()
            raise
        return sandbox

    def get(self, sandbox_id: str) -> LocalSandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r} on this host (killed, or never created here)")
        return sandbox

    def sandboxes(self) -> list[LocalSandbox]:
        return [*self._sandboxes.values()]

    async def adopt(self) -> list[Sandbox]:
        """Take back every sandbox under the root (after a restart); `get(id)` then finds each."""
        return [*await asyncio.to_thread(self._adopt)]

    async def close(self) -> None:
        for sandbox in list(self._sandboxes.values()):
            await sandbox.detach()
        self._sandboxes.clear()
        try:
            left = any((self.root / "sandboxes").iterdir())
        except FileNotFoundError:  # the root was deleted under us: nothing can come back to it either
            left = any(self.runtime.glob("*/disk"))
        if not left:  # nothing to come back to: no runtime directory left
            share.release(self.runtime)
            shutil.rmtree(self.runtime, ignore_errors=True)
        legacy = self.root / "rt"  # the runtime directory of when the root was searchable (Host.paths)
        if legacy != self.runtime and legacy.is_dir() and not any(
                p.name not in (share.SHARE, "templates") for p in legacy.iterdir()):
            share.release(legacy)
            shutil.rmtree(legacy, ignore_errors=True)

    # -- templates ---------------------------------------------------------------------------

    @property
    def _etc_root(self) -> Path:
        return self.share / "templates"

    def add_template(self, name: str, rootfs: Path) -> templates.Template:
        """What `corral template add NAME --rootfs DIR` does."""
        templates.add(self.root, name, rootfs)
        return templates.get(self.root, name, etc_root=self._etc_root)

    def template_names(self) -> list[str]:
        return templates.names(self.root)

    def list_templates(self) -> list[templates.Template]:
        return templates.list_templates(self.root, etc_root=self._etc_root)

    # -- internals ---------------------------------------------------------------------------

    def _boot_new(self, state: SandboxState,
                  template: templates.Template) -> tuple[SandboxState, subprocess.Popen[bytes]]:
        spec = state.spec
        paths = self.host.paths(spec.sandbox_id)
        self.host.prepare_disk(paths, spec, template, state.host_uid)
        booted = self.host.boot(spec, template, state.host_uid)
        state = state.evolve(bwrap_pid=booted.process.pid, slirp_pid=booted.slirp_pid)
        StateFile(paths.state).write(state)
        return state, booted.process

    def _discard(self, sandbox_id: str) -> None:
        """Undo a failed create."""
        try:
            self.host.destroy(sandbox_id, None)
        finally:
            self._release(sandbox_id)

    def _forget(self, sandbox: LocalSandbox) -> None:
        self._sandboxes.pop(sandbox.sandbox_id, None)
        self._release(sandbox.sandbox_id)

    def _validate(self, spec: SandboxSpec) -> None:
        if not ID_RE.match(spec.sandbox_id):
            raise InvalidSpec(f"sandbox id {spec.sandbox_id!r} must be 1 to 64 lowercase letters and digits")
        if not isinstance(spec.template, str) or not spec.template:
            raise TemplateNotFound("no template given: use 'base' or a registered template")
        limits = spec.limits
        bounds = {
            "cpu_count": (MIN_LIMITS.cpu_count, MAX_CPUS),
            "memory_mb": (MIN_LIMITS.memory_mb, self._host_memory_mb),
            "disk_mb": (MIN_LIMITS.disk_mb, MAX_DISK_MB),
            "pids": (MIN_LIMITS.pids, MAX_PIDS),
        }
        for field_name, (low, high) in bounds.items():
            value = getattr(limits, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidSpec(f"limits.{field_name} is {value!r}: it must be an integer from {low} to {high} "
                                  "on this host")
        for key, value in spec.envs.items():
            if not isinstance(key, str) or not ENV_KEY_RE.match(key) or not isinstance(value, str) or "\x00" in value:
                raise InvalidSpec(f"environment variable {key!r} is not valid: names are non-empty without '=' "
                                  "and values have no NUL byte")

    def _allocate(self, sandbox_id: str) -> int:
        """A host uid no other sandbox on this host holds, whichever provider made it (uids.py)."""
        uid = self.uids.claim(self.uid_base, self.uid_count, self.root, sandbox_id)
        self._claimed[sandbox_id] = uid
        return uid

    def _release(self, sandbox_id: str) -> None:
        uid = self._claimed.pop(sandbox_id, None)
        if uid is not None:
            self.uids.release(uid, self.root, sandbox_id)

    def _adopt(self) -> list[LocalSandbox]:
        adopted: list[LocalSandbox] = []
        for directory in sorted((self.root / "sandboxes").iterdir()):
            sandbox_id = directory.name
            if sandbox_id in self._sandboxes:
                adopted.append(self._sandboxes[sandbox_id])
                continue
            try:
                state = StateFile(directory / "state.json").read()
            except (OSError, ValueError, KeyError, TypeError):
                # A create that died half-way: nothing in it is worth keeping.
                with contextlib.suppress(SandboxError, OSError):
                    self.host.destroy(sandbox_id)
                continue
            try:
                template = templates.get(self.root, state.spec.template, etc_root=self._etc_root)
            except TemplateNotFound:
                template = templates.get(self.root, templates.BASE, etc_root=self._etc_root)  # its files still resume
            sandbox = LocalSandbox(self.host, state, template, boot_id=self._boot_id, on_killed=self._forget)
            same_boot = state.boot_id == self._boot_id()
            alive = same_boot and bool(self.host.cgroups.pids(sandbox_id))
            if not alive:
                if same_boot:  # its processes died: clear what is left of them
                    self.host.stop(sandbox_id)
                    disk.unmount(sandbox.paths.disk)
                sandbox.mark_memory_lost()
            if not self.uids.reclaim(state.host_uid, self.root, sandbox_id):
                log.warning("local.uid_conflict", sandbox=sandbox_id, uid=state.host_uid,
                            holder=self.uids.owner(state.host_uid))
            self._claimed[sandbox_id] = state.host_uid
            self._sandboxes[sandbox_id] = sandbox
            adopted.append(sandbox)
        return adopted
