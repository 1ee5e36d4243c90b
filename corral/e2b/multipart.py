"""A streaming `multipart/form-data` reader: each part's bytes are handed on as they arrive,
so an upload never sits whole in memory."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass

MAX_HEADERS = 16 * 1024
CHUNK = 64 * 1024


class MultipartError(ValueError):
    pass


def boundary_of(content_type: str) -> bytes:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None or not 1 <= len(match.group(1)) <= 200:
        raise MultipartError("a multipart/form-data body needs a boundary in its Content-Type")
    return match.group(1).encode("latin-1")


@dataclass
class Part:
    name: str | None
    filename: str | None
    content_type: str | None
    data: AsyncIterator[bytes]


class _Buffer:
    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self.source = source
        self.data = bytearray()
        self.ended = False

    async def more(self) -> bool:
        if self.ended:
            return False
        try:
            self.data += await anext(self.source)
        except StopAsyncIteration:
            self.ended = True
            return False
        return True

    async def until(self, marker: bytes, limit: int, what: str) -> bytes:
        """The bytes before `marker` (consumed with it)."""
        while True:
            at = self.data.find(marker)
            if at >= 0:
                head = bytes(self.data[:at])
                del self.data[:at + len(marker)]
                return head
            if len(self.data) > limit:
                raise MultipartError(f"malformed multipart body: {what} is longer than {limit} bytes")
            if not await self.more():
                raise MultipartError(f"malformed multipart body: it ended inside {what}")

    async def exactly(self, count: int) -> bytes:
        while len(self.data) < count:
            if not await self.more():
                raise MultipartError("malformed multipart body: it ended before its closing boundary")
        head = bytes(self.data[:count])
        del self.data[:count]
        return head


def _disposition(headers: dict[str, str]) -> tuple[str | None, str | None]:
    value = headers.get("content-disposition", "")
    params: dict[str, str] = {}
    for match in re.finditer(r';\s*([A-Za-z0-9_*-]+)=("(?:[^"\\]|\\.)*"|[^;]*)', value):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key] = raw
    filename = params.get("filename")
    if "filename*" in params:  # RFC 5987: charset''percent-encoded
        _, _, encoded = params["filename*"].partition("''")
        filename = urllib.parse.unquote(encoded)
    return params.get("name"), filename


async def parts(body: AsyncIterator[bytes], boundary: bytes) -> AsyncIterator[Part]:
    """The parts of a multipart body, in order; read each part's data before asking for the next."""
    buffer = _Buffer(body)
    dash = b"--" + boundary
    delimiter = b"\r\n" + dash
    # Preamble, then the first boundary.
    await buffer.until(dash, 64 * 1024, "the preamble")
    while True:
        tail = await buffer.exactly(2)
        if tail == b"--":
            return
        if tail != b"\r\n":
            raise MultipartError("malformed multipart body: a boundary is not followed by a line break")
        raw_headers = await buffer.until(b"\r\n\r\n", MAX_HEADERS, "a part's headers")
        headers: dict[str, str] = {}
        for line in raw_headers.decode("utf-8", "replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        name, filename = _disposition(headers)
        state = {"done": False}

        async def data(state: dict[str, bool] = state) -> AsyncIterator[bytes]:
            while True:
                at = buffer.data.find(delimiter)
                if at >= 0:
                    if at:
                        yield bytes(buffer.data[:at])
                    del buffer.data[:at + len(delimiter)]
                    state["done"] = True
                    return
                keep = len(delimiter) - 1
                if len(buffer.data) > keep:
                    cut = len(buffer.data) - keep
                    chunk = bytes(buffer.data[:cut])
                    del buffer.data[:cut]
                    yield chunk
                if not await buffer.more():
                    raise MultipartError("malformed multipart body: it ended inside a part")

        stream = data()
        yield Part(name, filename, headers.get("content-type"), stream)
        if not state["done"]:
            async for _ in stream:  # the consumer left the part unread: skip it
                pass
