"""User tokens: OIDC/JWT verification against trusted issuers, and the node's own issuer.

A token is accepted only when every check passes, in this order: it parses as a compact JWS;
its `alg` is one Corral accepts (RS256, ES256: never `none`, never a symmetric HS*); its `iss` is
a configured issuer (or the node itself) whose allow-list holds that `alg`; its `kid` names one of
that issuer's keys, of the key type the `alg` needs; the signature verifies with that key; it has
an `exp` that has not passed, and no `nbf` or `iat` in the future (each with `auth_clock_leeway`
seconds of slack); and its `aud` names the issuer's configured audience. Every failure raises
`Unauthenticated` with a message that says which check failed.

Issuers' keys (JWKS) are fetched over HTTP, directly or through OIDC discovery, cached for
`auth_jwks_cache_ttl` seconds, and refetched early when a token names an unknown `kid` (key
rotation) — at most once per `auth_jwks_refetch_interval`. All time comes from the engine's clock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from ..clock import Clock
from ..errors import ConfigError, Unauthenticated
from .callers import API_KEY_ISSUER, Caller, identity_from_claims

log = structlog.get_logger("corral.auth")

SUPPORTED_ALGORITHMS = ("RS256", "ES256")
_KEY_TYPE = {"RS256": "RSA", "ES256": "EC"}
DEFAULT_ALGORITHMS = ("RS256",)
LOCAL_ALGORITHM = "ES256"
LOCAL_AUDIENCE = "corral"
SIGNING_KEY_META = "auth_signing_key"
MAX_TOKEN_BYTES = 64 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks.json"


# -- configuration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Provider:
    """An issuer whose tokens this node trusts (one entry of the `auth_providers` setting)."""

    issuer: str
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None  # inline keys instead of a URL
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS


_PROVIDER_FIELDS = {"issuer", "jwks_url", "jwks", "audience", "algorithms"}


def parse_providers(raw: Any) -> list[Provider]:
    """The `auth_providers` setting, checked; a bad entry raises ConfigError naming it."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("setting 'auth_providers' must be a list of providers, each an object with an 'issuer'")
    providers: list[Provider] = []
    seen: set[str] = set()
    for number, entry in enumerate(raw, start=1):
        where = f"auth_providers entry {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be an object with 'issuer' and 'jwks_url' or 'jwks'")
        unknown = sorted(set(entry) - _PROVIDER_FIELDS)
        if unknown:
            raise ConfigError(f"{where} has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_PROVIDER_FIELDS))}")
        issuer = entry.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise ConfigError(f"{where} needs an 'issuer': the exact 'iss' of its tokens, e.g. https://auth.example.com/")
        where = f"auth_providers entry {number} ({issuer})"
        if issuer == API_KEY_ISSUER:
            raise ConfigError(f"{where}: '{API_KEY_ISSUER}' is the issuer of API-key identities; a provider cannot use it")
        if issuer in seen:
            raise ConfigError(f"{where} repeats an issuer; each issuer is configured once")
        seen.add(issuer)
        jwks_url = entry.get("jwks_url")
        if jwks_url is not None and (not isinstance(jwks_url, str) or not jwks_url.startswith(("http://", "https://"))):
            raise ConfigError(f"{where}: 'jwks_url' must be an http:// or https:// URL")
        inline = entry.get("jwks")
        if isinstance(inline, str):
            try:
                inline = json.loads(inline)
            except ValueError as exc:
                raise ConfigError(f"{where}: 'jwks' is not valid JSON: {exc}") from None
        if inline is not None:
            if jwks_url is not None:
                raise ConfigError(f"{where}: give 'jwks_url' or 'jwks', not both")
            try:
                if not parse_jwks(inline):
                    raise ValueError("it holds no RSA or EC signing key")
            except ValueError as exc:
                raise ConfigError(f"{where}: 'jwks' is not a usable key set: {exc}") from None
        if jwks_url is None and inline is None and not issuer.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: give 'jwks_url' or 'jwks'; only an http(s) issuer can be discovered")
        audience = entry.get("audience")
        if audience is None:
            audiences: tuple[str, ...] = ()
        elif isinstance(audience, str) and audience:
            audiences = (audience,)
        elif isinstance(audience, list) and audience and all(isinstance(a, str) and a for a in audience):
            audiences = tuple(audience)
        else:
            raise ConfigError(f"{where}: 'audience' must be a string or a list of strings")
        algorithms = entry.get("algorithms", list(DEFAULT_ALGORITHMS))
        if isinstance(algorithms, str):
            algorithms = [algorithms]
        if not isinstance(algorithms, list) or not algorithms or any(a not in SUPPORTED_ALGORITHMS for a in algorithms):
            raise ConfigError(f"{where}: 'algorithms' must list some of {', '.join(SUPPORTED_ALGORITHMS)}, got {algorithms!r}")
        providers.append(Provider(issuer=issuer, jwks_url=jwks_url, jwks=inline, audiences=audiences,
                                  algorithms=tuple(dict.fromkeys(algorithms))))
    return providers


