"""`ctx.sandboxes` over the fleet: what the node gives actions (docs/adr/0012-sandboxes-capability.md).

Provider and fleet errors become ConvexError({"code", "message"}) named after the error, so the
app handles them without importing the fleet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ..engine.errors import ConvexError
from ..engine.runtime import CommandResult, FileEntry, NewSandbox
from ..runner.link import ProviderUnavailable, SandboxUnavailable
from ..sandbox.protocol import Data, End, ProcessConfig, Sandbox, SandboxError, SandboxNotFound
from .node_fleet import Fleet
from .sandbox_fleet import CreateRequest, SandboxRecord

PRIVATE_FIELDS = ("access_token",)


def _as_convex(exc: Exception) -> ConvexError:
    return ConvexError({"code": type(exc).__name__, "message": str(exc) or type(exc).__name__})


class FleetSandboxes:
    """Implements the engine's `Sandboxes` protocol with the node's fleet."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def create(self, owner: str, request: NewSandbox) -> dict[str, Any]:
        try:
            record: SandboxRecord = await self.fleet.create(owner, CreateRequest(
                template=request.template, timeout=request.timeout, metadata=dict(request.metadata),
                envs=dict(request.envs), idle_timeout=request.idle_timeout, on_idle=request.on_idle))
        except (SandboxError, SandboxUnavailable, ProviderUnavailable) as exc:
            raise _as_convex(exc) from None
        doc = await self.get(owner, record.sandbox_id)
        if doc is None:  # killed as it was recorded: its run had ended meanwhile
            raise ConvexError({"code": "SandboxNotFound", "message": f"sandbox {record.sandbox_id} ended as it started"})
        return doc

    async def _doc(self, owner: str, sandbox_id: str) -> dict[str, Any] | None:
        doc = await self.fleet._query("corral/sandboxes:lookup", {"sandbox_id": sandbox_id})
        if doc is None or doc["owner"] != owner:
            return None
        return dict(doc)

    async def get(self, owner: str, sandbox_id: str) -> dict[str, Any] | None:
        doc = await self._doc(owner, sandbox_id)
        return None if doc is None else {k: v for k, v in doc.items() if k not in PRIVATE_FIELDS}

    async def kill(self, owner: str, sandbox_id: str) -> None:
        try:
            await self.fleet.kill(owner, sandbox_id)
        except SandboxNotFound:
            return  # already killed (or never recorded): nothing left to end
        except (SandboxError, SandboxUnavailable) as exc:
            raise _as_convex(exc) from None

    async def _sandbox(self, owner: str, sandbox_id: str) -> Sandbox:
        doc = await self._doc(owner, sandbox_id)
        if doc is None or doc["state"] == "killed":
            raise ConvexError({"code": "SandboxNotFound", "message": f"sandbox {sandbox_id} was not found"})
        try:
            return await self.fleet.data_plane(sandbox_id, doc["access_token"])
        except (SandboxError, SandboxUnavailable) as exc:
            raise _as_convex(exc) from None

    async def stat(self, owner: str, sandbox_id: str, path: str) -> FileEntry:
        sandbox = await self._sandbox(owner, sandbox_id)
        try:
            info = await sandbox.files.stat(path)
        except SandboxError as exc:
            raise _as_convex(exc) from None
        return FileEntry(path=info.path, size=int(info.size), type="dir" if info.type == "dir" else "file")

    async def read_file(self, owner: str, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        sandbox = await self._sandbox(owner, sandbox_id)
        stream = sandbox.files.read(path)
        try:
            async for chunk in stream:
                yield chunk
        except SandboxError as exc:
            raise _as_convex(exc) from None

    async def write_file(self, owner: str, sandbox_id: str, path: str, data: bytes) -> None:
        sandbox = await self._sandbox(owner, sandbox_id)

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        try:
            await sandbox.files.write(path, chunks())
        except SandboxError as exc:
            raise _as_convex(exc) from None

    async def run(self, owner: str, sandbox_id: str, command: str, timeout: float = 60.0) -> CommandResult:
        sandbox = await self._sandbox(owner, sandbox_id)

        async def go() -> CommandResult:
            events = await sandbox.processes.start(ProcessConfig(cmd="/bin/sh", args=["-c", command]))
            out, err, code = b"", b"", -1
            async for event in events:
                if isinstance(event, Data):
                    if event.stream == "stdout":
                        out += event.data
                    else:
                        err += event.data
                elif isinstance(event, End):
                    code = event.exit_code
            return CommandResult(exit_code=code, stdout=out, stderr=err)

        try:
            return await asyncio.wait_for(go(), timeout)
        except SandboxError as exc:
            raise _as_convex(exc) from None
        except TimeoutError:
            raise ConvexError({"code": "CommandTimeout", "message": f"the command ran for over {timeout:g} s"}) from None

