"""Who is calling: anonymous, a user (from a verified token), or the admin."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from .errors import ConvexError, Unauthenticated

ADMIN_KEY_PREFIX = "corral-admin-"


class UserIdentity(dict):  # type: ignore[type-arg]
    """Convex's identity object (`tokenIdentifier`, `subject`, `issuer`, claims), with snake_case attributes."""

    _aliases = {"token_identifier": "tokenIdentifier", "picture_url": "pictureUrl", "email_verified": "emailVerified",
                "given_name": "givenName", "family_name": "familyName", "preferred_username": "preferredUsername",
                "phone_number": "phoneNumber", "updated_at": "updatedAt"}

    def __getattr__(self, item: str) -> Any:
        key = self._aliases.get(item, item)
        if key in self:
            return self[key]
        raise AttributeError(item)


@dataclass(frozen=True)
class Caller:
    """The identity a function runs as, and whether it may call internal functions."""

    identity: UserIdentity | None = None
    is_admin: bool = False
    key: str = field(default="anonymous")

    @classmethod
    def anonymous(cls) -> Caller:
        return ANONYMOUS

    @classmethod
    def admin(cls, acting_as: UserIdentity | None = None) -> Caller:
        key = "admin:" + acting_as["tokenIdentifier"] if acting_as else "admin"
        return cls(identity=acting_as, is_admin=True, key=key)

    @classmethod
    def user(cls, identity: UserIdentity) -> Caller:
        return cls(identity=identity, key="user:" + identity["tokenIdentifier"])


ANONYMOUS = Caller()


def identity_from_claims(claims: dict[str, Any]) -> UserIdentity:
    issuer = str(claims.get("iss", ""))
    subject = str(claims.get("sub", ""))
    if not subject:
        raise Unauthenticated("the identity has no subject ('sub')")
    out = UserIdentity()
    out["tokenIdentifier"] = f"{issuer}|{subject}"
    out["subject"] = subject
    out["issuer"] = issuer
    for claim, value in claims.items():
        if claim in ("iss", "sub", "aud", "exp", "iat", "nbf", "jti"):
            continue
        out[_camel(claim)] = value
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class Auth:
    """`ctx.auth`."""

    def __init__(self, caller: Caller) -> None:
        self._caller = caller

    def get_user_identity(self) -> UserIdentity | None:
        return self._caller.identity

    def require_user(self) -> UserIdentity:
        identity = self._caller.identity
        if identity is None:
            raise ConvexError({"code": "Unauthenticated", "message": "sign in first: this function needs a user identity"})
        return identity


def new_admin_key() -> str:
    return ADMIN_KEY_PREFIX + secrets.token_hex(32)


def admin_key_matches(offered: str, expected: str) -> bool:
    return hmac.compare_digest(offered.encode(), expected.encode())