# -- key sets ------------------------------------------------------------------------------------

def parse_jwks(document: Any) -> dict[str | None, dict[str, Any]]:
    """The signing keys of a JWKS document by `kid` (None for a key without one).

    Keys that are not RSA or EC, or that are marked for encryption, are left out, not refused:
    providers publish such keys next to their signing keys."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS is a JSON object with a 'keys' list")
    keys: dict[str | None, dict[str, Any]] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC") or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        try:
            jwt.PyJWK(jwk, algorithm=_algorithm_of(jwk))
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"key {kid!r} cannot be read: {exc}") from None
        keys[kid] = jwk
    return keys


def _algorithm_of(jwk: dict[str, Any]) -> str:
    alg = jwk.get("alg")
    if isinstance(alg, str):
        return alg
    return "RS256" if jwk.get("kty") == "RSA" else "ES256"


class KeySet:
    """One issuer's keys, with the public key objects built once per (kid, alg)."""

    def __init__(self, keys: dict[str | None, dict[str, Any]]) -> None:
        self.keys = keys
        self._built: dict[tuple[str | None, str], Any] = {}

    def key_for(self, kid: str | None, alg: str, issuer: str) -> Any | None:
        """The public key to check a token with, None when `kid` is unknown; raises when it cannot fit."""
        if kid is None:
            if len(self.keys) != 1:
                raise Unauthenticated(f"the token names no key ('kid') and issuer {issuer} has {len(self.keys)} keys; "
                                      "its tokens must say which key signed them")
            kid = next(iter(self.keys))
        jwk = self.keys.get(kid)
        if jwk is None:
            return None
        built = self._built.get((kid, alg))
        if built is None:
            if jwk.get("kty") != _KEY_TYPE[alg]:
                raise Unauthenticated(f"key {kid!r} of issuer {issuer} is an {jwk.get('kty')} key, which cannot check an {alg} signature")
            if "alg" in jwk and jwk["alg"] != alg:
                raise Unauthenticated(f"key {kid!r} of issuer {issuer} is for {jwk['alg']}, but the token says {alg}")
            try:
                built = jwt.PyJWK(jwk, algorithm=alg).key
            except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
                raise Unauthenticated(f"key {kid!r} of issuer {issuer} cannot check an {alg} signature: {exc}") from None
            self._built[(kid, alg)] = built
        return built


