"""Who is calling: anonymous, a user (from a verified token), or the admin."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConvexError, Unauthenticated

ADMIN_KEY_PREFIX = "corral-admin-"
# The issuer named in the identity of a caller that used an API key (`tokenIdentifier` = `api-key|<key id>`).
API_KEY_ISSUER = "api-key"


class UserIdentity(dict):  # type: ignore[type-arg]
    """Convex's identity object (`tokenIdentifier`, `subject`, `issuer`, claims), with snake_case attributes."""

    def __getattr__(self, item: str) -> Any:
        for key in (item, _ATTRIBUTES.get(item), _camel(item)):
            if key is not None and key in self:
                return self[key]
        raise AttributeError(item)


# Standard OIDC claims and the names Convex gives them in an identity; any other claim keeps its name.
STANDARD_CLAIMS = {
    "name": "name", "given_name": "givenName", "family_name": "familyName", "nickname": "nickname",
    "preferred_username": "preferredUsername", "profile": "profileUrl", "picture": "pictureUrl",
    "email": "email", "email_verified": "emailVerified", "gender": "gender", "birthdate": "birthday",
    "zoneinfo": "timezone", "locale": "language", "phone_number": "phoneNumber",
    "phone_number_verified": "phoneNumberVerified", "address": "address", "updated_at": "updatedAt",
}
# The registered JWT claims (RFC 7519) describe the token, not the user: never part of an identity.
TOKEN_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti"})
# snake_case attribute → identity key, for `user.token_identifier`, `user.picture_url`…
_ATTRIBUTES = {"token_identifier": "tokenIdentifier", "profile_url": "profileUrl", "picture_url": "pictureUrl",
               "email_verified": "emailVerified", "given_name": "givenName", "family_name": "familyName",
               "preferred_username": "preferredUsername", "phone_number": "phoneNumber",
               "phone_number_verified": "phoneNumberVerified", "updated_at": "updatedAt"}


@dataclass(frozen=True)
class MachineKey:
    """The API key a machine called with (never the secret): see `corral api-key`."""

    id: str
    name: str
    kind: str  # "client" or "runner"

    @property
    def is_runner(self) -> bool:
        return self.kind == "runner"


@dataclass(frozen=True)
class Caller:
    """The identity a function runs as, and whether it may call internal functions.

    `expires_at` (seconds since the epoch) is set for a caller that came from a token, so a long-lived
    socket can notice when its token expires; `machine` is set for a caller that came from an API key.
    """

    identity: UserIdentity | None = None
    is_admin: bool = False
    key: str = field(default="anonymous")
    expires_at: float | None = None
    machine: MachineKey | None = None

    @classmethod
    def anonymous(cls) -> Caller:
        return ANONYMOUS

    @classmethod
    def admin(cls, acting_as: UserIdentity | None = None) -> Caller:
        key = "admin:" + acting_as["tokenIdentifier"] if acting_as else "admin"
        return cls(identity=acting_as, is_admin=True, key=key)

    @classmethod
    def user(cls, identity: UserIdentity, expires_at: float | None = None) -> Caller:
        return cls(identity=identity, key="user:" + identity["tokenIdentifier"], expires_at=expires_at)

    @classmethod
    def api_key(cls, machine: MachineKey) -> Caller:
        identity = UserIdentity()
        identity["tokenIdentifier"] = f"{API_KEY_ISSUER}|{machine.id}"
        identity["subject"] = machine.id
        identity["issuer"] = API_KEY_ISSUER
        identity["name"] = machine.name
        identity["keyKind"] = machine.kind
        return cls(identity=identity, key="apikey:" + machine.id, machine=machine)

    def refusal(self, path: str, for_runners: bool) -> str | None:
        """Why this caller may not call the function at `path`, or None when it may."""
        if self.machine is not None and self.machine.is_runner and not for_runners:
            return (f"the runner key '{self.machine.name}' may only register a runner and report its work, "
                    f"not call {path}; call it with a client key (corral api-key create --kind client) or a user token")
        return None


ANONYMOUS = Caller()


def identity_from_claims(claims: dict[str, Any]) -> UserIdentity:
    """Convex's identity for a token's claims: `tokenIdentifier` = `issuer|subject`, the standard
    OIDC claims under Convex's names (`picture` → `pictureUrl`…), custom claims as they are."""
    issuer = str(claims.get("iss", ""))
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("the identity has no subject: 'sub' must be a non-empty string")
    out = UserIdentity()
    out["tokenIdentifier"] = f"{issuer}|{subject}"
    out["subject"] = subject
    out["issuer"] = issuer
    for claim, value in claims.items():
        if claim in TOKEN_CLAIMS:
            continue
        out[STANDARD_CLAIMS.get(claim, claim)] = _as_convex_json(value)
    return out


def _as_convex_json(value: Any) -> Any:
    """A claim's JSON as Convex sees it: every number is a float64 (a Python int would be an int64)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        return [_as_convex_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_convex_json(v) for k, v in value.items()}
    return value


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
