"""Directory watches through inotify (libc via ctypes, loaded on first use)."""

from __future__ import annotations

import contextlib
import os
import struct

from .errors import AgentError, from_os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x1000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ONLYDIR

# inotify's events as fsnotify (and so envd) names them.
_TYPES = ((IN_CREATE | IN_MOVED_TO, "create"), (IN_MODIFY, "write"), (IN_DELETE, "remove"),
          (IN_MOVED_FROM, "rename"), (IN_ATTRIB, "chmod"))
_EVENT = struct.Struct("iIII")
_libc: Any = None


def _inotify() -> Any:
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        import ctypes

        err = ctypes.get_errno()
        raise from_os_error(OSError(err, os.strerror(err)), what)
    return result


class Watcher:
    def __init__(self, root: str, recursive: bool) -> None:
        try:
            if not os.path.isdir(root):
                os.stat(root)  # FileNotFound when missing
                raise AgentError("InvalidPath", f"cannot watch {root}: it is not a directory")
        except OSError as exc:
            raise from_os_error(exc, f"cannot watch {root}") from None
        self.root = root
        self.recursive = recursive
        self.dirs: dict[int, str] = {}  # watch descriptor -> directory relative to root
        libc = _inotify()
        self.fd = _check(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), f"cannot watch {root}")
        try:
            self._add(root, "")
            if recursive:
                self._add_tree(root)
        except BaseException:
            self.close()
            raise

    def _add(self, path: str, relative: str) -> None:
        wd = _check(_inotify().inotify_add_watch(self.fd, os.fsencode(path), MASK), f"cannot watch {path}")
        self.dirs[wd] = relative

    def _add_tree(self, path: str) -> None:
        for dirpath, dirnames, _files in os.walk(path):
            base = os.path.relpath(dirpath, self.root)
            for name in dirnames:
                rel = name if base == "." else os.path.join(base, name)
                with contextlib.suppress(AgentError):  # gone, or not ours to read
                    self._add(os.path.join(dirpath, name), rel)

    def read(self) -> list[tuple[str, str]]:
        """Pending events as (name relative to the root, type)."""
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return []
        events: list[tuple[str, str]] = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            if mask & IN_IGNORED:
                self.dirs.pop(wd, None)
                continue
            parent = self.dirs.get(wd)
            if parent is None:
                continue
            name = os.fsdecode(raw.rstrip(b"\0"))
            rel = os.path.join(parent, name) if parent else name
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                try:
                    full = os.path.join(self.root, rel)
                    self._add(full, rel)
                    self._add_tree(full)
                except AgentError:
                    pass
            for bits, kind in _TYPES:
                if mask & bits:
                    events.append((rel, kind))
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
