"""envd's `filesystem.Filesystem` service, mapped onto a sandbox's `Files`.

`WatchDir` streams events; `CreateWatcher`/`GetWatcherEvents`/`RemoveWatcher` (what the sync
SDK uses) keep a watch running on the node and hand out what it saw since the last poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from ..sandbox.protocol import (
    EntryInfo,
    Files,
    InvalidPath,
    Sandbox,
    SandboxError,
    WatchEvent,
    close_stream,
)
from . import envd_json as pj
from .connect import RpcError

log = structlog.get_logger("corral.e2b.files")

MAX_DEPTH = 64


class FilesystemService:
    def __init__(self, sandbox: Sandbox, user: str, watchers: Watchers) -> None:
        self.sandbox = sandbox
        self.files = sandbox.files
        self.user = user
        self.watchers = watchers

    async def Stat(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 - envd's method names
        return {"entry": pj.entry_info(await self.files.stat(pj.path_field(message), user=self.user))}

    async def MakeDir(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {"entry": pj.entry_info(await self.files.make_dir(pj.path_field(message), user=self.user))}

    async def Move(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        source = pj.path_field(message, "source", "source")
        destination = pj.path_field(message, "destination", "destination")
        return {"entry": pj.entry_info(await self.files.rename(source, destination, user=self.user))}

    async def ListDir(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        path = pj.path_field(message)
        depth = pj.uint(message, "depth", maximum=MAX_DEPTH) or 1
        return {"entries": [pj.entry_info(e) for e in await self.files.list(path, depth=depth, user=self.user)]}

    async def Remove(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        await self.files.remove(pj.path_field(message), user=self.user)
        return {}

    async def WatchDir(self, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:  # noqa: N802 - envd's method names
        feed = await WatchFeed.open(self.files, *_watch_request(message), self.user)
        return feed.stream()

    async def CreateWatcher(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        feed = await WatchFeed.open(self.files, *_watch_request(message), self.user)
        return {"watcherId": self.watchers.add(self.sandbox.sandbox_id, feed)}

    async def GetWatcherEvents(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        feed = self.watchers.get(self.sandbox.sandbox_id, _watcher_id(message))
        return {"events": feed.drain()}

    async def RemoveWatcher(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        await self.watchers.remove(self.sandbox.sandbox_id, _watcher_id(message))
        return {}


def _watch_request(message: dict[str, Any]) -> tuple[str, bool, bool]:
    return (pj.path_field(message), pj.boolean(message, "recursive"),
            pj.boolean(message, "includeEntry", "include_entry"))


def _watcher_id(message: dict[str, Any]) -> str:
    return pj.string(message, "watcherId", "watcher_id", required=True, what="watcherId")


class WatchFeed:
    """A provider watch pumped into a queue by a task, so a call can return once the watch is in place.

    "In place" is the provider's `ready` awaitable on the iterator when it has one; otherwise a
    stat of the directory issued after the watch (a provider answers one sandbox's requests in
    order), which also turns a missing directory into a clear not_found."""

    def __init__(self, events: AsyncIterator[WatchEvent], files: Files, base: str, include_entry: bool, user: str,
                 max_buffer: int) -> None:
        self.events = events
        self.files = files
        self.base = base
        self.include_entry = include_entry
        self.user = user
        self.max_buffer = max_buffer
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.dropped = 0
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._pump())

    @classmethod
    async def open(cls, files: Files, path: str, recursive: bool, include_entry: bool, user: str,
                   max_buffer: int = 10_000) -> WatchFeed:
        feed = cls(files.watch(path, recursive=recursive, user=user), files, path, include_entry, user, max_buffer)
        try:
            ready = getattr(feed.events, "ready", None)
            if ready is not None:
                await ready
            else:
                await asyncio.sleep(0)  # the pump sends its watch request first
                entry = await files.stat(path, user=user)
                if entry.type != "dir":
                    raise InvalidPath(f"cannot watch {path}: it is not a directory")
            if feed.error is not None:
                raise feed.error
        except BaseException:
            await feed.close()
            raise
        return feed

    async def _pump(self) -> None:
        try:
            async for event in self.events:
                if not isinstance(event, WatchEvent):
                    continue
                if self.queue.qsize() >= self.max_buffer:
                    self.dropped += 1
                    continue
                await self.queue.put(await _described(event, self.files, self.base, self.include_entry, self.user))
            await self.queue.put(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported to whoever reads the feed
            self.error = exc
            await self.queue.put(exc)
        finally:
            await close_stream(self.events)

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {"start": {}}
            while True:
                item = await self.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield {"filesystem": item}
        finally:
            await self.close()

    def drain(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is _END:
                self.queue.put_nowait(_END)
                break
            if isinstance(item, BaseException):
                if out:
                    self.queue.put_nowait(item)  # reported by the next poll
                    break
                raise _as_rpc_error(item, self.base)
            out.append(item)
        return out

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


_END = object()


def _as_rpc_error(exc: BaseException, base: str) -> BaseException:
    if isinstance(exc, RpcError | SandboxError):
        return exc
    log.warning("e2b.watch_failed", error=str(exc))
    return RpcError("internal", f"the watch of {base} failed: {exc}")


async def _described(event: WatchEvent, files: Files, base: str, include_entry: bool, user: str) -> dict[str, Any]:
    entry: EntryInfo | None = None
    if include_entry and event.type not in ("remove", "rename"):
        with contextlib.suppress(SandboxError):
            entry = await files.stat(f"{base.rstrip('/')}/{event.name}", user=user)
    return pj.watch_event(event, entry)


@dataclass
class Watcher:
    sandbox_id: str
    feed: WatchFeed
    last_poll: float


class Watchers:
    """Watches made with CreateWatcher, by id; dropped when removed or not polled for `idle` seconds."""

    def __init__(self, clock: Callable[[], float], idle: float, max_watchers: int = 1000,
                 max_per_sandbox: int = 64) -> None:
        self.clock = clock
        self.idle = idle
        self.max_watchers = max_watchers
        self.max_per_sandbox = max_per_sandbox
        self.watchers: dict[str, Watcher] = {}

    def add(self, sandbox_id: str, feed: WatchFeed) -> str:
        self._expire()
        if len(self.watchers) >= self.max_watchers:
            feed.task.cancel()
            raise RpcError("resource_exhausted", f"this node already keeps {self.max_watchers} watchers; remove some first")
        if sum(1 for w in self.watchers.values() if w.sandbox_id == sandbox_id) >= self.max_per_sandbox:
            feed.task.cancel()
            raise RpcError("resource_exhausted", f"this sandbox already has {self.max_per_sandbox} watchers; "
                                                 "remove some (RemoveWatcher) first")
        watcher_id = secrets.token_hex(12)
        self.watchers[watcher_id] = Watcher(sandbox_id, feed, self.clock())
        return watcher_id

    def get(self, sandbox_id: str, watcher_id: str) -> WatchFeed:
        self._expire()
        watcher = self.watchers.get(watcher_id)
        if watcher is None or watcher.sandbox_id != sandbox_id:
            raise RpcError("not_found", f"no watcher {watcher_id!r} in this sandbox (removed, or not polled for {self.idle:g} s)")
        watcher.last_poll = self.clock()
        return watcher.feed

    async def remove(self, sandbox_id: str, watcher_id: str) -> None:
        feed = self.get(sandbox_id, watcher_id)
        del self.watchers[watcher_id]
        await feed.close()

    def _expire(self) -> None:
        now = self.clock()
        for watcher_id, watcher in list(self.watchers.items()):
            if now - watcher.last_poll > self.idle:
                del self.watchers[watcher_id]
                watcher.feed.task.cancel()

    async def close(self) -> None:
        watchers, self.watchers = list(self.watchers.values()), {}
        for watcher in watchers:
            await watcher.feed.close()
