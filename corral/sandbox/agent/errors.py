"""Errors the agent answers with; `kind` names an exception of `corral.sandbox.protocol`."""

from __future__ import annotations

import errno

from . import wire

_KINDS = {
    errno.ENOENT: "FileNotFound",
    errno.EEXIST: "FileExists",
    errno.ENOTEMPTY: "FileExists",
    errno.EACCES: "PermissionDenied",
    errno.EPERM: "PermissionDenied",
    errno.EROFS: "PermissionDenied",
    errno.ENOSPC: "DiskFull",
    errno.EDQUOT: "DiskFull",
    errno.ENOTDIR: "InvalidPath",
    errno.EISDIR: "InvalidPath",
    errno.ENAMETOOLONG: "InvalidPath",
    errno.ELOOP: "InvalidPath",
    errno.EINVAL: "InvalidPath",
    errno.EXDEV: "InvalidPath",
}


class AgentError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def bad_request(message: str) -> AgentError:
    return AgentError(wire.BAD_REQUEST, message)


def from_os_error(exc: OSError, what: str) -> AgentError:
    """`what` says what was attempted: "cannot read /home/user/x"."""
    kind = _KINDS.get(exc.errno or 0, wire.GENERIC)
    reason = exc.strerror or str(exc)
    if kind == "DiskFull":
        reason = "the sandbox's disk is full; free space or raise its disk limit"
    return AgentError(kind, f"{what}: {reason}")
