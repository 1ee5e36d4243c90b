"""envd's messages in proto3 JSON: camelCase fields, base64 bytes, int64 as strings, enum names.

Reading is lenient where proto3 JSON allows it (an enum by name or number, an int64 as a
string or a number, snake_case field names); writing is what envd writes.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from ..sandbox.protocol import (
    Data,
    End,
    EntryInfo,
    ProcessEvent,
    ProcessInfo,
    PtySize,
    Signal,
    Start,
    WatchEvent,
)
from .connect import invalid

FILE_TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY", "symlink": "FILE_TYPE_SYMLINK",
              "other": "FILE_TYPE_UNSPECIFIED"}
EVENT_TYPES = {"create": "EVENT_TYPE_CREATE", "write": "EVENT_TYPE_WRITE", "remove": "EVENT_TYPE_REMOVE",
               "rename": "EVENT_TYPE_RENAME", "chmod": "EVENT_TYPE_CHMOD"}
SIGNALS: dict[Any, Signal] = {"SIGNAL_SIGTERM": "SIGTERM", "SIGNAL_SIGKILL": "SIGKILL", 15: "SIGTERM", 9: "SIGKILL"}
MAX_PTY_SIDE = 10_000


def field(message: dict[str, Any], camel: str, snake: str | None = None) -> Any:
    """A field by its JSON name, or by its proto name (proto3 JSON parsers accept both)."""
    if camel in message:
        return message[camel]
    return message.get(snake) if snake else None


def string(message: dict[str, Any], camel: str, snake: str | None = None, *, required: bool = False,
           what: str = "") -> str:
    value = field(message, camel, snake)
    if value is None:
        if required:
            raise invalid(f"{what or camel} is required")
        return ""
    if not isinstance(value, str):
        raise invalid(f"{what or camel} must be a string, not {type(value).__name__}")
    return value


def path_field(message: dict[str, Any], camel: str = "path", what: str = "path") -> str:
    value = string(message, camel, what=what)
    return check_path(value, what)


def check_path(value: str, what: str = "path") -> str:
    if not value:
        raise invalid(f"{what} is empty; give an absolute path or one relative to the user's home")
    if "\x00" in value:
        raise invalid(f"{what} contains a NUL byte")
    if len(value.encode()) > 4096:
        raise invalid(f"{what} is longer than 4096 bytes")
    return value


def boolean(message: dict[str, Any], camel: str, snake: str | None = None, default: bool = False) -> bool:
    value = field(message, camel, snake)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{camel} must be true or false, not {value!r}")
    return value


def uint(message: dict[str, Any], camel: str, what: str = "", default: int = 0, maximum: int = 2**32 - 1) -> int:
    value = message.get(camel)
    if value is None:
        return default
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > maximum:
        raise invalid(f"{what or camel} must be an integer from 0 to {maximum}, not {value!r}")
    return value


def string_map(message: dict[str, Any], camel: str, what: str = "") -> dict[str, str]:
    value = message.get(camel)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise invalid(f"{what or camel} must be an object of strings")
    return dict(value)


def b64decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise invalid(f"{what} must be base64 text")
    try:
        padded = value + "=" * (-len(value) % 4)
        if "-" in value or "_" in value:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{what} is not valid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def timestamp(seconds: float) -> str:
    """google.protobuf.Timestamp in JSON: RFC 3339 in UTC."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


# -- processes -----------------------------------------------------------------------------------

def selector(message: dict[str, Any]) -> tuple[int | None, str | None]:
    """A ProcessSelector: (pid, None) or (None, tag)."""
    if not isinstance(message, dict):
        raise invalid("process must be an object with 'pid' or 'tag'")
    if message.get("pid") is not None:
        return uint(message, "pid", "process.pid"), None
    if message.get("tag") is not None:
        tag = message["tag"]
        if not isinstance(tag, str) or not tag:
            raise invalid("process.tag must be a non-empty string")
        return None, tag
    raise invalid("process must name the process by 'pid' or 'tag'")


def pty_size(message: Any) -> PtySize | None:
    if message is None:
        return None
    if not isinstance(message, dict):
        raise invalid("pty must be an object with 'size'")
    size = message.get("size") or {}
    if not isinstance(size, dict):
        raise invalid("pty.size must be an object with 'cols' and 'rows'")
    cols = uint(size, "cols", "pty.size.cols", default=80, maximum=MAX_PTY_SIDE)
    rows = uint(size, "rows", "pty.size.rows", default=24, maximum=MAX_PTY_SIDE)
    return PtySize(cols=cols or 80, rows=rows or 24)


def signal(value: Any) -> Signal:
    found = SIGNALS.get(value)
    if found is None:
        raise invalid(f"signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL, not {value!r}")
    return found


def process_event(event: ProcessEvent) -> dict[str, Any]:
    """A provider event as envd's ProcessEvent."""
    if isinstance(event, Start):
        return {"start": {"pid": event.pid}}
    if isinstance(event, Data):
        return {"data": {event.stream: b64(event.data)}}
    if isinstance(event, End):
        end: dict[str, Any] = {"exitCode": event.exit_code, "exited": event.exited, "status": event.status}
        if event.error is not None:
            end["error"] = event.error
        return {"end": end}
    raise TypeError(f"not a process event: {event!r}")


def process_info(info: ProcessInfo) -> dict[str, Any]:
    config: dict[str, Any] = {"cmd": info.config.cmd, "args": list(info.config.args), "envs": dict(info.config.envs)}
    if info.config.cwd is not None:
        config["cwd"] = info.config.cwd
    out: dict[str, Any] = {"config": config, "pid": info.pid}
    if info.tag is not None:
        out["tag"] = info.tag
    return out


# -- files ----------------------------------------------------------------------------------------

def entry_info(entry: EntryInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": entry.name,
        "type": FILE_TYPES.get(entry.type, "FILE_TYPE_UNSPECIFIED"),
        "path": entry.path,
        "size": str(entry.size),
        "mode": entry.mode,
        "permissions": entry.permissions,
        "owner": entry.owner,
        "group": entry.group,
        "modifiedTime": timestamp(entry.modified_time),
    }
    if entry.type == "symlink":
        out["isSymlink"] = True
    if entry.symlink_target is not None:
        out["symlinkTarget"] = entry.symlink_target
    if entry.metadata:
        out["metadata"] = dict(entry.metadata)
    return out


def watch_event(event: WatchEvent, entry: EntryInfo | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": event.name, "type": EVENT_TYPES[event.type]}
    if entry is not None:
        out["entry"] = entry_info(entry)
    return out
