"""File storage over HTTP, as Convex serves it.

- `POST /api/storage/upload?token=…` — the URL `ctx.storage.generate_upload_url()` returns.
  The body is the file's raw bytes, streamed to disk (never held in memory); the request's
  `Content-Type` is kept as the file's. Answers `{"storageId": "…"}`.
- `GET /api/storage/{storageId}` — the URL `ctx.storage.get_url(id)` returns: the bytes,
  streamed, with the file's content type, `Content-Length`, an `ETag` and a `Digest`
  (sha-256). 404 with a JSON error when there is no such file.

Both answer CORS requests from any origin: the token (upload) and the unguessable id
(download) are the credentials, so a browser app on another origin can use them directly.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, BinaryIO

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..files import FileRecord, UploadRejected, is_storage_id
from .function_api import json_response

if TYPE_CHECKING:
    from ..runtime import Engine

log = structlog.get_logger("corral.files")

READ_CHUNK = 1 << 20
CORS = {"access-control-allow-origin": "*"}


def _error(status: int, code: str, message: str) -> Response:
    response = json_response({"code": code, "message": message}, status)
    response.headers.update(CORS)
    return response


def _preflight(request: Request, methods: str) -> Response:
    return Response(status_code=204, headers={
        **CORS,
        "access-control-allow-methods": methods,
        "access-control-allow-headers": request.headers.get("access-control-request-headers", "content-type"),
        "access-control-max-age": "86400",
    })


class FileStorageApi:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/storage/upload", self.upload, methods=["POST", "OPTIONS"]),
            Route("/api/storage/{storage_id}", self.download, methods=["GET", "HEAD", "OPTIONS"]),
        ]

    async def upload(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return _preflight(request, "POST, OPTIONS")
        files = self.engine.files
        try:
            token = files.check_token(request.query_params.get("token"))
            await files.check_unused(self.engine, token[0])
            declared = request.headers.get("content-length")
            if declared is not None:
                if not declared.isdigit():
                    raise UploadRejected(400, "BadContentLength", f"Content-Length {declared!r} is not a number of bytes")
                if int(declared) > files.settings.max_upload_bytes:
                    raise files.too_large()  # refused before a byte is read
            storage_id = await files.receive(request.stream(), request.headers.get("content-type") or None, token)
        except UploadRejected as exc:
            return _error(exc.http_status, exc.code, exc.message)
        except ClientDisconnect:
            log.info("files.upload_abandoned")
            return Response(status_code=400)  # nobody is listening; nothing was kept
        response = json_response({"storageId": storage_id})
        response.headers.update(CORS)
        return response

    async def download(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return _preflight(request, "GET, HEAD, OPTIONS")
        files = self.engine.files
        storage_id = request.path_params["storage_id"]
        record: FileRecord | None = None
        if is_storage_id(storage_id):
            record = await self.engine.in_snapshot(lambda conn, _ts: files.read_record(conn, storage_id))
        if record is None:
            return _error(404, "NotFound", f"there is no file {storage_id!r} (never stored, or deleted)")
        etag = f'"{record.sha256}"'
        headers = {
            **CORS,
            "content-type": record.content_type or "application/octet-stream",
            "content-length": str(record.size),
            "etag": etag,
            "digest": "sha-256=" + base64.b64encode(bytes.fromhex(record.sha256)).decode("ascii"),
            "cache-control": "private, max-age=2592000, immutable",  # an id's bytes never change
        }
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={k: v for k, v in headers.items() if k != "content-length"})
        if request.method == "HEAD":
            return Response(headers=headers)
        loop = asyncio.get_running_loop()
        handle = await loop.run_in_executor(None, files.open_blob, record)
        if handle is None:
            log.warning("files.blob_missing", storage_id=storage_id, sha256=record.sha256)
            return _error(404, "NotFound", f"the bytes of file {storage_id!r} are missing from the blob store")
        return StreamingResponse(_read(handle), headers=headers)


async def _read(handle: BinaryIO) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await loop.run_in_executor(None, handle.read, READ_CHUNK)
            if not data:
                return
            yield data
    finally:
        handle.close()
