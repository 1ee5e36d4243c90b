"""File operations, acting as the agent's user inside the sandbox. Paths are absolute or
relative to the home; entries are plain dicts shaped like `protocol.EntryInfo`."""

from __future__ import annotations

import os
import stat

from .errors import AgentError, from_os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_names: dict[tuple[str, int], str] = {}
METADATA_PREFIX = "user.e2b."  # E2B's file metadata: one extended attribute per key


def resolve(home: str, path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise AgentError("InvalidPath", "path must be a non-empty string")
    if "\0" in path:
        raise AgentError("InvalidPath", "path must not contain NUL bytes")
    return os.path.normpath(os.path.join(home, path))


def _name(kind: str, number: int) -> str:
    """The user (kind "u") or group ("g") name of an id, as the sandbox's /etc says; the number when it has none."""
    name = _names.get((kind, number))
    if name is None:
        try:
            if kind == "u":
                import pwd

                name = pwd.getpwuid(number).pw_name
            else:
                import grp

                name = grp.getgrgid(number).gr_name
        except (KeyError, ImportError):
            name = str(number)
        _names[(kind, number)] = name
    return name


def entry(path: str, st: os.stat_result | None = None) -> dict[str, Any]:
    if st is None:
        st = os.lstat(path)
    mode = st.st_mode
    target = None
    if stat.S_ISREG(mode):
        kind = "file"
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISLNK(mode):
        kind = "symlink"
        target = os.path.realpath(path)
    else:
        kind = "other"
    return {
        "name": os.path.basename(path) or path, "type": kind, "path": path, "size": st.st_size,
        "mode": stat.S_IMODE(mode), "permissions": stat.filemode(mode), "owner": _name("u", st.st_uid),
        "group": _name("g", st.st_gid), "modified_time": st.st_mtime, "symlink_target": target,
        "metadata": None if kind == "symlink" else read_metadata(path),
    }


def read_metadata(path: str) -> dict[str, str] | None:
    """The file's `user.e2b.*` attributes, prefix dropped; None when it has none (or the
    filesystem keeps no attributes)."""
    try:
        names = [n for n in os.listxattr(path) if n.startswith(METADATA_PREFIX)]
        found = {n[len(METADATA_PREFIX):]: os.getxattr(path, n).decode("utf-8", "replace") for n in names}
    except OSError:
        return None
    return found or None


def write_metadata(path: str, metadata: dict[str, str]) -> None:
    """Replace the file's `user.e2b.*` attributes with `metadata` (keys lowercased, as envd does)."""
    try:
        for name in os.listxattr(path):
            if name.startswith(METADATA_PREFIX):
                os.removexattr(path, name)
        for key, value in metadata.items():
            os.setxattr(path, METADATA_PREFIX + key.lower(), value.encode("utf-8"))
    except OSError as exc:
        raise from_os_error(exc, f"cannot set the metadata of {path}") from None


def stat_path(path: str) -> dict[str, Any]:
    try:
        return entry(path)
    except OSError as exc:
        raise from_os_error(exc, f"cannot stat {path}") from None


def list_dir(path: str, depth: int) -> list[dict[str, Any]]:
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise AgentError("InvalidPath", f"cannot list {path}: it is not a directory")
    except OSError as exc:
        raise from_os_error(exc, f"cannot list {path}") from None
    found: list[dict[str, Any]] = []
    _walk(path, max(depth, 1), found)
    return found


def _walk(path: str, depth: int, found: list[dict[str, Any]]) -> None:
    try:
        with os.scandir(path) as it:
            children = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        if found:  # a subdirectory we may not read: list what we can
            return
        raise from_os_error(exc, f"cannot list {path}") from None
    for child in children:
        try:
            info = entry(child.path, child.stat(follow_symlinks=False))
        except OSError:
            continue  # removed while listing
        found.append(info)
        if depth > 1 and info["type"] == "dir":
            _walk(child.path, depth - 1, found)


def make_dir(path: str) -> dict[str, Any]:
    try:
        os.makedirs(path)
        return entry(path)
    except OSError as exc:
        raise from_os_error(exc, f"cannot make directory {path}") from None


def rename(source: str, destination: str) -> dict[str, Any]:
    try:
        os.lstat(source)
        parent = os.path.dirname(destination)
        if parent:
            os.makedirs(parent, exist_ok=True)
        os.rename(source, destination)
        return entry(destination)
    except OSError as exc:
        raise from_os_error(exc, f"cannot rename {source} to {destination}") from None


def remove(path: str) -> None:
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            import shutil

            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise from_os_error(exc, f"cannot remove {path}") from None


def open_read(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise from_os_error(exc, f"cannot read {path}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise AgentError("InvalidPath", f"cannot read {path}: it is a directory")
    return fd


class Upload:
    """A file being written in place, as envd does (watchers see create and write on its name)."""

    def __init__(self, path: str, metadata: dict[str, str] | None = None) -> None:
        self.path = path
        self.metadata = metadata or {}
        try:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            if os.path.isdir(path):
                raise AgentError("InvalidPath", f"cannot write {path}: it is a directory")
            self.fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise from_os_error(exc, f"cannot write {path}") from None

    def write(self, data: bytes) -> None:
        if self.fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            self.cancel()
            raise from_os_error(exc, f"cannot write {self.path}") from None

    def finish(self) -> dict[str, Any]:
        self.cancel()
        if self.metadata or read_metadata(self.path):
            write_metadata(self.path, self.metadata)  # an overwrite keeps no stale metadata
        return stat_path(self.path)

    def cancel(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
