"""The node↔runner data-plane wire: how provider calls, their results and errors travel as JSON.

HTTP/1.1 under `/runner/v1/`, every request carrying `Authorization: Bearer <runner secret>`
(the secret a runner chose when it registered; nodes read it from the engine):

    POST /runner/v1/call    {"op", "sandbox"?, "args"}  → 200 {"result": …}
    POST /runner/v1/stream  {"op", "sandbox", "args"}   → 200 NDJSON, one event per line
    POST /runner/v1/read?sandbox=&path=&user=           → 200 the file's bytes
    POST /runner/v1/write?sandbox=&path=&user=  (bytes) → 200 {"result": EntryInfo}
    GET  /runner/v1/health                              → 200 {"runner": name}

A failure answers 4xx/5xx {"error": {"type", "message"}} (in a stream: a last line of that shape),
`type` naming an exception of corral/sandbox/protocol.py. Values: a dataclass of the provider
protocol is an object with "$t" naming its class; bytes are {"$b": base64}.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from ..sandbox import protocol

PREFIX = "/runner/v1"

DATACLASSES: dict[str, type[Any]] = {cls.__name__: cls for cls in (
    protocol.Limits, protocol.SandboxSpec, protocol.SandboxInfo, protocol.Metrics, protocol.PtySize,
    protocol.ProcessConfig, protocol.ProcessInfo, protocol.Start, protocol.Data, protocol.End,
    protocol.EntryInfo, protocol.WatchEvent,
)}

STATUS = {"SandboxNotFound": 404, "ProcessNotFound": 404, "FileNotFound": 404, "TemplateNotFound": 404,
          "SandboxStateError": 409, "FileExists": 409, "PermissionDenied": 403, "CapacityError": 503,
          "DiskFull": 507, "Unauthorized": 401}

# Calls a node may make on a sandbox: "<part>.<method>" where part is sandbox, processes or files.
UNARY_OPS = frozenset({
    "sandbox.info", "sandbox.metrics", "sandbox.pause", "sandbox.resume", "sandbox.kill",
    "processes.list", "processes.send_input", "processes.close_stdin", "processes.signal", "processes.resize",
    "files.stat", "files.list", "files.make_dir", "files.rename", "files.remove",
})
STREAM_OPS = frozenset({"processes.start", "processes.connect", "files.watch"})


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"$t": type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = encode(getattr(value, f.name))
        return out
    if isinstance(value, (bytes, bytearray)):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "$b" in value and len(value) == 1:
            return base64.b64decode(value["$b"])
        name = value.get("$t")
        if isinstance(name, str):
            cls = DATACLASSES.get(name)
            if cls is None:
                raise ValueError(f"unknown wire type {name!r}")
            return cls(**{k: decode(v) for k, v in value.items() if k != "$t"})
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def error_body(exc: BaseException) -> dict[str, Any]:
    name = type(exc).__name__
    for cls in type(exc).__mro__:
        if cls.__name__ in protocol.ERRORS:
            name = cls.__name__
            break
    return {"error": {"type": name, "message": str(exc) or name}}


# What a malformed request raises while it is read (bad JSON, a missing field, a wrong argument).
MALFORMED = (ValueError, TypeError, LookupError, AttributeError)


def status_of(exc: BaseException) -> int:
    body = error_body(exc)["error"]
    if body["type"] in STATUS:
        return STATUS[body["type"]]
    return 400 if isinstance(exc, (protocol.SandboxError, *MALFORMED)) else 500


def raise_error(body: Any, fallback: str) -> None:
    """Raise the provider exception a wire error names."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        raise protocol.SandboxError(fallback)
    raise protocol.error_named(error.get("type"), str(error.get("message") or fallback))
