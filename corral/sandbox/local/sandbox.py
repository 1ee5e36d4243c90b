"""One sandbox of the local provider: its state, metrics, pause, resume and kill."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable

from ..agent_client import AgentClient, AgentFiles, AgentProcesses
from ..protocol import (
    End,
    Metrics,
    ProcessConfig,
    ProcessEvent,
    ProcessInfo,
    PtySize,
    SandboxInfo,
    SandboxNotFound,
    SandboxStateError,
    Signal,
)
from . import disk
from .boot import Host, SandboxPaths
from .state import SandboxState, StateFile
from .templates import Template

READY_POLL_S = 0.0005
KILLED_CODES = (-9, 128 + 9)  # killed by SIGKILL itself, or a shell whose child was


class OomAwareProcesses:
    """The agent's processes, except that a process the kernel killed for the sandbox's memory limit ends
    with an End whose error says so (the E2B SDK shows it in CommandExitException), not a bare SIGKILL."""

    def __init__(self, inner: AgentProcesses, oom_kills: Callable[[], int], memory_mb: int) -> None:
        self._inner = inner
        self._oom_kills = oom_kills
        self._memory_mb = memory_mb

    async def _explained(self, events: AsyncIterator[ProcessEvent], before: int) -> AsyncIterator[ProcessEvent]:
        async for event in events:
            if isinstance(event, End) and event.exit_code in KILLED_CODES and self._oom_kills() > before:
                event = End(exit_code=event.exit_code, exited=event.exited, status=event.status,
                            error=f"out of memory: the sandbox's memory limit is {self._memory_mb} MiB, and the kernel "
                                  "killed this process for exceeding it (ask for more memory, or use less)")
            yield event

    async def start(self, config: ProcessConfig, *, pty: PtySize | None = None, tag: str | None = None,
                    stdin: bool = False) -> AsyncIterator[ProcessEvent]:
        before = self._oom_kills()
        return self._explained(await self._inner.start(config, pty=pty, tag=tag, stdin=stdin), before)

    def connect(self, *, pid: int | None = None, tag: str | None = None) -> AsyncIterator[ProcessEvent]:
        return self._explained(self._inner.connect(pid=pid, tag=tag), self._oom_kills())

    async def list(self) -> list[ProcessInfo]:
        return await self._inner.list()

    async def send_input(self, pid: int, data: bytes, *, pty: bool = False) -> None:
        await self._inner.send_input(pid, data, pty=pty)

    async def close_stdin(self, pid: int) -> None:
        await self._inner.close_stdin(pid)

    async def signal(self, pid: int, signal: Signal) -> None:
        await self._inner.signal(pid, signal)

    async def resize(self, pid: int, size: PtySize) -> None:
        await self._inner.resize(pid, size)


def _listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except BlockingIOError:  # the backlog is full: it listens
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return True


class LocalSandbox:
    def __init__(self, host: Host, state: SandboxState, template: Template, *, boot_id: Callable[[], str],
                 on_killed: Callable[[LocalSandbox], None], process: subprocess.Popen[bytes] | None = None) -> None:
        self._host = host
        self._state = state
        self._template = template
        self._boot_id = boot_id
        self._on_killed = on_killed
        self._process = process
        self._lock = asyncio.Lock()
        self._killed = False
        self._cpu_sample: tuple[float, int] | None = None
        self.paths: SandboxPaths = host.paths(state.spec.sandbox_id)
        self._file = StateFile(self.paths.state, state)
        self._attach_client()

    def _attach_client(self) -> None:
        socket_path = self.paths.socket
        if not socket_path.exists() and self.paths.legacy_socket.exists():  # booted by an older runner
            socket_path = self.paths.legacy_socket
        self._client = AgentClient(str(socket_path), peer_uid=self._state.host_uid)
        self._processes = OomAwareProcesses(self._client.processes,
                                            lambda: self._host.cgroups.oom_kills(self.sandbox_id),
                                            self._state.spec.limits.memory_mb)

    # -- protocol properties ------------------------------------------------------------------

    @property
    def sandbox_id(self) -> str:
        return self._state.spec.sandbox_id

    @property
    def processes(self) -> OomAwareProcesses:
        return self._processes

    @property
    def files(self) -> AgentFiles:
        return self._client.files

    @property
    def state(self) -> SandboxState:
        return self._state

    @property
    def host_uid(self) -> int:
        return self._state.host_uid

    async def info(self) -> SandboxInfo:
        self._check_alive()
        s = self._state
        return SandboxInfo(sandbox_id=s.spec.sandbox_id, template=s.spec.template, state=s.phase,
                           started_at=s.started_at, limits=s.spec.limits, allow_internet=s.spec.allow_internet,
                           memory_kept=s.memory_kept)

    async def metrics(self) -> Metrics:
        self._check_alive()
        if self._state.phase == "paused" and not self._state.memory_kept:
            used, total = await asyncio.to_thread(self._disk_usage_offline)
            return Metrics(timestamp=time.time(), cpu_count=self._state.spec.limits.cpu_count, cpu_used_pct=0.0,
                           mem_used=0, mem_total=self._state.spec.limits.memory_mb * 1024 * 1024, mem_cache=0,
                           disk_used=used, disk_total=total)
        usage = self._host.cgroups.usage(self.sandbox_id)
        used, total = disk.usage(self.paths.disk)
        now = time.monotonic()
        previous = self._cpu_sample or (self._state_start_monotonic(now), 0)
        self._cpu_sample = (now, usage.cpu_ns)
        elapsed_ns = max((now - previous[0]) * 1e9, 1.0)
        cpus = self._state.spec.limits.cpu_count
        pct = min(100.0, 100.0 * (usage.cpu_ns - previous[1]) / elapsed_ns / cpus)
        return Metrics(timestamp=time.time(), cpu_count=cpus, cpu_used_pct=round(max(pct, 0.0), 2),
                       mem_used=usage.memory_bytes - usage.cache_bytes,
                       mem_total=usage.memory_limit or self._state.spec.limits.memory_mb * 1024 * 1024,
                       mem_cache=usage.cache_bytes, disk_used=used, disk_total=total)

    def _state_start_monotonic(self, now: float) -> float:
        return now - max(time.time() - self._state.started_at, 0.001)

    def _disk_usage_offline(self) -> tuple[int, int]:
        return os.stat(self.paths.image).st_blocks * 512, self._state.spec.limits.disk_mb * 1024 * 1024

    # -- lifecycle ---------------------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> None:
        """Until the agent listens (the runner bound its socket: connects are refused until then);
        BootError with the log if it died."""
        deadline = time.monotonic() + timeout
        while not _listening(str(self.paths.socket)):
            if self._process is not None and self._process.poll() is not None:
                raise SandboxStateError(f"sandbox {self.sandbox_id} exited while starting: "
                                        f"{self._host.log_tail(self.paths)}")
            if time.monotonic() > deadline:
                raise SandboxStateError(f"sandbox {self.sandbox_id}'s agent did not start within {timeout:g} s: "
                                        f"{self._host.log_tail(self.paths)}")
            await asyncio.sleep(READY_POLL_S)

    async def pause(self) -> None:
        async with self._lock:
            self._check_alive()
            if self._state.phase != "running":
                raise SandboxStateError(f"sandbox {self.sandbox_id} is {self._state.phase}, not running: "
                                        "only a running sandbox can be paused")
            await asyncio.to_thread(self._pause)

    def _pause(self) -> None:
        self._host.cgroups.freeze(self.sandbox_id)
        disk.syncfs(self.paths.disk)  # its files must survive a reboot that would lose the memory
        self._save(self._state.evolve(phase="paused"), durable=True)

    async def resume(self) -> None:
        async with self._lock:
            self._check_alive()
            if self._state.phase == "running":
                return
            if self._state.memory_kept and self._state.boot_id == self._boot_id() \
                    and self._host.cgroups.pids(self.sandbox_id):
                await asyncio.to_thread(self._thaw)
                return
            await asyncio.to_thread(self._boot_from_files)
            self._host.reap_when_done(self.sandbox_id, asyncio.get_running_loop())
            await self.wait_ready(timeout=30)

    def _thaw(self) -> None:
        self._host.cgroups.thaw(self.sandbox_id)
        self._save(self._state.evolve(phase="running"))

    def _boot_from_files(self) -> None:
        """The memory is gone (host reboot, or the sandbox's processes died): start again on its disk."""
        self._host.stop(self.sandbox_id, self._process, self._state.bwrap_pid)
        if self._host.retire_legacy_runtime(self.paths):  # booted where its uid can no longer reach
            self.paths = self._host.paths(self.sandbox_id)
            self._attach_client()
        spec = self._state.spec
        self._host.prepare_disk(self.paths, spec, self._template, self._state.host_uid)
        booted = self._host.boot(spec, self._template, self._state.host_uid)
        self._process = booted.process
        self._save(self._state.evolve(phase="running", memory_kept=False, boot_id=self._boot_id(),
                                      bwrap_pid=booted.process.pid, slirp_pid=booted.slirp_pid,
                                      started_at=time.time()), durable=True)

    def mark_memory_lost(self) -> None:
        """Adoption found the sandbox without its processes: it is paused, to resume from its files."""
        self._save(self._state.evolve(phase="paused", memory_kept=False), durable=True)

    async def kill(self) -> None:
        async with self._lock:
            if self._killed:
                return
            await self._client.close()
            await asyncio.to_thread(self._host.destroy, self.sandbox_id, self._process, self._state.bwrap_pid)
            self._killed = True
            self._on_killed(self)

    async def detach(self) -> None:
        """Let go without killing (the provider is closing)."""
        await self._client.close()

    def _save(self, state: SandboxState, *, durable: bool = False) -> None:
        self._file.write(state, durable=durable)
        self._state = state

    def _check_alive(self) -> None:
        if self._killed:
            raise SandboxNotFound(f"sandbox {self.sandbox_id} was killed")
