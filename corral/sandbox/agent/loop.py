"""A small epoll loop: file descriptors with callbacks, hooks run after each batch of events."""

from __future__ import annotations

import contextlib
import select
import sys

TYPE_CHECKING = False  # typing costs milliseconds at start; annotations only
if TYPE_CHECKING:
    from collections.abc import Callable

    Handler = Callable[[int], None]

READ = select.EPOLLIN
WRITE = select.EPOLLOUT


def log(message: str) -> None:
    sys.stderr.write(f"corral-agent: {message}\n")
    sys.stderr.flush()


def log_exception(context: str) -> None:
    import traceback

    log(f"{context}: {traceback.format_exc()}")


def _never() -> bool:
    return False


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._masks: dict[int, int] = {}
        self.after: list[Callable[[], None]] = []  # run after every batch of events
        self.busy: Callable[[], bool] = _never  # True: poll without blocking
        self.running = True

    def watch(self, fd: int, mask: int, handler: Handler) -> None:
        """Call `handler(events)` when `fd` is ready for `mask`; mask 0 stops watching."""
        if mask == 0:
            self.forget(fd)
            return
        self._handlers[fd] = handler
        current = self._masks.get(fd)
        if current == mask:
            return
        if current is None:
            self._epoll.register(fd, mask)
        else:
            self._epoll.modify(fd, mask)
        self._masks[fd] = mask

    def forget(self, fd: int) -> None:
        self._handlers.pop(fd, None)
        if self._masks.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def run(self) -> None:
        while self.running:
            timeout = 0.0 if self.busy() else -1.0
            try:
                events = self._epoll.poll(timeout)
            except InterruptedError:
                continue
            for fd, mask in events:
                handler = self._handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler(mask)
                except Exception:
                    log_exception(f"handler for fd {fd} failed")
            for hook in self.after:
                try:
                    hook()
                except Exception:
                    log_exception("after-hook failed")
