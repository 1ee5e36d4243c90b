"""asyncio side of the agent's wire: one framed connection, and a multiplexer for unary calls.

Streams (process output, file reads and writes, watches) each get a connection of their own, so
that a slow reader of one stream holds back only that stream (the agent pauses its producer)
and closing the stream is closing its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
from typing import Any

from corral.sandbox import protocol
from corral.sandbox.agent import wire

AGENT_ERRORS = frozenset({"FileNotFound", "FileExists", "PermissionDenied", "InvalidPath", "DiskFull",
                          "ProcessNotFound"})


class AgentGone(protocol.SandboxError):
    """The agent's socket is missing, refuses connections or closed mid-request."""


def error_from(err: Any) -> protocol.SandboxError:
    """The exception for an ``err`` frame of the agent."""
    if not isinstance(err, dict):
        return protocol.SandboxError(f"the sandbox agent answered a malformed error: {err!r}")
    kind, message = err.get("kind"), str(err.get("message"))
    if kind == wire.BAD_REQUEST:
        return protocol.SandboxError(f"the sandbox agent rejected the request: {message}")
    # An agent runs inside the sandbox: it may name only the errors of processes and files.
    return protocol.error_named(kind if kind in AGENT_ERRORS else None, message)


Frame = tuple[dict[str, Any], bytes]


class Channel:
    """One connection to the agent."""

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self.closed = False

    @classmethod
    async def open(cls, path: str, peer_uid: int | None = None) -> Channel:
        """Connect to the agent at `path`; with `peer_uid`, refuse a listener running as any other uid.

        The local provider binds the socket itself where only root can write, so the sandbox cannot
        swap it for a link; the check is the second line: the listener's credentials, taken by the
        kernel at listen() and handed over at connect, are what cannot be forged.
        """
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=2 * wire.MAX_PAYLOAD)
        except OSError as exc:
            raise AgentGone(f"the sandbox agent is not reachable at {path}: {exc.strerror or exc}") from None
        if peer_uid is not None:
            sock = writer.get_extra_info("socket")
            try:
                _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                      struct.calcsize("3i")))
            except OSError as exc:
                writer.close()
                raise AgentGone(f"the sandbox agent at {path} has no credentials: {exc}") from None
            if uid != peer_uid:
                writer.close()
                raise AgentGone(f"the socket at {path} is not the sandbox's agent: its listener runs as uid {uid}, "
                                f"not {peer_uid}")
        return cls(path, reader, writer)

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        if self.closed:
            raise AgentGone(f"the connection to the sandbox agent at {self.path} is closed")
        async with self._lock:
            try:
                self._writer.write(wire.encode(header, payload))
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                self.close()
                raise AgentGone(f"lost the connection to the sandbox agent at {self.path}: {exc}") from None

    async def recv(self) -> Frame:
        try:
            prefix = await self._reader.readexactly(wire.PREFIX.size)
            head_len, payload_len = wire.PREFIX.unpack(prefix)
            if head_len > wire.MAX_HEADER or payload_len > wire.MAX_PAYLOAD:
                raise AgentGone(f"the sandbox agent at {self.path} sent an oversized frame")
            head = await self._reader.readexactly(head_len)
            payload = await self._reader.readexactly(payload_len) if payload_len else b""
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self.close()
            raise AgentGone(f"lost the connection to the sandbox agent at {self.path}: {exc!r}") from None
        try:
            return wire.parse_header(head), payload
        except ValueError as exc:
            self.close()
            raise AgentGone(f"the sandbox agent at {self.path} sent a bad frame: {exc}") from None

    async def recv_for(self, request_id: int) -> Frame:
        """The next frame of `request_id`; raises the agent's error when it is one."""
        while True:
            header, payload = await self.recv()
            if header.get("id") != request_id:
                continue
            if "err" in header:
                raise error_from(header["err"])
            return header, payload

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()


class Mux:
    """Unary calls over one shared connection, opened on first use and again after it broke."""

    def __init__(self, path: str, peer_uid: int | None = None) -> None:
        self.path = path
        self.peer_uid = peer_uid
        self._channel: Channel | None = None
        self._pending: dict[int, asyncio.Future[Frame]] = {}  # of the current channel
        self._reader_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._opening: asyncio.Lock | None = None

    async def call(self, op: str, payload: bytes = b"", **fields: Any) -> Any:
        channel, pending = await self._ensure()
        request_id = next(self._ids)
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        pending[request_id] = future
        try:
            await channel.send({"id": request_id, "op": op, **fields}, payload)
            header, _ = await future
        finally:
            pending.pop(request_id, None)
        if "err" in header:
            raise error_from(header["err"])
        return header.get("ok")

    async def _ensure(self) -> tuple[Channel, dict[int, asyncio.Future[Frame]]]:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._channel is None or self._channel.closed:
                self._channel = await Channel.open(self.path, self.peer_uid)
                self._pending = {}
                self._reader_task = asyncio.create_task(self._read(self._channel, self._pending))
            return self._channel, self._pending

    async def _read(self, channel: Channel, pending: dict[int, asyncio.Future[Frame]]) -> None:
        error: protocol.SandboxError | None = None
        try:
            while True:
                header, payload = await channel.recv()
                request_id = header.get("id")
                future = pending.get(request_id) if isinstance(request_id, int) else None
                if future is not None and not future.done():
                    future.set_result((header, payload))
        except protocol.SandboxError as exc:
            error = exc
        finally:
            channel.close()
            for future in list(pending.values()):
                if not future.done():
                    future.set_exception(error or AgentGone(f"lost the connection to the sandbox agent at {self.path}"))

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._channel = None
        self._reader_task = None
