"""One client connection: frames in, frames out, the streams it has open."""

from __future__ import annotations

import _socket as socket

from . import wire
from .loop import READ, WRITE, Loop, log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    Dispatch = Callable[["Conn", dict[str, Any], bytes], None]

    class Stream(Protocol):
        def cancel(self) -> None:
            """Stop producing frames; called when the client cancels or goes away."""


HIGH_WATER = 1024 * 1024  # queued output above this: producers for this connection pause
RECV_SIZE = 256 * 1024


class Conn:
    def __init__(self, loop: Loop, sock: socket.socket, dispatch: Dispatch,
                 dirty: set[Conn]) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.streams: dict[int, Stream] = {}
        self.closed = False
        self._dispatch = dispatch
        self._dirty = dirty
        loop.watch(self.fd, READ, self._on_ready)

    @property
    def congested(self) -> bool:
        return len(self.outbuf) > HIGH_WATER

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        if self.closed:
            return
        self.outbuf += wire.encode(header, payload)
        self._dirty.add(self)

    def reply(self, request_id: Any, result: Any = None) -> None:
        self.send({"id": request_id, "ok": result})

    def fail(self, request_id: Any, kind: str, message: str) -> None:
        self.send({"id": request_id, "err": {"kind": kind, "message": message}})

    def end_stream(self, request_id: int, result: Any = None) -> None:
        """Send the last frame of an open stream and forget it."""
        if self.streams.pop(request_id, None) is not None:
            self.reply(request_id, result)

    def flush(self) -> None:
        while self.outbuf and not self.closed:
            try:
                sent = self.sock.send(self.outbuf)
            except BlockingIOError:
                break
            except OSError:
                self.close()
                return
            del self.outbuf[:sent]
        if not self.closed:
            self.loop.watch(self.fd, READ | WRITE if self.outbuf else READ, self._on_ready)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.outbuf.clear()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            try:
                stream.cancel()
            except Exception as exc:
                log(f"cancelling a stream failed: {exc!r}")
        self.loop.forget(self.fd)
        self.sock.close()

    def _on_ready(self, events: int) -> None:
        if events & WRITE:
            self.flush()
        if self.closed or not events & ~WRITE:
            return
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        self.inbuf += data
        while not self.closed:
            try:
                frame = wire.take_frame(self.inbuf)
            except wire.FrameTooLarge as exc:
                # The lengths cannot be trusted: the stream has no frame boundary left.
                self.fail(None, wire.BAD_REQUEST, f"{exc}; closing the connection")
                self.flush()
                self.close()
                return
            if frame is None:
                return
            head, payload = frame
            try:
                header = wire.parse_header(head)
            except ValueError as exc:
                self.fail(None, wire.BAD_REQUEST, str(exc))
                continue
            self._dispatch(self, header, payload)
