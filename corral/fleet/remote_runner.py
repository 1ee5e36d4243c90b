"""The node's link to a runner in another process: the provider protocol over the data-plane wire.

`RemoteRunner` implements `RunnerLink`, and `RemoteSandbox` the provider's `Sandbox` (with its
`Processes` and `Files`), so the E2B layer drives a sandbox on another host exactly as one in
process. A runner that cannot be reached raises SandboxUnavailable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from ..runner import wire
from ..runner.link import Desired, SandboxUnavailable
from ..sandbox.protocol import (
    DEFAULT_USER,
    EntryInfo,
    Metrics,
    ProcessConfig,
    ProcessEvent,
    ProcessInfo,
    PtySize,
    SandboxInfo,
    SandboxSpec,
    Signal,
    WatchEvent,
)

CALL_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=5.0, read=None)  # streams stay open as long as their process


class RemoteRunner:
    def __init__(self, name: str, url: str, secret: str) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.client = httpx.AsyncClient(base_url=self.url + wire.PREFIX, headers={"Authorization": f"Bearer {secret}"},
                                        timeout=CALL_TIMEOUT,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))

    def _unavailable(self, exc: Exception) -> SandboxUnavailable:
        return SandboxUnavailable(f"runner {self.name!r} at {self.url} is not answering ({type(exc).__name__}: {exc}); "
                                  "its sandboxes come back when it does")

    async def call(self, op: str, sandbox_id: str | None = None, **args: Any) -> Any:
        body = orjson.dumps({"op": op, "sandbox": sandbox_id, "args": wire.encode(args)})
        try:
            response = await self.client.post("/call", content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from None
        return self._result(response)

    def _result(self, response: httpx.Response) -> Any:
        try:
            payload = response.json()
        except ValueError:
            raise SandboxUnavailable(f"runner {self.name!r} answered HTTP {response.status_code} without a wire body") from None
        if response.status_code == 401:
            raise SandboxUnavailable(f"runner {self.name!r} refused this node's secret (it restarted?); retry shortly")
        if response.status_code != 200:
            wire.raise_error(payload, f"runner {self.name!r} answered HTTP {response.status_code}")
        return wire.decode(payload.get("result"))

    async def stream(self, op: str, sandbox_id: str, **args: Any) -> AsyncIterator[Any]:
        """Open a stream; errors before its first event are raised here. Returns the event iterator."""
        body = orjson.dumps({"op": op, "sandbox": sandbox_id, "args": wire.encode(args)})
        request = self.client.build_request("POST", "/stream", content=body, timeout=STREAM_TIMEOUT,
                                            headers={"Content-Type": "application/json"})
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from None
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            self._result(response)
        return self._events(response)

    async def _events(self, response: httpx.Response) -> AsyncIterator[Any]:
        try:
            async for line in response.aiter_lines():
                if not line:
                    continue
                item = orjson.loads(line)
                if isinstance(item, dict) and "error" in item and "$t" not in item:
                    wire.raise_error(item, "the runner's stream failed")
                yield wire.decode(item)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from None
        finally:
            await response.aclose()

    # -- RunnerLink
    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        info: SandboxInfo = await self.call("create", spec=spec)
        return info

    async def converge(self, sandbox_id: str, state: Desired, generation: int) -> SandboxInfo | None:
        info: SandboxInfo | None = await self.call("converge", sandbox_id, state=state, generation=generation)
        return info

    def sandbox(self, sandbox_id: str) -> RemoteSandbox:
        return RemoteSandbox(self, sandbox_id)

    async def metrics(self, sandbox_id: str, start: float | None, end: float | None) -> list[Metrics]:
        samples: list[Metrics] = await self.call("metrics", sandbox_id, start=start, end=end)
        return samples

    async def close(self) -> None:
        await self.client.aclose()


class RemoteSandbox:
    def __init__(self, runner: RemoteRunner, sandbox_id: str) -> None:
        self._runner = runner
        self._id = sandbox_id
        self._processes = RemoteProcesses(runner, sandbox_id)
        self._files = RemoteFiles(runner, sandbox_id)

    @property
    def sandbox_id(self) -> str:
        return self._id

    @property
    def processes(self) -> RemoteProcesses:
        return self._processes

    @property
    def files(self) -> RemoteFiles:
        return self._files

    async def info(self) -> SandboxInfo:
        info: SandboxInfo = await self._runner.call("sandbox.info", self._id)
        return info

    async def metrics(self) -> Metrics:
        metrics: Metrics = await self._runner.call("sandbox.metrics", self._id)
        return metrics

    async def pause(self) -> None:
        await self._runner.call("sandbox.pause", self._id)

    async def resume(self) -> None:
        await self._runner.call("sandbox.resume", self._id)

    async def kill(self) -> None:
        await self._runner.call("sandbox.kill", self._id)


class RemoteProcesses:
    def __init__(self, runner: RemoteRunner, sandbox_id: str) -> None:
        self._runner = runner
        self._id = sandbox_id

    async def start(self, config: ProcessConfig, *, pty: PtySize | None = None, tag: str | None = None,
                    stdin: bool = False) -> AsyncIterator[ProcessEvent]:
        return await self._runner.stream("processes.start", self._id, config=config, pty=pty, tag=tag, stdin=stdin)

    def connect(self, *, pid: int | None = None, tag: str | None = None) -> AsyncIterator[ProcessEvent]:
        async def events() -> AsyncIterator[ProcessEvent]:
            async for event in await self._runner.stream("processes.connect", self._id, pid=pid, tag=tag):
                yield event

        return events()

    async def list(self) -> list[ProcessInfo]:
        found: list[ProcessInfo] = await self._runner.call("processes.list", self._id)
        return found

    async def send_input(self, pid: int, data: bytes, *, pty: bool = False) -> None:
        await self._runner.call("processes.send_input", self._id, pid=pid, data=data, pty=pty)

    async def close_stdin(self, pid: int) -> None:
        await self._runner.call("processes.close_stdin", self._id, pid=pid)

    async def signal(self, pid: int, signal: Signal) -> None:
        await self._runner.call("processes.signal", self._id, pid=pid, signal=signal)

    async def resize(self, pid: int, size: PtySize) -> None:
        await self._runner.call("processes.resize", self._id, pid=pid, size=size)


class RemoteFiles:
    def __init__(self, runner: RemoteRunner, sandbox_id: str) -> None:
        self._runner = runner
        self._id = sandbox_id

    def read(self, path: str, *, user: str = DEFAULT_USER) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            runner = self._runner
            request = runner.client.build_request("POST", "/read", params={"sandbox": self._id, "path": path, "user": user},
                                                  timeout=STREAM_TIMEOUT)
            try:
                response = await runner.client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise runner._unavailable(exc) from None
            try:
                if response.status_code != 200:
                    await response.aread()
                    runner._result(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
            except httpx.HTTPError as exc:
                raise runner._unavailable(exc) from None
            finally:
                await response.aclose()

        return chunks()

    async def write(self, path: str, chunks: AsyncIterator[bytes], *, user: str = DEFAULT_USER,
                    metadata: dict[str, str] | None = None) -> EntryInfo:
        runner = self._runner
        params = {"sandbox": self._id, "path": path, "user": user}
        if metadata:
            params["metadata"] = orjson.dumps(metadata).decode()
        try:
            response = await runner.client.post("/write", params=params,
                                                content=chunks, timeout=STREAM_TIMEOUT)
        except httpx.HTTPError as exc:
            raise runner._unavailable(exc) from None
        info: EntryInfo = runner._result(response)
        return info

    async def stat(self, path: str, *, user: str = DEFAULT_USER) -> EntryInfo:
        info: EntryInfo = await self._runner.call("files.stat", self._id, path=path, user=user)
        return info

    async def list(self, path: str, *, depth: int = 1, user: str = DEFAULT_USER) -> list[EntryInfo]:
        entries: list[EntryInfo] = await self._runner.call("files.list", self._id, path=path, depth=depth, user=user)
        return entries

    async def make_dir(self, path: str, *, user: str = DEFAULT_USER) -> EntryInfo:
        info: EntryInfo = await self._runner.call("files.make_dir", self._id, path=path, user=user)
        return info

    async def rename(self, source: str, destination: str, *, user: str = DEFAULT_USER) -> EntryInfo:
        info: EntryInfo = await self._runner.call("files.rename", self._id, source=source, destination=destination, user=user)
        return info

    async def remove(self, path: str, *, user: str = DEFAULT_USER) -> None:
        await self._runner.call("files.remove", self._id, path=path, user=user)

    def watch(self, path: str, *, recursive: bool = False, user: str = DEFAULT_USER) -> AsyncIterator[WatchEvent]:
        async def events() -> AsyncIterator[WatchEvent]:
            async for event in await self._runner.stream("files.watch", self._id, path=path, recursive=recursive, user=user):
                yield event

        return events()
