"""Streams the agent produces for a connection besides process output: file reads and watches."""

from __future__ import annotations

import os

from . import wire
from .loop import READ, Loop, log
from .watch import Watcher

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .conn import Conn

READS_PER_TURN = 8  # chunks a read stream may queue per loop turn, so others get their turn


class ReadStream:
    """A file sent in chunks as fast as its connection takes them."""

    def __init__(self, conn: Conn, request_id: int, fd: int, active: set[ReadStream]) -> None:
        self.conn = conn
        self.request_id = request_id
        self.fd: int | None = fd
        self.size = 0
        self._active = active
        active.add(self)
        conn.streams[request_id] = self

    def pump(self) -> None:
        for _ in range(READS_PER_TURN):
            if self.fd is None or self.conn.congested or self.conn.closed:
                return
            try:
                data = os.read(self.fd, wire.CHUNK)
            except OSError as exc:
                self.cancel()
                self.conn.streams.pop(self.request_id, None)
                self.conn.fail(self.request_id, wire.GENERIC, f"reading the file failed: {exc.strerror or exc}")
                return
            if not data:
                self.cancel()
                self.conn.end_stream(self.request_id, {"size": self.size})
                return
            self.size += len(data)
            self.conn.send({"id": self.request_id, "ev": "data"}, data)

    def cancel(self) -> None:
        self._active.discard(self)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class WatchStream:
    def __init__(self, conn: Conn, request_id: int, watcher: Watcher, loop: Loop) -> None:
        self.conn = conn
        self.request_id = request_id
        self.watcher = watcher
        self.loop = loop
        conn.streams[request_id] = self
        loop.watch(watcher.fd, READ, self._on_ready)
        conn.send({"id": request_id, "ev": "start"})

    def _on_ready(self, _events: int) -> None:
        try:
            events = self.watcher.read()
        except OSError as exc:
            log(f"watch of {self.watcher.root} failed: {exc}")
            self.cancel()
            self.conn.end_stream(self.request_id)
            return
        for name, kind in events:
            self.conn.send({"id": self.request_id, "ev": "fs", "name": name, "type": kind})

    def cancel(self) -> None:
        if self.watcher.fd >= 0:
            self.loop.forget(self.watcher.fd)
            self.watcher.close()
