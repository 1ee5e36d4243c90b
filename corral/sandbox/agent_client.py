"""`AgentClient`: the runner's side of a sandbox's agent, implementing `Processes` and `Files`.

Also how a provider launches the agent: `agent_argv` and `agent_env`, with the agent's code at
`AGENT_DIR` (bind-mount it read-only; `compile_agent` first, so that it starts from bytecode).
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from corral.sandbox.agent_channel import AgentGone, Channel, Mux
from corral.sandbox.protocol import (
    DEFAULT_USER,
    HOME,
    Data,
    End,
    EntryInfo,
    ProcessConfig,
    ProcessEvent,
    ProcessInfo,
    PtySize,
    Signal,
    Start,
    WatchEvent,
)

AGENT_DIR = str(Path(__file__).resolve().parent / "agent")
ENVS_VARIABLE = "CORRAL_AGENT_ENVS"
INPUT_PIECE = 1024 * 1024  # input and uploads are sent in frames of at most this size
STREAM_ID = 1  # a stream has its connection to itself
READY_FINE_POLL = 0.25  # seconds of 1 ms polls for an agent's first answer


def agent_argv(python: str, agent_dir: str, socket_path: str | None = None, *, listen_fd: int | None = None,
               extra: Sequence[str] = (), home: str = HOME, user: str = DEFAULT_USER) -> list[str]:
    """The command that starts the agent, listening on `socket_path` (paths as the agent sees them), or on
    the socket it inherits as `listen_fd`, bound already by its launcher."""
    where = ["--socket", socket_path] if listen_fd is None else ["--listen-fd", str(listen_fd)]
    if (socket_path is None) == (listen_fd is None):
        raise ValueError("give the agent either a socket path or a listening descriptor")
    return [python, "-I", "-S", "-B", agent_dir, *where, *extra, "--home", home, "--user", user]


def agent_env(envs: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment: only the sandbox-wide envs, which every process sees.

    The agent gives its processes HOME, USER, PATH… itself and passes nothing else of its own
    environment on, so the host's variables never leak into a sandbox.
    """
    return {ENVS_VARIABLE: json.dumps(dict(envs))}


def compile_agent(agent_dir: str = AGENT_DIR) -> None:
    """Write the agent's bytecode next to it (a read-only mount cannot cache it later)."""
    compileall.compile_dir(agent_dir, quiet=1)


def _entry(value: dict[str, Any]) -> EntryInfo:
    return EntryInfo(
        name=value["name"], type=value["type"], path=value["path"], size=value["size"],
        mode=value["mode"], permissions=value["permissions"], owner=value["owner"],
        group=value["group"], modified_time=value["modified_time"],
        symlink_target=value.get("symlink_target"), metadata=value.get("metadata") or None,
    )


def _event(header: dict[str, Any], payload: bytes) -> ProcessEvent | None:
    ev = header.get("ev")
    if ev == "data":
        return Data(stream=header["stream"], data=payload)
    if ev == "end":
        return End(exit_code=header["exit_code"], exited=header["exited"], status=header["status"],
                   error=header.get("error"))
    if ev == "start":
        return Start(pid=header["pid"])
    return None


async def _open_stream(path: str, op: str, fields: dict[str, Any],
                       peer_uid: int | None = None) -> tuple[Channel, dict[str, Any]]:
    """A connection carrying one stream, and the stream's first frame (errors raised)."""
    channel = await Channel.open(path, peer_uid)
    try:
        await channel.send({"id": STREAM_ID, "op": op, **fields})
        header, _ = await channel.recv_for(STREAM_ID)
    except BaseException:
        channel.close()
        raise
    return channel, header


async def _process_events(channel: Channel, first: dict[str, Any]) -> AsyncIterator[ProcessEvent]:
    try:
        yield Start(pid=first["pid"])
        while True:
            header, payload = await channel.recv_for(STREAM_ID)
            if "ok" in header:
                return
            event = _event(header, payload)
            if event is not None:
                yield event
                if isinstance(event, End):
                    return
    finally:
        channel.close()


class AgentProcesses:
    def __init__(self, path: str, mux: Mux) -> None:
        self._path = path
        self._mux = mux
        self._peer_uid = mux.peer_uid

    async def start(self, config: ProcessConfig, *, pty: PtySize | None = None, tag: str | None = None,
                    stdin: bool = False) -> AsyncIterator[ProcessEvent]:
        fields = {"cmd": config.cmd, "args": list(config.args), "envs": dict(config.envs),
                  "cwd": config.cwd, "tag": tag, "stdin": stdin,
                  "pty": {"cols": pty.cols, "rows": pty.rows} if pty else None}
        channel, first = await _open_stream(self._path, "start", fields, self._peer_uid)
        return _process_events(channel, first)

    async def connect(self, *, pid: int | None = None, tag: str | None = None) -> AsyncIterator[ProcessEvent]:
        channel, first = await _open_stream(self._path, "connect", {"pid": pid, "tag": tag}, self._peer_uid)
        async for event in _process_events(channel, first):
            yield event

    async def list(self) -> list[ProcessInfo]:
        found = await self._mux.call("list")
        return [ProcessInfo(pid=p["pid"], tag=p["tag"],
                            config=ProcessConfig(cmd=p["cmd"], args=p["args"], envs=p["envs"], cwd=p["cwd"]))
                for p in found]

    async def send_input(self, pid: int, data: bytes, *, pty: bool = False) -> None:
        for start in range(0, max(len(data), 1), INPUT_PIECE):
            await self._mux.call("input", data[start : start + INPUT_PIECE], pid=pid, pty=pty)

    async def close_stdin(self, pid: int) -> None:
        await self._mux.call("close_stdin", pid=pid)

    async def signal(self, pid: int, signal: Signal) -> None:
        await self._mux.call("signal", pid=pid, signal=signal)

    async def resize(self, pid: int, size: PtySize) -> None:
        await self._mux.call("resize", pid=pid, cols=size.cols, rows=size.rows)


