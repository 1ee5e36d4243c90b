"""Turning credentials (an admin key, a token) into the `Caller` a function runs as."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .auth import Caller, UserIdentity, admin_key_matches, identity_from_claims
from .errors import BadRequest, Unauthenticated

TokenVerifier = Callable[[str], Awaitable[UserIdentity]]


class Authenticator:
    """Checks admin keys and user tokens. Token verification is pluggable (OIDC providers)."""

    def __init__(self, admin_key: str, verify_token: TokenVerifier | None = None) -> None:
        self.admin_key = admin_key
        self.verify_token = verify_token

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
        if self.verify_token is None:
            raise Unauthenticated("this node has no identity provider configured, so user tokens cannot be verified")
        return Caller.user(await self.verify_token(token))

    async def from_header(self, header: str | None) -> Caller:
        """`Authorization: Bearer <token>` or `Convex <adminKey>[:<base64 identity JSON>]`."""
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
