"""`ctx.sandboxes`: the capability through which actions create, drive and kill sandboxes.

The engine only names it; the node provides it (corral/node.py, over corral/fleet), so neither the
engine nor Corral's app imports the fleet (docs/adr/0012-sandboxes-capability.md). An engine used
alone has none, and every call says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..errors import ConvexError


@dataclass(frozen=True)
class NewSandbox:
    template: str = "base"
    timeout: float = 300.0  # seconds until the sandbox ends (its end_at)
    idle_timeout: float | None = None  # seconds without activity before on_idle acts; None: the node's policy
    on_idle: Literal["pause", "kill"] = "pause"
    metadata: dict[str, str] = field(default_factory=dict)
    envs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    type: Literal["file", "dir"]


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class Sandboxes(Protocol):
    """Every call names the owner the sandbox belongs to; another owner's sandbox does not exist.

    Failures are ConvexError({"code", "message"}): SandboxNotFound, TemplateNotFound, InvalidSpec,
    CapacityError, SandboxUnavailable, FileNotFound, InvalidPath, SandboxError."""

    async def create(self, owner: str, request: NewSandbox) -> dict[str, Any]:
        """Boot and record a sandbox; its document (as `corral/sandboxes:get` shows it)."""

    async def get(self, owner: str, sandbox_id: str) -> dict[str, Any] | None: ...
    async def kill(self, owner: str, sandbox_id: str) -> None:
        """Kill it; a sandbox already killed is left as it is."""

    async def stat(self, owner: str, sandbox_id: str, path: str) -> FileEntry: ...
    def read_file(self, owner: str, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        """The file's bytes, in chunks, as they are read."""

    async def write_file(self, owner: str, sandbox_id: str, path: str, data: bytes) -> None: ...
    async def run(self, owner: str, sandbox_id: str, command: str, timeout: float = 60.0) -> CommandResult:
        """`/bin/sh -c command` as the sandbox's user; its exit code and output."""


NO_SANDBOXES = ("this engine has no sandboxes: ctx.sandboxes is provided by a Corral node "
                "(corral serve or corral up), not by an engine used alone")


class NoSandboxes:
    """What `ctx.sandboxes` is without a provider: every call refuses, saying why."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ConvexError({"code": "SandboxesUnavailable", "message": NO_SANDBOXES})
