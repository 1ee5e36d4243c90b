"""E2B's control-API JSON shapes: what the SDK sends (parsed and checked) and what it reads.

Field names are E2B's (camelCase, with its one snake_case `allow_internet_access`), times are
ISO 8601 in UTC, errors are `{"code": <HTTP status>, "message": …}`.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..fleet import CreateRequest, ListQuery, RecordState, SandboxRecord
from ..sandbox.protocol import Metrics

# The envd version Corral's data plane speaks: the SDK switches features on it (stdin 0.3.0,
# default user 0.4.0, close_stdin 0.5.2, octet-stream uploads 0.5.7, entries in watch events 0.6.3).
ENVD_VERSION = "0.6.3"
MAX_LIST_LIMIT = 100
MAX_METADATA_PAIRS = 64
MAX_METADATA_TEXT = 1024
MAX_ENV_VARS = 1024


class ApiError(Exception):
    """An answer other than success: HTTP status and E2B's `Error` body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"code": self.status, "message": self.message}


def bad(message: str) -> ApiError:
    return ApiError(400, message)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str, what: str) -> float:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad(f"{what} must be an ISO 8601 time such as 2025-01-31T12:00:00Z, not {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- requests ---------------------------------------------------------------------------------------

def as_object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad(f"the body of {what} must be a JSON object")
    return body


def timeout_value(value: Any, what: str, maximum: float, default: float) -> float:
    """A timeout in whole seconds: 0 up to `maximum`."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise bad(f"{what} must be a whole number of seconds, not {value!r}")
    if value < 0:
        raise bad(f"{what} must not be negative (got {plain(value)}); give the number of seconds the sandbox may live")
    if value > maximum:
        raise bad(f"{what} {plain(value)} s is over the maximum of {plain(maximum)} s (sandbox_max_timeout)")
    return float(value)


def plain(number: float) -> str:
    """A number as a person writes it: 10000000, not 1e+07; 1.5 stays 1.5."""
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e18:
        return str(int(number))
    return str(number) if isinstance(number, int) else f"{number:f}".rstrip("0").rstrip(".")


def string_dict(value: Any, what: str, max_pairs: int) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{what} must be an object of strings")
    if len(value) > max_pairs:
        raise bad(f"{what} has {len(value)} entries; at most {max_pairs} are allowed")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise bad(f"{what}[{key!r}] must be a string, not {type(item).__name__}")
        if not key or len(key) > MAX_METADATA_TEXT or len(item) > 64 * MAX_METADATA_TEXT or "\x00" in key + item:
            raise bad(f"{what}[{key[:40]!r}] is empty, too long or holds a NUL byte")
        out[key] = item
    return out


def optional_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{key} must be true or false, not {value!r}")
    return value


def new_sandbox(body: Any, *, v2: bool, max_timeout: float) -> CreateRequest:
    """NewSandbox (POST /sandboxes) or NewSandboxV2 (POST /v2/sandboxes)."""
    body = as_object(body, "a sandbox creation")
    template = body.get("templateID")
    if not isinstance(template, str) or not template.strip():
        raise bad("templateID is required: the name of the template to start the sandbox from, e.g. \"base\"")
    timeout = timeout_value(body.get("timeout"), "timeout", max_timeout, 300.0 if v2 else 15.0)
    auto_resume = body.get("autoResume")
    resume = False
    if auto_resume is not None:
        if not isinstance(auto_resume, dict) or not isinstance(auto_resume.get("enabled", False), bool):
            raise bad("autoResume must be an object {\"enabled\": true|false}")
        resume = bool(auto_resume.get("enabled", False))
    if body.get("mcp"):
        raise bad("mcp (E2B's MCP gateway) is not offered by Corral; start the MCP server with a command instead")
    if body.get("network"):
        raise bad("network rules are not offered by Corral; use allow_internet_access to turn the internet on or off")
    if body.get("volumeMounts"):
        raise bad("volumeMounts are not offered by Corral; copy files in with the files API")
    if body.get("autoPauseMemory") is False:
        raise bad("autoPauseMemory=false (pausing without memory) is not offered by Corral; every pause keeps memory")
    return CreateRequest(
        template=template.strip(),
        timeout=timeout,
        metadata=string_dict(body.get("metadata"), "metadata", MAX_METADATA_PAIRS),
        envs=string_dict(body.get("envVars"), "envVars", MAX_ENV_VARS),
        allow_internet=optional_bool(body, "allow_internet_access", True),
        on_timeout="pause" if optional_bool(body, "autoPause", False) else "kill",
        auto_resume=resume,
        secure=optional_bool(body, "secure", True),
    )


def timeout_body(body: Any, what: str, max_timeout: float, required: bool) -> float | None:
    body = as_object(body if body is not None else {}, what)
    if body.get("timeout") is None:
        if required:
            raise bad(f"timeout is required in the body of {what}: the number of seconds from now")
        return None
    return timeout_value(body.get("timeout"), "timeout", max_timeout, 0.0)


def metadata_query(raw: str | None) -> dict[str, str]:
    """`metadata=<urlencoded k=v&…>`; the SDK quotes each key and value before encoding the pairs."""
    if not raw:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise bad(f"metadata must be URL-encoded key=value pairs joined by '&', not {raw!r}") from None
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}


def list_query(params: Any, *, default_states: tuple[RecordState, ...]) -> ListQuery:
    states: tuple[RecordState, ...] = default_states
    raw_states = [s for value in params.getlist("state") for s in value.split(",") if s.strip()]
    if raw_states:
        picked: list[RecordState] = []
        for state in raw_states:
            state = state.strip()
            if state not in ("running", "paused"):
                raise bad(f"state must be running or paused (comma-separated), not {state!r}")
            if state not in picked:
                picked.append(state)  # type: ignore[arg-type]
        states = tuple(picked)
    order = params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad(f"order must be asc or desc, not {order!r}")
    limit = MAX_LIST_LIMIT
    if params.get("limit") is not None:
        raw = params["limit"]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
            raise bad(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}, not {raw!r}")
        limit = int(raw)
    started_after = parse_iso(params["startedAfter"], "startedAfter") if params.get("startedAfter") else None
    return ListQuery(metadata=metadata_query(params.get("metadata")), states=states,
                     order="asc" if order == "asc" else "desc", limit=limit,
                     next_token=params.get("nextToken") or None, started_after=started_after,
                     template=params.get("template") or None)


# -- answers -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shown:
    """What every shape shows of a record."""

    record: SandboxRecord

    def common(self) -> dict[str, Any]:
        r = self.record
        return {
            "templateID": r.template,
            "alias": r.template,
            "sandboxID": r.sandbox_id,
            "clientID": r.runner or "corral",
            "envdVersion": ENVD_VERSION,
        }


def visible_state(record: SandboxRecord) -> str:
    if record.state in ("running", "paused"):
        return record.state
    raise ApiError(404, f"sandbox {record.sandbox_id} not found: it was {'killed' if record.state == 'killed' else 'lost with its runner'}")


def sandbox(record: SandboxRecord) -> dict[str, Any]:
    """`Sandbox`: the answer to create and connect."""
    return {**Shown(record).common(), "envdAccessToken": record.access_token or None, "trafficAccessToken": None,
            "domain": None}


def listed_sandbox(record: SandboxRecord) -> dict[str, Any]:
    limits = record.limits
    return {
        **Shown(record).common(),
        "startedAt": iso(record.started_at),
        "endAt": iso(record.end_at),
        "cpuCount": limits.cpu_count,
        "memoryMB": limits.memory_mb,
        "diskSizeMB": limits.disk_mb,
        "state": visible_state(record),
        "metadata": dict(record.metadata),
    }


def sandbox_detail(record: SandboxRecord) -> dict[str, Any]:
    detail = listed_sandbox(record)
    detail.update({
        "envdAccessToken": record.access_token or None,
        "allowInternetAccess": record.allow_internet,
        "domain": None,
        "lifecycle": {"autoResume": record.auto_resume, "onTimeout": record.on_timeout},
    })
    if record.state == "paused":
        detail["pauseMode"] = "full" if record.memory_kept else "filesystem"
    return detail


def metric(m: Metrics) -> dict[str, Any]:
    return {
        "timestamp": iso(m.timestamp),
        "timestampUnix": int(m.timestamp),
        "cpuCount": m.cpu_count,
        "cpuUsedPct": round(m.cpu_used_pct, 2),
        "memUsed": m.mem_used,
        "memTotal": m.mem_total,
        "memCache": m.mem_cache,
        "diskUsed": m.disk_used,
        "diskTotal": m.disk_total,
    }
