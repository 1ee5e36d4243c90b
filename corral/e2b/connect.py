"""The Connect protocol (connectrpc.com/docs/protocol) with the JSON codec, server side, over HTTP/1.1.

Unary calls carry one JSON message in the body (`application/json`) and answer one JSON
message, or an error as an HTTP status with `{"code": "not_found", "message": …}`. Streaming
calls (`application/connect+json`) carry envelopes both ways: one flags byte, a big-endian
uint32 length, then the JSON message; the last envelope of a response has flag 0x02 and holds
`{"error"?: {code, message}}`. The deadline of a call comes in `connect-timeout-ms`.

This module knows nothing of envd's services: it frames, parses and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..sandbox.protocol import close_stream

log = structlog.get_logger("corral.e2b.connect")

UNARY_CONTENT_TYPE = "application/json"
STREAM_CONTENT_TYPE = "application/connect+json"
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
HEADER = struct.Struct(">BI")

# Connect error codes and the HTTP status a unary error answers with (the protocol's table).
HTTP_STATUS: dict[str, int] = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


class RpcError(Exception):
    """A Connect error: `code` is one of HTTP_STATUS's keys, `message` says what was wrong."""

    def __init__(self, code: str, message: str) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown Connect error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def invalid(message: str) -> RpcError:
    return RpcError("invalid_argument", message)


# -- envelopes -----------------------------------------------------------------------------------

def envelope(message: Any, flags: int = 0) -> bytes:
    payload = orjson.dumps(message)
    return HEADER.pack(flags, len(payload)) + payload


def end_stream(error: RpcError | None = None) -> bytes:
    return envelope({"error": error.wire()} if error is not None else {}, FLAG_END_STREAM)


async def read_envelopes(chunks: AsyncIterator[bytes], max_message: int) -> AsyncIterator[tuple[int, bytes]]:
    """The (flags, payload) envelopes of a streamed request body, as they arrive."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= HEADER.size:
            flags, length = HEADER.unpack_from(buffer)
            if length > max_message:
                raise RpcError("resource_exhausted", f"a message of {length} bytes is larger than the limit of {max_message} bytes")
            if flags & ~(FLAG_COMPRESSED | FLAG_END_STREAM):
                raise invalid(f"malformed Connect envelope: unknown flags 0x{flags:02x}")
            if flags & FLAG_COMPRESSED:
                raise invalid("compressed Connect messages are not supported; send them uncompressed (identity)")
            if len(buffer) < HEADER.size + length:
                break
            payload = bytes(buffer[HEADER.size:HEADER.size + length])
            del buffer[:HEADER.size + length]
            yield flags, payload
    if buffer:
        raise invalid(f"malformed Connect envelope: the request body ended inside an envelope ({len(buffer)} bytes left over)")


def decode_message(payload: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the message is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise invalid(f"the message must be a JSON object, not {type(message).__name__}")
    return message


async def stream_messages(request: Request, max_message: int) -> AsyncIterator[dict[str, Any]]:
    """The messages of a client stream (envelope-framed request body), as they arrive."""
    async for flags, payload in read_envelopes(request.stream(), max_message):
        if flags & FLAG_END_STREAM:
            return
        yield decode_message(payload)


async def read_single_message(request: Request, streaming: bool, max_message: int) -> dict[str, Any]:
    """The one request message of a unary or server-streaming call."""
    if not streaming:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_message:
                raise RpcError("resource_exhausted", f"the request is larger than the limit of {max_message} bytes")
        return decode_message(bytes(body))
    messages = [m async for m in stream_messages(request, max_message)]
    if len(messages) != 1:
        raise invalid(f"a server-streaming call takes exactly one request message, got {len(messages)}")
    return messages[0]


# -- deadlines and keepalives --------------------------------------------------------------------

def timeout_seconds(request: Request) -> float | None:
    raw = request.headers.get("connect-timeout-ms")
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 10:
        raise invalid(f"connect-timeout-ms must be a positive integer of at most 10 digits, not {raw!r}")
    return int(raw) / 1000.0


def keepalive_seconds(request: Request, floor: float) -> float | None:
    """The interval the client asked for keepalive messages (`Keepalive-Ping-Interval`, seconds)."""
    raw = request.headers.get("keepalive-ping-interval")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise invalid(f"Keepalive-Ping-Interval must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        return None
    return max(value, floor)


# -- answering ---------------------------------------------------------------------------------

def unary_response(message: dict[str, Any]) -> Response:
    return Response(orjson.dumps(message), media_type=UNARY_CONTENT_TYPE)


def unary_error(error: RpcError) -> Response:
    return Response(orjson.dumps(error.wire()), status_code=HTTP_STATUS[error.code], media_type=UNARY_CONTENT_TYPE)


def stream_error(error: RpcError) -> Response:
    """A streaming call that fails before its first message: one end-stream envelope (HTTP 200)."""
    return Response(end_stream(error), media_type=STREAM_CONTENT_TYPE)


ErrorMapper = Callable[[BaseException], RpcError]


@dataclass
class StreamOptions:
    deadline: float | None  # seconds from now; None: no deadline
    keepalive: float | None  # seconds between keepalive messages when nothing else is sent
    keepalive_message: dict[str, Any]
    on_keepalive: Callable[[], Awaitable[None]] | None = None  # e.g. counting the stream as activity


_DONE = object()


def stream_response(messages: AsyncIterator[dict[str, Any]], options: StreamOptions, to_rpc_error: ErrorMapper) -> StreamingResponse:
    """Answer a streaming call: each message in an envelope, keepalives while idle, then the end."""
    return StreamingResponse(_frames(messages, options, to_rpc_error), media_type=STREAM_CONTENT_TYPE)


async def _frames(messages: AsyncIterator[dict[str, Any]], options: StreamOptions, to_rpc_error: ErrorMapper) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)

    async def pump() -> None:
        try:
            async for message in messages:
                await queue.put(message)
            await queue.put(_DONE)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the stream's end
            await queue.put(exc)

    task = asyncio.create_task(pump())
    deadline = None if options.deadline is None else loop.time() + options.deadline
    try:
        while True:
            wait = options.keepalive
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    yield end_stream(RpcError("deadline_exceeded", f"the call's deadline of {options.deadline:g} s passed"))
                    return
                wait = left if wait is None else min(wait, left)
            try:
                item = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    continue
                if options.on_keepalive is not None:
                    with contextlib.suppress(Exception):
                        await options.on_keepalive()
                yield envelope(options.keepalive_message)
                continue
            if item is _DONE:
                yield end_stream()
                return
            if isinstance(item, BaseException):
                yield end_stream(to_rpc_error(item))
                return
            yield envelope(item)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await close_stream(messages)


async def call_with_deadline(call: Awaitable[Response], deadline: float | None) -> Response:
    if deadline is None:
        return await call
    try:
        return await asyncio.wait_for(call, deadline)
    except TimeoutError:
        return unary_error(RpcError("deadline_exceeded", f"the call's deadline of {deadline:g} s passed"))
