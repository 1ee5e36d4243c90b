"""Convex's JSON value encoding.

Python mapping: None, bool, float (float64), int (int64), str, bytes, list, dict.
Encoded JSON turns int64 into `{"$integer": base64 LE}`, bytes into `{"$bytes": …}`
and non-finite floats into `{"$float": …}`; clean JSON (`format: json`) turns int64 into
a decimal string and bytes into a base64 string.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

from ..errors import LimitExceeded

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_NESTING = 16
MAX_DOCUMENT_BYTES = 1 << 20


class ValueError_(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError_(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except Exception as exc:  # binascii.Error
        raise ValueError_(f"{what} is not valid base64") from exc


def encode(value: Any) -> Any:
    """Python value → Convex encoded JSON (a JSON-compatible Python structure)."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is dict:
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, float):
        if math.isfinite(value) and not (value == 0.0 and math.copysign(1.0, value) < 0):
            return value
        return {"$float": _b64(struct.pack("<d", value))}
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError_(f"integer {value} does not fit in int64")
        return {"$integer": _b64(struct.pack("<q", value))}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": _b64(bytes(value))}
    raise ValueError_(f"{type(value).__name__} is not a Convex value")


def encode_clean(value: Any) -> Any:
    """Python value → clean JSON (Convex's `json` format)."""
    if value is None or value is True or value is False or isinstance(value, str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {k: encode_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_clean(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _b64(bytes(value))
    raise ValueError_(f"{type(value).__name__} is not a Convex value")


def decode(value: Any, depth: int = 0) -> Any:
    """Convex encoded JSON → Python value. JSON numbers are float64."""
    kind = type(value)
    if kind is str or kind is float or value is None or kind is bool:
        return value
    if depth > MAX_NESTING:
        raise LimitExceeded(f"value is nested deeper than {MAX_NESTING} levels")
    if kind is int:
        return float(value)
    if kind is list:
        return [decode(v, depth + 1) for v in value]
    if kind is dict:
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == "$integer":
                raw = _unb64(inner, "$integer")
                if len(raw) != 8:
                    raise ValueError_("$integer must encode 8 bytes")
                return struct.unpack("<q", raw)[0]
            if key == "$bytes":
                return _unb64(inner, "$bytes")
            if key == "$float":
                raw = _unb64(inner, "$float")
                if len(raw) != 8:
                    raise ValueError_("$float must encode 8 bytes")
                number = struct.unpack("<d", raw)[0]
                if math.isfinite(number) and not (number == 0.0 and math.copysign(1.0, number) < 0):
                    raise ValueError_("$float is only for NaN, Infinity and -0; send plain numbers as JSON numbers")
                return number
        out = {}
        for key, inner in value.items():
            if not isinstance(key, str):
                raise ValueError_("object keys must be strings")
            if key.startswith("$"):
                raise ValueError_(f"field name {key!r} starts with '$', which is reserved")
            out[key] = decode(inner, depth + 1)
        return out
    raise ValueError_(f"{type(value).__name__} is not a Convex value")


def check_value(value: Any, *, what: str = "value", max_bytes: int | None = None) -> None:
    """Enforce Convex's nesting and size limits on a Python value."""
    size = _measure(value, 0, what)
    if max_bytes is not None and size > max_bytes:
        raise LimitExceeded(f"{what} is {size} bytes, over the limit of {max_bytes} bytes (1 MiB per document)")


def _measure(value: Any, depth: int, what: str) -> int:
    if depth > MAX_NESTING:
        raise LimitExceeded(f"{what} is nested deeper than {MAX_NESTING} levels")
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return 8
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, (bytes, bytearray)):
        return len(value) + 2
    if isinstance(value, dict):
        total = 2
        for key, inner in value.items():
            if not isinstance(key, str):
                raise ValueError_(f"{what} has a non-string field name")
            total += len(key) + 2 + _measure(inner, depth + 1, what)
        return total
    if isinstance(value, (list, tuple)):
        return 2 + sum(_measure(v, depth + 1, what) for v in value)
    raise ValueError_(f"{what} contains a {type(value).__name__}, which is not a Convex value")


def ts_to_wire(ts: int) -> str:
    """A commit timestamp (ns) as Convex's EncodedTS: base64 of u64 little-endian."""
    return _b64(struct.pack("<Q", ts))


def ts_from_wire(text: Any) -> int:
    raw = _unb64(text, "timestamp")
    if len(raw) != 8:
        raise ValueError_("timestamp must encode 8 bytes")
    return int(struct.unpack("<Q", raw)[0])
