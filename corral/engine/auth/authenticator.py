"""Turning credentials (an admin key, a token, an API key) into the `Caller` a function runs as."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from ..errors import BadRequest, Unauthenticated
from .api_keys import looks_like_api_key
from .callers import Caller, UserIdentity, admin_key_matches, identity_from_claims

# Hooks a node installs (see auth_api.AuthService.attach); each raises Unauthenticated to refuse.
TokenVerifier = Callable[[str], Awaitable["Caller | UserIdentity"]]
ApiKeyVerifier = Callable[[str], Awaitable[Caller]]
Revalidator = Callable[[Caller], Awaitable[None]]


class Authenticator:
    """Checks admin keys, user tokens and API keys. Token and key verification are pluggable."""

    def __init__(self, admin_key: str, verify_token: TokenVerifier | None = None,
                 verify_api_key: ApiKeyVerifier | None = None, revalidate: Revalidator | None = None) -> None:
        self.admin_key = admin_key
        self.verify_token = verify_token
        self.verify_api_key = verify_api_key
        self.revalidate = revalidate

    async def __call__(self, token_type: str, value: str, impersonating: Any = None) -> Caller:
        if token_type == "Admin":
            return self.admin(value, impersonating)
        return await self.user(value)

    def admin(self, key: str, acting_as: Any = None) -> Caller:
        if not admin_key_matches(key, self.admin_key):
            raise Unauthenticated("the admin key is not this deployment's; get it with `corral admin-key`")
        if acting_as is None:
            return Caller.admin()
        if not isinstance(acting_as, dict):
            raise Unauthenticated("the identity to act as must be an object of identity attributes")
        claims = dict(acting_as)
        claims.setdefault("sub", claims.pop("subject", None))
        claims.setdefault("iss", claims.pop("issuer", "corral-admin"))
        claims.pop("tokenIdentifier", None)
        if not claims.get("sub"):
            raise Unauthenticated("the identity to act as needs a 'subject'")
        return Caller.admin(identity_from_claims(claims))

    async def user(self, token: str) -> Caller:
        """A bearer credential: an API key (`e2b_…`) or a user token (a JWT)."""
        if looks_like_api_key(token):
            if self.verify_api_key is None:
                raise Unauthenticated("this node does not accept API keys")
            return await self.verify_api_key(token)
        if self.verify_token is None:
            raise Unauthenticated("this node has no identity provider configured, so user tokens cannot be verified")
        verified = await self.verify_token(token)
        return verified if isinstance(verified, Caller) else Caller.user(verified)

    async def still_valid(self, caller: Caller) -> None:
        """Raise Unauthenticated when the credential behind `caller` expired or was revoked since."""
        if self.revalidate is not None and (caller.expires_at is not None or caller.machine is not None):
            await self.revalidate(caller)

    async def from_headers(self, headers: Mapping[str, str]) -> Caller:
        """The caller of an HTTP request: its `Authorization` header, else its `X-API-Key` header."""
        authorization = headers.get("authorization")
        if authorization:
            return await self.from_header(authorization)
        api_key = headers.get("x-api-key")
        if api_key is not None:
            value = api_key.strip()
            if not looks_like_api_key(value):
                raise Unauthenticated("the X-API-Key header holds no API key: an API key is e2b_ followed by 40 hex "
                                      "digits; create one with `corral api-key create`")
            return await self.user(value)
        return Caller.anonymous()

    async def from_header(self, header: str | None) -> Caller:
        """`Authorization: Bearer <token or API key>` or `Convex <adminKey>[:<base64 identity JSON>]`."""
        if not header:
            return Caller.anonymous()
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if not value:
            raise BadRequest("the Authorization header must be 'Bearer <token>' or 'Convex <admin key>'", code="BadAuthHeader")
        if scheme.lower() == "bearer":
            return await self.user(value)
        if scheme.lower() == "convex":
            key, _, acting = value.partition(":")
            attributes = None
            if acting:
                try:
                    attributes = orjson.loads(base64.b64decode(acting, validate=True))
                except (binascii.Error, orjson.JSONDecodeError, ValueError):
                    raise BadRequest("the identity after the admin key must be base64 of a JSON object", code="BadAuthHeader") from None
            return self.admin(key, attributes)
        raise BadRequest(f"unknown Authorization scheme {scheme!r}; use 'Bearer <token>' or 'Convex <admin key>'", code="BadAuthHeader")
