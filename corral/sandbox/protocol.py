"""The provider protocol: what every sandbox provider (local, host, later docker) implements.

Modelled on E2B's semantics. A provider knows nothing of timeouts, owners or the engine: the
runner drives lifecycles from the engine's state; the E2B layer maps its wire protocol onto
these calls. Errors are the exceptions at the bottom of this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

SandboxState = Literal["running", "paused", "killed"]
FileType = Literal["file", "dir", "symlink", "other"]
WatchEventType = Literal["create", "write", "remove", "rename", "chmod"]
Signal = Literal["SIGTERM", "SIGKILL", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"]

DEFAULT_USER = "user"
HOME = "/home/user"


@dataclass(frozen=True)
class Limits:
    cpu_count: int = 2
    memory_mb: int = 512
    disk_mb: int = 1024  # the writable home and /tmp together
    pids: int = 512


@dataclass(frozen=True)
class SandboxSpec:
    sandbox_id: str  # lowercase alphanumeric, chosen by the caller (the engine)
    template: str = "base"
    envs: dict[str, str] = field(default_factory=dict)  # every process in the sandbox sees these
    allow_internet: bool = False  # False: loopback only; True: user-mode networking, never the host's private ranges
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class SandboxInfo:
    sandbox_id: str
    template: str
    state: SandboxState
    started_at: float  # unix seconds
    limits: Limits
    allow_internet: bool
    memory_kept: bool = True  # False after a paused sandbox lost its memory (host reboot): it resumes from files alone


@dataclass(frozen=True)
class Metrics:
    timestamp: float
    cpu_count: int
    cpu_used_pct: float
    mem_used: int  # bytes
    mem_total: int
    mem_cache: int
    disk_used: int
    disk_total: int


@dataclass(frozen=True)
class PtySize:
    cols: int
    rows: int


@dataclass(frozen=True)
class ProcessConfig:
    cmd: str  # run as given: E2B's SDK sends cmd="/bin/bash", args=["-l", "-c", <command>]
    args: list[str] = field(default_factory=list)
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None  # default: the user's home
    user: str = DEFAULT_USER


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    config: ProcessConfig
    tag: str | None = None


# Events of a process stream: Start first, then Data, then End last.
@dataclass(frozen=True)
class Start:
    pid: int


@dataclass(frozen=True)
class Data:
    stream: Literal["stdout", "stderr", "pty"]
    data: bytes


@dataclass(frozen=True)
class End:
    exit_code: int  # -N when killed by signal N
    exited: bool
    status: str  # "exit status 1", "signal: killed", as envd words it
    error: str | None = None


ProcessEvent = Start | Data | End


@dataclass(frozen=True)
class EntryInfo:
    name: str
    type: FileType
    path: str
    size: int
    mode: int
    permissions: str  # "-rw-r--r--"
    owner: str
    group: str
    modified_time: float
    symlink_target: str | None = None
    metadata: dict[str, str] | None = None  # the file's `user.e2b.<key>` extended attributes (E2B's file metadata)


@dataclass(frozen=True)
class WatchEvent:
    name: str  # path relative to the watched directory
    type: WatchEventType


class Processes(Protocol):
    async def start(self, config: ProcessConfig, *, pty: PtySize | None = None, tag: str | None = None,
                    stdin: bool = False) -> AsyncIterator[ProcessEvent]:
        """Start a process; the stream yields Start first. Closing the stream does not kill it."""

    def connect(self, *, pid: int | None = None, tag: str | None = None) -> AsyncIterator[ProcessEvent]:
        """Follow a running process from now on (Start first); ProcessNotFound if it is not running."""

    async def list(self) -> list[ProcessInfo]: ...
    async def send_input(self, pid: int, data: bytes, *, pty: bool = False) -> None: ...
    async def close_stdin(self, pid: int) -> None: ...
    async def signal(self, pid: int, signal: Signal) -> None: ...
    async def resize(self, pid: int, size: PtySize) -> None: ...


class Files(Protocol):
    """Paths are absolute inside the sandbox, or relative to the user's home. Every call acts as `user`."""

    def read(self, path: str, *, user: str = DEFAULT_USER) -> AsyncIterator[bytes]: ...
    async def write(self, path: str, chunks: AsyncIterator[bytes], *, user: str = DEFAULT_USER,
                    metadata: dict[str, str] | None = None) -> EntryInfo:
        """Create or replace a file (parents made); the size limit of the sandbox's disk applies.
        `metadata` replaces the file's `user.e2b.*` extended attributes (none given: none kept)."""

    async def stat(self, path: str, *, user: str = DEFAULT_USER) -> EntryInfo: ...
    async def list(self, path: str, *, depth: int = 1, user: str = DEFAULT_USER) -> list[EntryInfo]: ...
    async def make_dir(self, path: str, *, user: str = DEFAULT_USER) -> EntryInfo:
        """FileExists if it already exists."""

    async def rename(self, source: str, destination: str, *, user: str = DEFAULT_USER) -> EntryInfo: ...
    async def remove(self, path: str, *, user: str = DEFAULT_USER) -> None: ...
    def watch(self, path: str, *, recursive: bool = False, user: str = DEFAULT_USER) -> AsyncIterator[WatchEvent]:
        """Events under `path`. The iterator may carry `ready`, an awaitable that completes once the
        watch is in place (FileNotFound / InvalidPath raised there); call it in a running loop."""


