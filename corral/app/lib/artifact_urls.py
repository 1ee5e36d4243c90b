"""Short-lived signed URLs for an artifact's bytes, and the node route that serves them.

`artifacts:download_url` (members) signs `<artifact id>.<expiry ms>` with the deployment's key
(table corral_artifact_url_keys, HMAC-SHA256); `GET /api/corral/artifacts/download?token=…`
checks the signature and the expiry against the engine's clock (`artifacts:resolve_download`),
then streams the stored file with its content type, as an attachment named after its title. A
forged, altered or expired token gets a 4xx with `{code, message}` and no byte of the file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any, BinaryIO
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from corral import ConvexError
from corral.engine.auth import Caller
from corral.engine.errors import FunctionError
from corral.engine.runtime import Engine

PATH = "/api/corral/artifacts/download"
READ_CHUNK = 1 << 20
TOKEN_MAX = 200
STATUS = {"MissingDownloadToken": 400, "InvalidDownloadUrl": 403, "DownloadUrlExpired": 403, "NotFound": 404}


def _mac(secret: str, payload: str) -> str:
    digest = hmac.new(bytes.fromhex(secret), payload.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign(secret: str, artifact_id: str, expires_ms: int) -> str:
    """The token of a URL that downloads `artifact_id` until `expires_ms`."""
    payload = f"{artifact_id}.{expires_ms}"
    return f"{payload}.{_mac(secret, payload)}"


def check(secret: str, token: str, now_ms: float) -> str:
    """The artifact id a token names, if this deployment signed it and it has not expired."""
    if not token:
        raise ConvexError({"code": "MissingDownloadToken", "message": "the download URL has no token: "
                           "get one from corral/artifacts:download_url"})
    artifact_id, _, rest = token.partition(".")
    expires, _, mac = rest.partition(".")
    if not (secret and artifact_id and expires.isdigit() and mac) or not hmac.compare_digest(
            mac, _mac(secret, f"{artifact_id}.{expires}")):
        raise ConvexError({"code": "InvalidDownloadUrl", "message": "this download URL was not issued by this deployment "
                           "or has been altered: get a new one from corral/artifacts:download_url"})
    if int(expires) < now_ms:
        raise ConvexError({"code": "DownloadUrlExpired", "message": "this download URL has expired: get a new one "
                           "from corral/artifacts:download_url (they are valid for the artifact_url_ttl setting)"})
    return artifact_id


def url(origin: str, token: str) -> str:
    return f"{origin}{PATH}?token={quote(token, safe='')}"


def disposition(title: str) -> str:
    """Content-Disposition naming the file after its title (ASCII fallback, and RFC 5987 UTF-8)."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\/' else "_" for c in title) or "artifact"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(title, safe='')}"


def _error(status: int, code: str, message: str) -> Response:
    return Response(orjson.dumps({"code": code, "message": message}), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


class ArtifactDownloads:
    """The node's route for signed artifact URLs (corral/node.py mounts `endpoint` at PATH)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def endpoint(self, request: Request) -> Response:
        token = request.query_params.get("token", "")
        if len(token) > TOKEN_MAX:
            return _error(403, "InvalidDownloadUrl", "this download URL was not issued by this deployment")
        try:
            found: dict[str, Any] = await self.engine.call_query(
                "corral/artifacts:resolve_download", {"token": token}, Caller.admin(), internal_ok=True)
        except ConvexError as exc:
            data = exc.data if isinstance(exc.data, dict) else {"code": "InvalidDownloadUrl", "message": str(exc.data)}
            return _error(STATUS.get(str(data.get("code")), 403), str(data.get("code")), str(data.get("message")))
        except FunctionError as exc:
            return _error(400, "InvalidDownloadUrl", exc.message)
        files = self.engine.files
        storage_id = found["storage_id"]
        record = await self.engine.in_snapshot(lambda conn, _ts: files.read_record(conn, storage_id))
        handle = None if record is None else await asyncio.get_running_loop().run_in_executor(None, files.open_blob, record)
        if record is None or handle is None:
            return _error(404, "NotFound", "the stored file of this artifact is gone")
        headers = {"content-type": found["content_type"], "content-length": str(record.size),
                   "content-disposition": disposition(found["title"]), "x-content-type-options": "nosniff",
                   "content-security-policy": "sandbox", "cache-control": "private, no-store"}
        if request.method == "HEAD":
            handle.close()
            return Response(headers=headers)
        return StreamingResponse(_read(handle), headers=headers)


async def _read(handle: BinaryIO) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    try:
        while data := await loop.run_in_executor(None, handle.read, READ_CHUNK):
            yield data
    finally:
        handle.close()


def is_hex_key(secret: str) -> bool:
    try:
        return len(bytes.fromhex(secret)) == 32
    except (ValueError, binascii.Error):
        return False
