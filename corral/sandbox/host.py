"""The `host` provider: no isolation at all, for trusted local work.

Each sandbox is the agent run directly on the host, as the runner's own user, detached in its own
session, in ``<root>/sandboxes/<id>/`` (``state.json``, ``run/agent.sock``, ``home/``, ``tmp/``,
``agent.log``). Processes see the host's whole file system: a path relative to the home (or
``~``-free relative path) lands in the sandbox's home, an absolute one is a host path.

Pause and resume are best-effort: SIGSTOP / SIGCONT to every process of the agent's tree (the
agent is a subreaper, so the tree holds everything the sandbox started); a process that
blocks or handles SIGCONT itself notices. Kill SIGKILLs the tree and removes the directory.
Sandboxes outlive the provider: `adopt` takes back the ones whose agent still runs, and the ones
whose agent is gone (a host reboot) as paused without memory, which `resume` boots again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from corral.sandbox import proctree
from corral.sandbox.agent_client import (
    AGENT_DIR,
    AgentClient,
    AgentFiles,
    AgentProcesses,
    agent_argv,
    agent_env,
    compile_agent,
)
from corral.sandbox.protocol import (
    InvalidSpec,
    Limits,
    Metrics,
    Sandbox,
    SandboxError,
    SandboxInfo,
    SandboxNotFound,
    SandboxSpec,
    SandboxState,
    SandboxStateError,
    TemplateNotFound,
)

SANDBOX_ID = re.compile(r"^[a-z0-9]{1,64}$")
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the final NUL
KILL_TIMEOUT = 5.0


class HostSandbox:
    def __init__(self, provider: HostProvider, directory: Path, state: dict[str, Any]) -> None:
        self._provider = provider
        self.directory = directory
        self._state = state
        self._client = AgentClient(str(directory / "run" / "agent.sock"))
        self._lock = asyncio.Lock()
        self._popen: subprocess.Popen[bytes] | None = None  # when the agent is our child
        self._last_cpu: tuple[float, int] | None = None

    # -- protocol surface --------------------------------------------------------------------

    @property
    def sandbox_id(self) -> str:
        return str(self._state["sandbox_id"])

    @property
    def processes(self) -> AgentProcesses:
        return self._client.processes

    @property
    def files(self) -> AgentFiles:
        return self._client.files

    @property
    def client(self) -> AgentClient:
        return self._client

    @property
    def home(self) -> Path:
        return self.directory / "home"

    @property
    def state(self) -> SandboxState:
        value: SandboxState = self._state["state"]
        return value

    async def info(self) -> SandboxInfo:
        return SandboxInfo(
            sandbox_id=self.sandbox_id, template=self._state["template"], state=self.state,
            started_at=self._state["started_at"], limits=Limits(**self._state["limits"]),
            allow_internet=self._state["allow_internet"], memory_kept=self._state["memory_kept"],
        )

    async def metrics(self) -> Metrics:
        limits = Limits(**self._state["limits"])
        now = time.time()
        procs = proctree.tree(self._state["agent_pid"]) if self._agent_alive() else []
        ticks = sum(p.cpu_ticks for p in procs)
        since, before = self._last_cpu or (self._state["started_at"], 0)
        self._last_cpu = (now, ticks)
        elapsed = max(now - since, 1e-3)
        used_pct = 100.0 * max(ticks - before, 0) / proctree.CLOCK_TICKS / elapsed / max(limits.cpu_count, 1)
        disk_used = await asyncio.to_thread(_disk_usage, self.directory)
        return Metrics(
            timestamp=now, cpu_count=limits.cpu_count, cpu_used_pct=round(min(used_pct, 100.0), 2),
            mem_used=sum(p.rss_bytes for p in procs), mem_total=limits.memory_mb * 1024 * 1024,
            mem_cache=0, disk_used=disk_used, disk_total=limits.disk_mb * 1024 * 1024,
        )

    async def pause(self) -> None:
        async with self._lock:
            if self.state != "running":
                raise SandboxStateError(f"sandbox {self.sandbox_id} is {self.state}; only a running sandbox can be paused")
            if self._agent_alive():
                proctree.stop_tree(self._state["agent_pid"])
            self._save(state="paused")

    async def resume(self) -> None:
        async with self._lock:
            if self.state == "killed":
                raise SandboxStateError(f"sandbox {self.sandbox_id} was killed; create a new one")
            if self.state == "running" and self._agent_alive():
                return
            if self._agent_alive():
                proctree.continue_tree(self._state["agent_pid"])
                self._save(state="running")
                return
            await self._provider._launch(self)  # memory lost: boot again from the files

    async def kill(self) -> None:
        async with self._lock:
            if self.state == "killed":
                return
            await self._kill_processes()
            await self._client.close()
            await asyncio.to_thread(shutil.rmtree, self.directory, True)
            self._state["state"] = "killed"
            self._provider._forget(self.sandbox_id)

    # -- internals ---------------------------------------------------------------------------

    def _agent_alive(self) -> bool:
        pid, start = self._state.get("agent_pid"), self._state.get("agent_start_ticks")
        if not pid or start is None or self._state.get("boot_id") != proctree.boot_id():
            return False
        return proctree.is_alive(pid, start)

    async def _kill_processes(self) -> None:
        if self._agent_alive():
            root = self._state["agent_pid"]
            proctree.send(root, signal.SIGSTOP)  # it starts nothing more while its tree dies
            deadline = time.monotonic() + KILL_TIMEOUT
            while not proctree.kill_descendants(root) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            proctree.send(root, signal.SIGKILL)
        if self._popen is not None:
            await asyncio.to_thread(self._popen.wait)
            self._popen = None

    def _save(self, **changes: Any) -> None:
        self._state.update(changes)
        path = self.directory / "state.json"
        staging = path.with_suffix(".json.new")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # envs may hold secrets
        with os.fdopen(fd, "w") as f:
            json.dump(self._state, f, indent=1)
        os.replace(staging, path)


def _disk_usage(directory: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(directory):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


class HostProvider:
    """Sandboxes without isolation under ``<root>/sandboxes/``; see the module's docstring."""

    name = "host"

    def __init__(self, root: str | os.PathLike[str], *, python: str = sys.executable,
                 templates: tuple[str, ...] = ("base",), ready_timeout: float = 10.0) -> None:
        self.directory = Path(root).absolute() / "sandboxes"
        self.python = python
        self.templates = templates
        self.ready_timeout = ready_timeout
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self._sandboxes: dict[str, HostSandbox] = {}
        compile_agent()

    def template_names(self) -> list[str]:
        return list(self.templates)

    async def create(self, spec: SandboxSpec) -> HostSandbox:
        if not SANDBOX_ID.match(spec.sandbox_id):
            raise InvalidSpec(f"sandbox id {spec.sandbox_id!r} must be 1-64 lowercase letters or digits")
        if spec.template not in self.templates:
            raise TemplateNotFound(f"template {spec.template!r} does not exist on the host provider; "
                                   f"it has {', '.join(self.templates)}")
        directory = self.directory / spec.sandbox_id
        socket_path = directory / "run" / "agent.sock"
        if len(os.fsencode(socket_path)) > SOCKET_PATH_MAX:
            raise InvalidSpec(f"the agent's socket path {socket_path} is longer than {SOCKET_PATH_MAX} bytes; "
                              "use a shorter data directory")
        if spec.sandbox_id in self._sandboxes or directory.exists():
            raise InvalidSpec(f"sandbox {spec.sandbox_id} already exists")
        for sub in ("run", "home", "tmp"):
            (directory / sub).mkdir(parents=True)
        state: dict[str, Any] = {
            "provider": self.name, "sandbox_id": spec.sandbox_id, "template": spec.template,
            "envs": dict(spec.envs), "allow_internet": spec.allow_internet,
            "limits": asdict(spec.limits), "started_at": time.time(), "state": "running",
            "memory_kept": True, "agent_pid": None, "agent_start_ticks": None, "boot_id": None,
        }
        sandbox = HostSandbox(self, directory, state)
        try:
            await self._launch(sandbox)
        except BaseException:
            await sandbox._kill_processes()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._sandboxes[spec.sandbox_id] = sandbox
        return sandbox

    def get(self, sandbox_id: str) -> HostSandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist on this host")
        return sandbox

    async def adopt(self) -> list[Sandbox]:
        if not self.directory.is_dir():
            return []
        for directory in sorted(self.directory.iterdir()):
            if directory.name in self._sandboxes:
                continue
            try:
                state = json.loads((directory / "state.json").read_text())
            except (OSError, ValueError):
                continue  # not a sandbox of ours, or half created
            if state.get("provider") != self.name or state.get("state") == "killed":
                continue
            sandbox = HostSandbox(self, directory, state)
            if not sandbox._agent_alive():
                sandbox._save(state="paused", memory_kept=False, agent_pid=None)
            self._sandboxes[directory.name] = sandbox
        return list[Sandbox](self._sandboxes.values())

    async def close(self) -> None:
        for sandbox in self._sandboxes.values():
            await sandbox._client.close()
        self._sandboxes.clear()

    def _forget(self, sandbox_id: str) -> None:
        self._sandboxes.pop(sandbox_id, None)

    async def _launch(self, sandbox: HostSandbox) -> None:
        """Start the sandbox's agent, detached, and wait until it answers."""
        directory = sandbox.directory
        envs = {"TMPDIR": str(directory / "tmp"), **sandbox._state["envs"]}
        argv = agent_argv(self.python, AGENT_DIR, sandbox.client.socket_path, home=str(sandbox.home), user=self.user)
        with open(directory / "agent.log", "ab") as log:
            popen = subprocess.Popen(argv, env=agent_env(envs), cwd=sandbox.home, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
        sandbox._popen = popen
        stat = proctree.read_stat(popen.pid)
        sandbox._save(agent_pid=popen.pid, agent_start_ticks=stat.start_ticks if stat else None,
                      boot_id=proctree.boot_id(), state="running")
        try:
            await sandbox.client.wait_ready(self.ready_timeout)
        except SandboxError as exc:
            raise SandboxError(f"the agent of sandbox {sandbox.sandbox_id} did not start: {exc}; "
                               f"its log: {_tail(directory / 'agent.log')}") from None
        sandbox._save(memory_kept=True)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace").strip() or "(empty)"
    except OSError:
        return "(none)"
