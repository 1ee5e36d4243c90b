"""Order-preserving byte encoding of values, for index keys.

Byte order of encoded keys equals Convex's value order:
missing < null < int64 < float64 < boolean < string < bytes < array < object.
Each component is self-delimiting, so the encoding of a prefix of an index's fields is a
byte prefix of every key that starts with those values.
"""

from __future__ import annotations

import struct
from typing import Any

MISSING = object()

_T_MISSING = b"\x01"
_T_NULL = b"\x02"
_T_INT = b"\x03"
_T_FLOAT = b"\x04"
_T_FALSE = b"\x05"
_T_TRUE = b"\x06"
_T_STRING = b"\x07"
_T_BYTES = b"\x08"
_T_ARRAY = b"\x09"
_T_OBJECT = b"\x0a"
_END = b"\x00"


def _escaped(data: bytes) -> bytes:
    return data.replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def encode_component(value: Any) -> bytes:
    if value is MISSING:
        return _T_MISSING
    if value is None:
        return _T_NULL
    if value is True:
        return _T_TRUE
    if value is False:
        return _T_FALSE
    if isinstance(value, str):
        return _T_STRING + _escaped(value.encode("utf-8"))
    if isinstance(value, float):
        bits = struct.unpack(">Q", struct.pack(">d", value))[0]
        bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits & (1 << 63) else bits | (1 << 63)
        return _T_FLOAT + struct.pack(">Q", bits)
    if isinstance(value, int):
        return _T_INT + struct.pack(">Q", (value + (1 << 63)) & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, (bytes, bytearray)):
        return _T_BYTES + _escaped(bytes(value))
    if isinstance(value, (list, tuple)):
        return _T_ARRAY + b"".join(encode_component(v) for v in value) + _END
    if isinstance(value, dict):
        parts = [_T_OBJECT]
        for key in sorted(value):
            parts.append(_escaped(key.encode("utf-8")))
            parts.append(encode_component(value[key]))
        parts.append(_END)
        return b"".join(parts)
    raise TypeError(f"cannot index a {type(value).__name__}")


def encode_key(values: list[Any] | tuple[Any, ...]) -> bytes:
    return b"".join(encode_component(v) for v in values)


def successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix`, or None (no bound)."""
    data = bytearray(prefix)
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return None
    data[-1] += 1
    return bytes(data)


def field_value(doc: dict[str, Any], path: str) -> Any:
    """Value at a dotted field path, or MISSING."""
    current: Any = doc
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return MISSING
        current = current[part]
    return current


def index_key(doc: dict[str, Any], fields: tuple[str, ...] | list[str], creation_time: float, doc_id: str) -> bytes:
    """A document's key in an index: its field values, then `_creationTime`, then `_id`."""
    parts = [encode_component(field_value(doc, f)) for f in fields]
    parts.append(encode_component(creation_time))
    parts.append(encode_component(doc_id))
    return b"".join(parts)


def id_key(doc_id: str) -> bytes:
    return encode_component(doc_id)
