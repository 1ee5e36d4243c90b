"""envd's `process.Process` service, mapped onto a sandbox's `Processes`.

Commands and PTYs run as the call's user (Basic auth); the SDK itself sends
`/bin/bash -l -c <cmd>` for commands and `/bin/bash -i -l` for PTYs, run here as given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..sandbox.protocol import ProcessConfig, ProcessNotFound, Sandbox, close_stream
from . import envd_json as pj
from .connect import invalid

MAX_ARGS = 10_000


class ProcessService:
    def __init__(self, sandbox: Sandbox, user: str) -> None:
        self.processes = sandbox.processes
        self.user = user

    async def _pid(self, message: dict[str, Any]) -> int:
        pid, tag = pj.selector(message.get("process"))  # type: ignore[arg-type]
        if pid is not None:
            return pid
        for info in await self.processes.list():
            if info.tag == tag:
                return info.pid
        raise ProcessNotFound(f"no running process has the tag {tag!r}")

    # -- unary
    async def List(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 - envd's method names
        return {"processes": [pj.process_info(p) for p in await self.processes.list()]}

    async def Update(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        pid = await self._pid(message)
        size = pj.pty_size(message.get("pty"))
        if size is not None:
            await self.processes.resize(pid, size)
        return {}

    async def SendInput(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        pid = await self._pid(message)
        await self._send(pid, message.get("input"))
        return {}

    async def _send(self, pid: int, data: Any) -> None:
        if not isinstance(data, dict):
            raise invalid("input must be an object with 'stdin' or 'pty' (base64)")
        if data.get("pty") is not None:
            await self.processes.send_input(pid, pj.b64decode(data["pty"], "input.pty"), pty=True)
        elif data.get("stdin") is not None:
            await self.processes.send_input(pid, pj.b64decode(data["stdin"], "input.stdin"))
        # proto3 JSON leaves out empty bytes: nothing to send

    async def SendSignal(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        pid = await self._pid(message)
        await self.processes.signal(pid, pj.signal(message.get("signal")))
        return {}

    async def CloseStdin(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        await self.processes.close_stdin(await self._pid(message))
        return {}

    # -- client stream
    async def StreamInput(self, messages: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:  # noqa: N802
        pid: int | None = None
        async for message in messages:
            if message.get("start") is not None:
                start = message["start"]
                if not isinstance(start, dict):
                    raise invalid("start must be an object with 'process'")
                pid = await self._pid(start)
            elif message.get("data") is not None:
                if pid is None:
                    raise invalid("the input stream must begin with a start message naming the process")
                data = message["data"]
                if not isinstance(data, dict):
                    raise invalid("data must be an object with 'input'")
                await self._send(pid, data.get("input"))
            # keepalive messages carry nothing
        return {}

    # -- server streams
    async def Start(self, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:  # noqa: N802
        process = message.get("process")
        if not isinstance(process, dict):
            raise invalid("process is required: {cmd, args, envs, cwd}")
        cmd = pj.string(process, "cmd", required=True, what="process.cmd")
        if not cmd or "\x00" in cmd:
            raise invalid("process.cmd must be a non-empty command without NUL bytes")
        args = process.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) and "\x00" not in a for a in args) or len(args) > MAX_ARGS:
            raise invalid("process.args must be a list of strings without NUL bytes")
        cwd = process.get("cwd")
        if cwd is not None:
            if not isinstance(cwd, str):
                raise invalid("process.cwd must be a string")
            cwd = pj.check_path(cwd, "process.cwd") if cwd else None
        tag = message.get("tag")
        if tag is not None and not isinstance(tag, str):
            raise invalid("tag must be a string")
        config = ProcessConfig(cmd=cmd, args=list(args), envs=pj.string_map(process, "envs", "process.envs"),
                               cwd=cwd, user=self.user)
        stdin = message.get("stdin")
        if stdin is not None and not isinstance(stdin, bool):
            raise invalid("stdin must be true or false")
        events = await self.processes.start(config, pty=pj.pty_size(message.get("pty")), tag=tag or None,
                                            stdin=True if stdin is None else stdin)
        return _events(events)

    async def Connect(self, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:  # noqa: N802
        pid, tag = pj.selector(message.get("process"))  # type: ignore[arg-type]
        return _events(self.processes.connect(pid=pid, tag=tag))


async def _events(events: AsyncIterator[Any]) -> AsyncIterator[dict[str, Any]]:
    try:
        async for event in events:
            yield {"event": pj.process_event(event)}
    finally:
        await close_stream(events)