class RemoteKeys:
    """An issuer's keys fetched over HTTP: cached, refetched when stale or when a token names an unknown kid."""

    def __init__(self, provider: Provider, clock: Clock, *, cache_ttl: float, refetch_interval: float,
                 fetch_timeout: float) -> None:
        self.provider = provider
        self.clock = clock
        self.cache_ttl = cache_ttl
        self.refetch_interval = refetch_interval
        self.fetch_timeout = fetch_timeout
        self.keyset: KeySet | None = None
        self.fetched_at: float | None = None
        self.attempted_at: float | None = None
        self.jwks_url = provider.jwks_url
        self.last_error: str | None = None
        self._inflight: asyncio.Task[None] | None = None

    async def key_for(self, kid: str | None, alg: str) -> Any:
        issuer = self.provider.issuer
        if self.keyset is None:
            if not self._may_refetch() and self.last_error is not None:
                raise Unauthenticated(self.last_error)  # the last fetch failed moments ago: do not hammer the issuer
            await self._refresh(required=True)
        elif self.fetched_at is not None and self.clock.monotonic() - self.fetched_at >= self.cache_ttl and self._may_refetch():
            await self._refresh(required=False)
        assert self.keyset is not None
        key = self.keyset.key_for(kid, alg, issuer)
        if key is None and self._may_refetch():
            await self._refresh(required=False)  # the issuer may have rotated its keys
            key = self.keyset.key_for(kid, alg, issuer)
        if key is None:
            known = ", ".join(sorted(repr(k) for k in self.keyset.keys)) or "none"
            raise Unauthenticated(f"the token was signed with key {kid!r}, which is not one of issuer {issuer}'s keys (known: {known})")
        return key

    def _may_refetch(self) -> bool:
        return self.attempted_at is None or self.clock.monotonic() - self.attempted_at >= self.refetch_interval

    async def _refresh(self, required: bool) -> None:
        """Fetch the keys once, sharing a fetch already under way; keep the old keys if it fails."""
        task = self._inflight
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._fetch())
            task.add_done_callback(_retrieve)
            self._inflight = task
        try:
            await asyncio.shield(task)
            self.last_error = None
        except Unauthenticated as exc:
            self.last_error = exc.message
            if required or self.keyset is None:
                raise
            log.warning("auth.jwks_refresh_failed", issuer=self.provider.issuer, keeping=len(self.keyset.keys))

    async def _fetch(self) -> None:
        issuer = self.provider.issuer
        self.attempted_at = self.clock.monotonic()
        async with httpx.AsyncClient(timeout=self.fetch_timeout, follow_redirects=True) as client:
            if self.jwks_url is None:
                url = issuer.rstrip("/") + DISCOVERY_PATH
                document = await _get_json(client, url, f"the OpenID configuration of issuer {issuer}")
                jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
                if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("http://", "https://")):
                    raise Unauthenticated(f"the OpenID configuration of issuer {issuer} ({url}) has no 'jwks_uri'")
                if document.get("issuer") != issuer:
                    raise Unauthenticated(f"the OpenID configuration at {url} is for issuer {document.get('issuer')!r}, not {issuer}")
                self.jwks_url = jwks_uri
            url = self.jwks_url
            document = await _get_json(client, url, f"the keys (JWKS) of issuer {issuer}")
        try:
            keys = parse_jwks(document)
        except ValueError as exc:
            raise Unauthenticated(f"the keys of issuer {issuer} at {url} cannot be used: {exc}") from None
        self.keyset = KeySet(keys)
        self.fetched_at = self.clock.monotonic()
        log.info("auth.jwks_fetched", issuer=issuer, url=url, keys=len(keys))


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a fetch's failure as seen even when every waiter gave up on it."""
    if not task.cancelled():
        task.exception()


