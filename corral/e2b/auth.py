"""Who calls the E2B API, and as which sandbox user envd acts.

The control API takes an API key (`X-API-KEY: e2b_…`, what the SDK sends) or a user token
(`Authorization: Bearer <JWT>`). A sandbox belongs to the caller that created it: its owner is
the caller's `tokenIdentifier` (`api-key|<key id>` for a key, `issuer|subject` for a user).
"""

from __future__ import annotations

import base64
import binascii
import re

from starlette.requests import Request

from ..engine.auth import Authenticator
from ..engine.errors import CorralError
from .connect import invalid
from .shapes import ApiError

USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
DEFAULT_USER = "user"


async def owner_of(request: Request, authenticator: Authenticator) -> str:
    """The owner string of the calling key or user; ApiError 401/403 when there is none."""
    headers = request.headers
    if not headers.get("authorization") and headers.get("x-api-key") is None:
        raise ApiError(401, "missing API key: send it in the X-API-KEY header (set E2B_API_KEY for the SDK); "
                            "create one with `corral api-key create` or `corral e2b env`")
    try:
        caller = await authenticator.from_headers(headers)
    except CorralError as exc:
        raise ApiError(401, exc.message) from None
    refusal = caller.refusal(request.url.path, for_runners=False)
    if refusal is not None:
        raise ApiError(403, refusal)
    if caller.identity is None:
        raise ApiError(401, "the E2B API needs an API key or a user token, not the admin key alone")
    return str(caller.identity["tokenIdentifier"])


def envd_user(request: Request) -> str:
    """The sandbox user of an envd call: `Authorization: Basic base64("<user>:")`, else `user`."""
    header = request.headers.get("authorization")
    if not header:
        return DEFAULT_USER
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return DEFAULT_USER
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise invalid("the Authorization header must be Basic base64(\"<user>:\")") from None
    user = decoded.partition(":")[0]
    return check_user(user or DEFAULT_USER)


def check_user(user: str) -> str:
    if not USER_RE.match(user):
        raise invalid(f"{user[:40]!r} is not a valid user name")
    return user
