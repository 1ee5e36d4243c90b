"""The agent's private wire, shared by the agent and `AgentClient`.

A frame is an 8-byte prefix (header length, payload length: unsigned 32-bit big-endian), a JSON
object header and a binary payload. Requests carry ``id`` (an integer chosen by the client,
unique per connection) and ``op``; every frame the agent sends for that request carries the same
``id``. Events carry ``ev``; the last frame of a request carries ``ok`` (the result) or ``err``
(``{"kind", "message"}``, ``kind`` naming an exception of `corral.sandbox.protocol`).
"""

from __future__ import annotations

import json
import struct

TYPE_CHECKING = False  # typing costs milliseconds at start; annotations only
if TYPE_CHECKING:
    from typing import Any

PREFIX = struct.Struct(">II")
MAX_HEADER = 256 * 1024
MAX_PAYLOAD = 8 * 1024 * 1024
CHUNK = 64 * 1024
VERSION = 1

# Error kinds besides the protocol's exception names.
BAD_REQUEST = "BadRequest"
GENERIC = "SandboxError"


class FrameTooLarge(Exception):
    """A frame's prefix announces more than the limits allow: the stream cannot be trusted."""


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(len(head), len(payload)) + head + payload


def take_frame(buf: bytearray) -> tuple[bytes, bytes] | None:
    """Remove one complete frame from the front of `buf`: (header bytes, payload), or None."""
    if len(buf) < PREFIX.size:
        return None
    head_len, payload_len = PREFIX.unpack_from(buf)
    if head_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
        raise FrameTooLarge(f"frame of {head_len} + {payload_len} bytes is over the limit")
    end = PREFIX.size + head_len + payload_len
    if len(buf) < end:
        return None
    head = bytes(buf[PREFIX.size : PREFIX.size + head_len])
    payload = bytes(buf[PREFIX.size + head_len : end])
    del buf[:end]
    return head, payload


def parse_header(head: bytes) -> dict[str, Any]:
    """Decode a header; ValueError saying what is wrong with it."""
    try:
        value = json.loads(head)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"header is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("header is not a JSON object")
    return value