async def _get_json(client: httpx.AsyncClient, url: str, what: str) -> Any:
    try:
        response = await client.get(url, headers={"accept": "application/json"})
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise Unauthenticated(f"cannot fetch {what} from {url}: {exc or type(exc).__name__}") from None
    if response.status_code != 200:
        raise Unauthenticated(f"cannot fetch {what} from {url}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise Unauthenticated(f"{what} at {url} is not JSON") from None


class StaticKeys:
    """Keys given inline (the `jwks` of a provider, or the node's own key)."""

    def __init__(self, provider: Provider, keyset: KeySet) -> None:
        self.provider = provider
        self.keyset = keyset

    async def key_for(self, kid: str | None, alg: str) -> Any:
        key = self.keyset.key_for(kid, alg, self.provider.issuer)
        if key is None:
            known = ", ".join(sorted(repr(k) for k in self.keyset.keys)) or "none"
            raise Unauthenticated(f"the token was signed with key {kid!r}, which is not one of issuer "
                                  f"{self.provider.issuer}'s keys (known: {known})")
        return key


# -- the node's own issuer -----------------------------------------------------------------------

@dataclass
class LocalSigner:
    """The node's signing key (ES256): it mints tokens and publishes its public key as a JWKS.

    The key lives in the database's `_meta`, so every node of a deployment signs with the same key."""

    issuer: str
    private_key: ec.EllipticCurvePrivateKey
    jwks_base: str = ""  # where this node serves the keys when the issuer is not a URL of its own
    kid: str = field(init=False)
    public_jwk: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        public = {k: jwk[k] for k in ("kty", "crv", "x", "y")}
        self.kid = _thumbprint(public)
        self.public_jwk = {**public, "kid": self.kid, "alg": LOCAL_ALGORITHM, "use": "sig"}

    @staticmethod
    def new_key_record() -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        return json.dumps({"alg": LOCAL_ALGORITHM, "private_key_pem": pem})

    @classmethod
    def from_record(cls, issuer: str, record: str, jwks_base: str = "") -> LocalSigner:
        try:
            data = json.loads(record)
            key = serialization.load_pem_private_key(data["private_key_pem"].encode(), password=None)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"the signing key stored in the database ({SIGNING_KEY_META}) cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"the signing key stored in the database ({SIGNING_KEY_META}) is not an EC key")
        return cls(issuer, key, jwks_base)

    def mint(self, subject: str, *, now: float, ttl: float, claims: dict[str, Any] | None = None,
             audience: str = LOCAL_AUDIENCE) -> str:
        if not isinstance(subject, str) or not subject:
            raise ValueError("a token needs a non-empty subject")
        if not ttl > 0:
            raise ValueError(f"a token's lifetime must be more than 0 seconds, not {ttl:g}")
        payload: dict[str, Any] = {}
        for name, value in (claims or {}).items():
            if value is not None:
                payload[name] = value
        payload.update(iss=self.issuer, sub=subject, aud=audience, iat=int(now), exp=int(now + ttl),
                       jti=secrets.token_hex(12))
        return jwt.encode(payload, self.private_key, algorithm=LOCAL_ALGORITHM, headers={"kid": self.kid, "typ": "JWT"})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self.public_jwk)]}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": (self.issuer if self.issuer.startswith(("http://", "https://")) else self.jwks_base) + JWKS_PATH,
            "id_token_signing_alg_values_supported": [LOCAL_ALGORITHM],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "name", "email"],
        }

    def provider(self) -> Provider:
        return Provider(issuer=self.issuer, audiences=(LOCAL_AUDIENCE,), algorithms=(LOCAL_ALGORITHM,))


