"""envd's plain file transfer: `GET /files` (raw bytes) and `POST /files` (multipart or octet-stream).

Both stream: a download is read from the sandbox chunk by chunk, an upload is written as it
arrives. A request names its sandbox by the `E2b-Sandbox-Id` header and `X-Access-Token`, or
by a signed URL (`signature`, `signature_expiration`): the SDK's `download_url`/`upload_url`
point at `/files` at the root of the sandbox URL's host, fetched without any header.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..sandbox.protocol import (
    DiskFull,
    EntryInfo,
    FileExists,
    FileNotFound,
    InvalidPath,
    PermissionDenied,
    Sandbox,
    SandboxError,
    after_first,
)
from . import envd_json as pj
from .auth import check_user, envd_user
from .connect import RpcError
from .envd import EnvdApi, EnvdHttpError, rpc_error, sandbox_id_of
from .multipart import MultipartError, boundary_of, parts
from .signing import TokenBook


class TooLarge(Exception):
    pass


def _status_of(exc: BaseException) -> tuple[int, str]:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, EnvdHttpError):
        return exc.status, exc.message
    if isinstance(exc, FileNotFound):
        return 404, message
    if isinstance(exc, InvalidPath | FileExists | MultipartError):
        return 400, message
    if isinstance(exc, PermissionDenied):
        return 403, message
    if isinstance(exc, DiskFull):
        return 507, message
    if isinstance(exc, TooLarge):
        return 413, message
    if isinstance(exc, RpcError):
        return {"invalid_argument": 400, "not_found": 404, "unauthenticated": 401}.get(exc.code, 500), exc.message
    if isinstance(exc, SandboxError):
        error = rpc_error(exc)
        return (502 if error.code == "unavailable" else 500), error.message
    return 500, rpc_error(exc).message


def _error(exc: BaseException) -> Response:
    if isinstance(exc, EnvdHttpError):
        return exc.response()
    status, message = _status_of(exc)
    return Response(orjson.dumps({"code": status, "message": message}), status_code=status, media_type="application/json")


class FilesHttp:
    def __init__(self, envd: EnvdApi, tokens: TokenBook, max_upload_bytes: int,
                 clock: Callable[[], float] = time.time,
                 reload: Callable[[], Awaitable[list[tuple[str, str]]]] | None = None,
                 reload_interval: float = 1.0) -> None:
        self.envd = envd
        self.tokens = tokens
        self.reload = reload  # the engine's (sandbox id, access token) pairs, when the cache misses
        # Misses are cheap to cause (any signature will do): one reload at a time, at most one per interval.
        self.reload_interval = reload_interval
        self._reload_lock = asyncio.Lock()
        self._reloaded_at: float | None = None
        self.max_upload_bytes = max_upload_bytes
        self.clock = clock

    def routes(self, prefix: str = "/envd") -> list[BaseRoute]:
        return [Route(f"{prefix}/files", self.download, methods=["GET"]),
                Route(f"{prefix}/files", self.upload, methods=["POST"])]

    def signed_routes(self) -> list[BaseRoute]:
        """`/files` at the root: where the SDK's signed download and upload URLs point."""
        return self.routes(prefix="")

    async def _sandbox(self, request: Request, operation: str, path: str) -> tuple[Sandbox, str]:
        """The sandbox and the user a file request acts as."""
        params = request.query_params
        username = params.get("username") or ""
        user = check_user(username) if username else envd_user(request)
        given = params.get("signature")
        header_id = sandbox_id_of(request)
        if not given:
            if not header_id:
                raise EnvdHttpError(401, "this file URL carries neither a signature nor the E2b-Sandbox-Id and "
                                         "X-Access-Token headers; make it with the SDK's download_url/upload_url")
            return await self.envd.sandbox_for(request), user
        expiration: int | None = None
        raw_expiration = params.get("signature_expiration")
        if raw_expiration:
            if not raw_expiration.isdigit():
                raise EnvdHttpError(400, f"signature_expiration must be unix seconds, not {raw_expiration!r}")
            expiration = int(raw_expiration)
            if expiration < self.clock():
                raise EnvdHttpError(401, "signature is already expired")
        found = self.tokens.find(given, path, operation, username, expiration)
        if found is None and self.reload is not None:
            found = await self._find_after_reload(given, path, operation, username, expiration)
        if found is None or (header_id and found[0] != header_id):
            raise EnvdHttpError(401, f"the signature is not valid for {operation} of {path}: it was made for "
                                     "another path, user, operation or sandbox, or its sandbox is gone")
        return await self.envd.open(*found), user

    async def _find_after_reload(self, given: str, path: str, operation: str, username: str,
                                 expiration: int | None) -> tuple[str, str] | None:
        assert self.reload is not None
        async with self._reload_lock:
            found = self.tokens.find(given, path, operation, username, expiration)  # reloaded while we waited?
            now = self.clock()
            if found is not None or (self._reloaded_at is not None and now - self._reloaded_at < self.reload_interval):
                return found
            try:
                self.tokens.replace(await self.reload())
            except Exception as exc:  # noqa: BLE001 - the engine is the only other place to look
                raise EnvdHttpError(503, f"cannot check the signature now: the sandbox records are unavailable ({exc})") from None
            self._reloaded_at = now
            return self.tokens.find(given, path, operation, username, expiration)

    async def download(self, request: Request) -> Response:
        try:
            path = pj.check_path(request.query_params.get("path", ""), "path")
            sandbox, user = await self._sandbox(request, "read", path)
            chunks = sandbox.files.read(path, user=user)
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                first = b""
        except Exception as exc:  # noqa: BLE001 - answered as envd's JSON error
            return _error(exc)
        name = path.rstrip("/").rsplit("/", 1)[-1] or "file"
        disposition = f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}"
        return StreamingResponse(after_first(first, chunks), media_type="application/octet-stream",
                                 headers={"Content-Disposition": disposition})

    async def upload(self, request: Request) -> Response:
        try:
            metadata = _metadata(request)
            path_param = request.query_params.get("path") or ""
            if path_param:
                pj.check_path(path_param, "path")
            sandbox, user = await self._sandbox(request, "write", path_param)
            budget = _Budget(self.max_upload_bytes)
            content_type = request.headers.get("content-type", "").lower()
            written: list[EntryInfo] = []
            if content_type.startswith("multipart/form-data"):
                async for part in parts(request.stream(), boundary_of(request.headers["content-type"])):
                    if part.name != "file":
                        continue
                    # The path parameter wins, as in envd: a signed upload URL is signed for that path, and
                    # a part's filename (the uploader's own name for the file) must not send it elsewhere.
                    destination = path_param or part.filename
                    if not destination:
                        raise EnvdHttpError(400, "a file part needs a filename (its destination path) or the path parameter")
                    pj.check_path(destination, "the destination path")
                    written.append(await sandbox.files.write(destination, budget.limit(part.data), user=user,
                                                             metadata=metadata))
                if not written:
                    raise EnvdHttpError(400, "the multipart body holds no part named 'file'")
            else:
                if not path_param:
                    raise EnvdHttpError(400, "an octet-stream upload needs the destination in the path parameter")
                body: AsyncIterator[bytes] = request.stream()
                encoding = request.headers.get("content-encoding", "identity").lower()
                if encoding == "gzip":
                    body = _gunzip(body)
                elif encoding not in ("identity", ""):
                    raise EnvdHttpError(400, f"Content-Encoding {encoding!r} is not supported; use gzip or none")
                written.append(await sandbox.files.write(path_param, budget.limit(body), user=user, metadata=metadata))
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as exc:  # noqa: BLE001 - answered as envd's JSON error
            return _error(exc)
        result = [{"path": e.path, "name": e.name, "type": "file", **({"metadata": e.metadata} if e.metadata else {})}
                  for e in written]
        return Response(orjson.dumps(result), media_type="application/json")


