"""Sign-in sessions from the node's own issuer: one-time sign-in links, refreshable tokens, sign-out.

A sign-in link carries a *ticket*: a token of audience `corral-login` that works once (its `jti`
is recorded in the database's `_meta` when it is used) within `auth_login_link_ttl`. Exchanging
it gives a session: a user token (audience `corral`, `auth_session_token_ttl`) and a *refresh
token* (audience `corral-refresh`, `auth_session_ttl`) that buys new user tokens until it expires
or is signed out. Tickets and refresh tokens are never accepted as user tokens: their audience
is not `corral`.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import jwt

from ..clock import Clock
from ..errors import BadRequest, Unauthenticated
from ..settings import Settings
from ..storage import Store
from .tokens import LOCAL_ALGORITHM, LocalSigner

TICKET_AUDIENCE = "corral-login"
REFRESH_AUDIENCE = "corral-refresh"
USED_TICKET_META = "auth_ticket_used:"
SIGNED_OUT_META = "auth_signed_out:"
PROFILE_CLAIMS = ("name", "email", "picture")


class Sessions:
    def __init__(self, signer: LocalSigner, store: Store, clock: Clock, settings: Settings) -> None:
        self.signer = signer
        self.store = store
        self.clock = clock
        self.settings = settings

    def ticket(self, subject: Any, *, name: Any = None, email: Any = None) -> tuple[str, float]:
        """A one-time sign-in ticket for `subject`; returns it and its expiry (seconds since the epoch)."""
        if not isinstance(subject, str) or not subject.strip():
            raise BadRequest("a sign-in link needs a 'subject': the user's stable id", code="InvalidLoginRequest")
        claims: dict[str, Any] = {}
        for claim, value in (("name", name), ("email", email)):
            if value is not None:
                if not isinstance(value, str):
                    raise BadRequest(f"'{claim}' must be a string", code="InvalidLoginRequest")
                claims[claim] = value
        now = self.clock.time()
        ttl = self.settings.auth_login_link_ttl
        return (self.signer.mint(subject.strip(), now=now, ttl=ttl, claims=claims, audience=TICKET_AUDIENCE),
                float(int(now + ttl)))

    async def exchange(self, ticket: Any) -> dict[str, Any]:
        """A session for a ticket that has not been used yet; using it marks it used."""
        claims = self._verify(ticket, TICKET_AUDIENCE, "sign-in link")
        marker = secrets.token_hex(8)
        used = await asyncio.to_thread(self.store.set_meta_if_absent, USED_TICKET_META + str(claims["jti"]), marker)
        if used != marker:
            raise Unauthenticated("this sign-in link was already used; ask for a new one "
                                  "(`corral login-link --subject …`, or restart `corral up`)")
        profile = {k: claims[k] for k in PROFILE_CLAIMS if isinstance(claims.get(k), str)}
        now = self.clock.time()
        refresh_ttl = self.settings.auth_session_ttl
        refresh = self.signer.mint(claims["sub"], now=now, ttl=refresh_ttl, claims=profile, audience=REFRESH_AUDIENCE)
        return {**self._token(claims["sub"], profile), "refreshToken": refresh,
                "refreshExpiresAt": float(int(now + refresh_ttl))}

    async def refresh(self, refresh_token: Any) -> dict[str, Any]:
        """A new user token for a session that is neither expired nor signed out."""
        claims = self._verify(refresh_token, REFRESH_AUDIENCE, "session")
        if await asyncio.to_thread(self.store.get_meta, SIGNED_OUT_META + str(claims["jti"])) is not None:
            raise Unauthenticated("this session was signed out; sign in again")
        profile = {k: claims[k] for k in PROFILE_CLAIMS if isinstance(claims.get(k), str)}
        return self._token(claims["sub"], profile)

    async def sign_out(self, refresh_token: Any) -> None:
        claims = self._verify(refresh_token, REFRESH_AUDIENCE, "session")
        await asyncio.to_thread(self.store.set_meta_if_absent, SIGNED_OUT_META + str(claims["jti"]), "1")

    def _token(self, subject: str, profile: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.time()
        ttl = self.settings.auth_session_token_ttl
        token = self.signer.mint(subject, now=now, ttl=ttl, claims=profile)
        return {"token": token, "expiresAt": float(int(now + ttl)), "subject": subject,
                "tokenIdentifier": f"{self.signer.issuer}|{subject}", **profile}

    def _verify(self, token: Any, audience: str, what: str) -> dict[str, Any]:
        if not isinstance(token, str) or token.count(".") != 2:
            raise BadRequest(f"the {what} token is missing or is not a token", code="InvalidLoginRequest")
        try:
            claims = jwt.decode(token, self.signer.private_key.public_key(), algorithms=[LOCAL_ALGORITHM],
                                audience=audience, issuer=self.signer.issuer, options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"this {what} is not valid on this deployment: {exc}") from None
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or self.clock.time() > exp:
            raise Unauthenticated(f"this {what} has expired")
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("jti"), str):
            raise Unauthenticated(f"this {what} names no user")
        return claims