def _thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint: a key id that is the same wherever the key is."""
    canonical = json.dumps({k: public_jwk[k] for k in sorted(public_jwk)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


# -- verification --------------------------------------------------------------------------------

class TokenVerifier:
    """Turns a user token into a `Caller`, or raises `Unauthenticated` saying why not."""

    def __init__(self, providers: Iterable[Provider], clock: Clock, *, leeway: float, cache_ttl: float,
                 refetch_interval: float, fetch_timeout: float, local: LocalSigner | None = None) -> None:
        self.clock = clock
        self.leeway = leeway
        self.issuers: dict[str, RemoteKeys | StaticKeys] = {}
        for provider in providers:
            if provider.jwks is not None:
                self.issuers[provider.issuer] = StaticKeys(provider, KeySet(parse_jwks(provider.jwks)))
            else:
                self.issuers[provider.issuer] = RemoteKeys(provider, clock, cache_ttl=cache_ttl,
                                                           refetch_interval=refetch_interval, fetch_timeout=fetch_timeout)
        if local is not None:
            if local.issuer in self.issuers:
                raise ConfigError(f"auth_providers configures {local.issuer}, which is this node's own issuer; "
                                  "remove that entry or set auth_issuer to another URL")
            self.issuers[local.issuer] = StaticKeys(local.provider(), KeySet({local.kid: local.public_jwk}))

    async def __call__(self, token: str) -> Caller:
        return await self.verify(token)

    async def verify(self, token: str) -> Caller:
        header, unverified = _unverified_parts(token)
        alg = header.get("alg")
        if alg not in SUPPORTED_ALGORITHMS:
            raise Unauthenticated(_algorithm_refusal(alg))
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise Unauthenticated("the token names no issuer ('iss'), so there is no key to check it with")
        keys = self.issuers.get(issuer)
        if keys is None:
            raise Unauthenticated(f"the token's issuer {issuer!r} is not one this node trusts; "
                                  "add it to the auth_providers setting (see docs/auth.md)")
        provider = keys.provider
        if alg not in provider.algorithms:
            raise Unauthenticated(f"issuer {issuer} is configured for {', '.join(provider.algorithms)}; "
                                  f"a token signed with {alg} is not accepted from it")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's 'kid' header must be a string")
        key = await keys.key_for(kid, alg)
        try:
            claims = jwt.decode(token, key, algorithms=[alg], options={
                "verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False})
        except jwt.InvalidSignatureError:
            raise Unauthenticated(f"the token's signature does not verify with key {kid!r} of issuer {issuer}: "
                                  "it was not signed by that issuer, or it was altered") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token cannot be verified: {exc}") from None
        expires = self._check_times(claims)
        _check_audience(claims, provider)
        return Caller.user(identity_from_claims(claims), expires_at=expires)

    def _check_times(self, claims: dict[str, Any]) -> float:
        now = self.clock.time()
        exp = claims.get("exp")
        if exp is None:
            raise Unauthenticated("the token has no expiry ('exp'); Corral accepts only tokens that expire")
        if not _is_number(exp):
            raise Unauthenticated("the token's expiry ('exp') is not a number of seconds")
        if now > exp + self.leeway:
            raise Unauthenticated(f"the token expired at {_iso(exp)}; get a new token")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_number(nbf):
                raise Unauthenticated("the token's 'nbf' is not a number of seconds")
            if now + self.leeway < nbf:
                raise Unauthenticated(f"the token is not valid yet: not before {_iso(nbf)}")
        iat = claims.get("iat")
        if iat is not None:
            if not _is_number(iat):
                raise Unauthenticated("the token's 'iat' is not a number of seconds")
            if now + self.leeway < iat:
                raise Unauthenticated(f"the token says it was issued at {_iso(iat)}, which is in the future")
        return float(exp)

    def expired(self, caller: Caller) -> str | None:
        """Why a caller's token is no longer valid, or None while it still is."""
        if caller.expires_at is not None and self.clock.time() > caller.expires_at + self.leeway:
            return f"the token expired at {_iso(caller.expires_at)}; authenticate again with a new token"
        return None


def _unverified_parts(token: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(token, str) or not token:
        raise Unauthenticated("the token is empty")
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
    if token.count(".") != 2:
        raise Unauthenticated("the token is not a JWT (three base64url parts separated by dots)")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"the token is not a valid JWT: {exc}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise Unauthenticated("the token is not a valid JWT: its header and claims must be JSON objects")
    return header, claims


def _algorithm_refusal(alg: Any) -> str:
    accepted = " or ".join(SUPPORTED_ALGORITHMS)
    if alg is None:
        return f"the token's header has no 'alg'; tokens must be signed with {accepted}"
    if isinstance(alg, str) and alg.lower() == "none":
        return f"unsigned tokens (alg 'none') are never accepted; tokens must be signed with {accepted}"
    if isinstance(alg, str) and alg.upper().startswith("HS"):
        return f"tokens signed with a shared secret ({alg}) are not accepted; tokens must be signed with {accepted}"
    return f"the token's algorithm {alg!r} is not accepted; tokens must be signed with {accepted}"


def _check_audience(claims: dict[str, Any], provider: Provider) -> None:
    if not provider.audiences:
        return
    aud = claims.get("aud")
    wanted = ", ".join(provider.audiences)
    if aud is None:
        raise Unauthenticated(f"the token has no audience ('aud'); issuer {provider.issuer} is configured for {wanted}")
    given = [aud] if isinstance(aud, str) else aud
    if not isinstance(given, list) or not all(isinstance(a, str) for a in given):
        raise Unauthenticated("the token's audience ('aud') must be a string or a list of strings")
    if not set(given) & set(provider.audiences):
        raise Unauthenticated(f"the token is for audience {', '.join(given) or 'none'}, not {wanted}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _iso(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:g} s after the epoch"