class Sandbox(Protocol):
    @property
    def sandbox_id(self) -> str: ...
    @property
    def processes(self) -> Processes: ...
    @property
    def files(self) -> Files: ...
    async def info(self) -> SandboxInfo: ...
    async def metrics(self) -> Metrics: ...
    async def pause(self) -> None:
        """Freeze every process, memory kept. SandboxStateError if not running."""

    async def resume(self) -> None:
        """Thaw; or, when memory was lost, boot again from the sandbox's files. No-op when running."""

    async def kill(self) -> None:
        """Stop everything and remove every process, mount, cgroup and directory. Idempotent."""


class Provider(Protocol):
    name: str

    async def create(self, spec: SandboxSpec) -> Sandbox:
        """Boot a sandbox; TemplateNotFound, InvalidSpec, CapacityError."""

    def get(self, sandbox_id: str) -> Sandbox:
        """A sandbox this provider holds; SandboxNotFound otherwise."""

    async def adopt(self) -> list[Sandbox]:
        """After a restart of the process hosting the provider: take back every sandbox still on this host."""

    def template_names(self) -> list[str]:
        """The templates a create may name here (a runner reports them, for placement)."""

    async def close(self) -> None:
        """Let go of the sandboxes without killing them (they outlive their runner)."""


class SandboxError(Exception):
    """Base of provider errors; the message says what was wrong and what to do."""


class SandboxNotFound(SandboxError):
    pass


class SandboxStateError(SandboxError):
    """The call does not fit the sandbox's state (pausing a paused sandbox)."""


class TemplateNotFound(SandboxError):
    pass


class InvalidSpec(SandboxError):
    pass


class CapacityError(SandboxError):
    pass


class ProcessNotFound(SandboxError):
    pass


class FileNotFound(SandboxError):
    pass


class FileExists(SandboxError):
    pass


class PermissionDenied(SandboxError):
    pass


class InvalidPath(SandboxError):
    pass


class DiskFull(SandboxError):
    pass


ERRORS: dict[str, type[SandboxError]] = {cls.__name__: cls for cls in (
    SandboxError, SandboxNotFound, SandboxStateError, TemplateNotFound, InvalidSpec, CapacityError,
    ProcessNotFound, FileNotFound, FileExists, PermissionDenied, InvalidPath, DiskFull,
)}


def error_named(name: object, message: str) -> SandboxError:
    """The provider error a wire names (the agent's, the runner's); SandboxError for a name it does not know."""
    return ERRORS.get(str(name), SandboxError)(message)


async def close_stream(stream: AsyncIterator[object]) -> None:
    """End a stream a provider returned before it ran out, releasing what it holds (an agent
    channel, a watch). Errors while closing are dropped: the caller is already leaving."""
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()


async def after_first(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A read's chunks, its first one already taken (to raise its errors before a response starts);
    the stream is closed however the consumer stops."""
    try:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await close_stream(chunks)