METADATA_HEADER = "x-metadata-"
METADATA_KEY_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]{1,200}\Z")
METADATA_VALUE_RE = re.compile(r"^[\x20-\x7e]{0,4096}\Z")
MAX_METADATA_KEYS = 64


def _metadata(request: Request) -> dict[str, str] | None:
    """The `X-Metadata-<key>` headers of an upload: stored as the file's `user.e2b.<key>` attributes
    (keys lowercased, as envd does)."""
    found: dict[str, str] = {}
    for name, value in request.headers.items():
        if not name.lower().startswith(METADATA_HEADER):
            continue
        key = name.lower()[len(METADATA_HEADER):]
        if not METADATA_KEY_RE.match(key):
            raise EnvdHttpError(400, f"the metadata key {key[:60]!r} is not valid: use letters, digits and !#$%&'*+-.^_`|~")
        if not METADATA_VALUE_RE.match(value):
            raise EnvdHttpError(400, f"the metadata value of {key!r} must be printable US-ASCII of at most 4096 characters")
        found[key] = value
    if len(found) > MAX_METADATA_KEYS:
        raise EnvdHttpError(400, f"an upload carries at most {MAX_METADATA_KEYS} metadata keys, not {len(found)}")
    return found or None


class _Budget:
    def __init__(self, limit_bytes: int) -> None:
        self.left = limit_bytes
        self.total = limit_bytes

    async def limit(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.left -= len(chunk)
            if self.left < 0:
                raise TooLarge(f"the upload is larger than this node's limit of {self.total} bytes")
            yield chunk


async def _gunzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    inflater = zlib.decompressobj(wbits=31)
    try:
        async for chunk in chunks:
            out = inflater.decompress(chunk, 1 << 20)
            while out:
                yield out
                out = inflater.decompress(inflater.unconsumed_tail, 1 << 20) if inflater.unconsumed_tail else b""
        tail = inflater.flush()
        if tail:
            yield tail
    except zlib.error as exc:
        raise EnvdHttpError(400, f"the gzip-encoded body is not valid gzip: {exc}") from None