class AgentFiles:
    """The agent runs as the sandbox's one user: `user` is accepted and has no effect."""

    def __init__(self, path: str, mux: Mux) -> None:
        self._path = path
        self._mux = mux
        self._peer_uid = mux.peer_uid

    async def read(self, path: str, *, user: str = DEFAULT_USER) -> AsyncIterator[bytes]:
        channel = await Channel.open(self._path, self._peer_uid)
        try:
            await channel.send({"id": STREAM_ID, "op": "read", "path": path})
            while True:
                header, payload = await channel.recv_for(STREAM_ID)
                if "ok" in header:
                    return
                if payload:
                    yield payload
        finally:
            channel.close()

    async def write(self, path: str, chunks: AsyncIterator[bytes], *, user: str = DEFAULT_USER,
                    metadata: dict[str, str] | None = None) -> EntryInfo:
        channel = await Channel.open(self._path, self._peer_uid)
        try:
            request: dict[str, Any] = {"id": STREAM_ID, "op": "write", "path": path}
            if metadata:
                request["metadata"] = dict(metadata)
            await channel.send(request)
            answer = asyncio.create_task(channel.recv_for(STREAM_ID))
            try:
                async for chunk in chunks:
                    for start in range(0, len(chunk), INPUT_PIECE):
                        if answer.done():  # the agent failed early: stop sending
                            break
                        await channel.send({"id": STREAM_ID, "op": "data"}, chunk[start : start + INPUT_PIECE])
                    if answer.done():
                        break
                if not answer.done():
                    await channel.send({"id": STREAM_ID, "op": "eof"})
                header, _ = await answer
            finally:
                if not answer.done():
                    answer.cancel()
            return _entry(header["ok"])
        finally:
            channel.close()

    async def stat(self, path: str, *, user: str = DEFAULT_USER) -> EntryInfo:
        return _entry(await self._mux.call("stat", path=path))

    async def list(self, path: str, *, depth: int = 1, user: str = DEFAULT_USER) -> list[EntryInfo]:
        return [_entry(e) for e in await self._mux.call("ls", path=path, depth=depth)]

    async def make_dir(self, path: str, *, user: str = DEFAULT_USER) -> EntryInfo:
        return _entry(await self._mux.call("mkdir", path=path))

    async def rename(self, source: str, destination: str, *, user: str = DEFAULT_USER) -> EntryInfo:
        return _entry(await self._mux.call("rename", src=source, dst=destination))

    async def remove(self, path: str, *, user: str = DEFAULT_USER) -> None:
        await self._mux.call("remove", path=path)

    def watch(self, path: str, *, recursive: bool = False, user: str = DEFAULT_USER) -> WatchStream:
        """Starts placing the watch at once; await `.ready` to know it is in place."""
        return WatchStream(self._path, path, recursive, self._peer_uid)


class WatchStream:
    """Events of one directory watch. `ready` completes once the watch is in place (raising
    FileNotFound or InvalidPath), so that nothing done afterwards is missed."""

    def __init__(self, socket_path: str, path: str, recursive: bool, peer_uid: int | None = None) -> None:
        self.ready: asyncio.Task[Channel] = asyncio.ensure_future(
            _open_stream_channel(socket_path, "watch", {"path": path, "recursive": recursive}, peer_uid))
        self._closed = False

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchEvent:
        channel = await self.ready
        while not self._closed:
            try:
                header, _ = await channel.recv_for(STREAM_ID)
            except BaseException:
                await self.aclose()
                raise
            if "ok" in header:
                break
            if header.get("ev") == "fs":
                return WatchEvent(name=header["name"], type=header["type"])
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._closed = True
        if not self.ready.done():
            self.ready.cancel()
            with contextlib.suppress(BaseException):
                await self.ready
        elif not self.ready.cancelled() and self.ready.exception() is None:
            self.ready.result().close()


async def _open_stream_channel(socket_path: str, op: str, fields: dict[str, Any],
                               peer_uid: int | None = None) -> Channel:
    channel, _first = await _open_stream(socket_path, op, fields, peer_uid)
    return channel


class AgentClient:
    """Talks to one sandbox's agent over its Unix socket; reconnects when the socket reappears.

    `peer_uid`: the uid the agent runs as (as the host sees it); a socket whose listener runs as
    any other is refused (a second line behind the socket's root-only directory)."""

    def __init__(self, socket_path: str, peer_uid: int | None = None) -> None:
        self.socket_path = socket_path
        self._mux = Mux(socket_path, peer_uid)
        self.processes = AgentProcesses(socket_path, self._mux)
        self.files = AgentFiles(socket_path, self._mux)

    async def ping(self) -> dict[str, Any]:
        """{pid, boot_time, version, processes} of the agent."""
        info: dict[str, Any] = await self._mux.call("ping")
        return info

    async def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait until the agent answers a ping; SandboxError saying why when it did not in time."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            try:
                return await asyncio.wait_for(self.ping(), max(deadline - time.monotonic(), 0.001))
            except (TimeoutError, AgentGone) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise AgentGone(f"the sandbox agent at {self.socket_path} did not answer within {timeout:g} s: "
                                f"{last or 'no answer'}") from None
            # An agent starts in tens of milliseconds: poll finely while one is expected, then back off.
            await asyncio.sleep(0.001 if time.monotonic() - started < READY_FINE_POLL else 0.05)

    async def close(self) -> None:
        await self._mux.close()

