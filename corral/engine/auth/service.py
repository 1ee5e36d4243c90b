"""Auth on a node: its own issuer, the trusted providers, API keys, and their HTTP endpoints.

Public, under the issuer (`<node URL>/api/auth` unless `auth_issuer` says otherwise):

    GET  /api/auth/.well-known/openid-configuration   OIDC discovery
    GET  /api/auth/jwks.json                          the node's public signing key

Admin only (`Authorization: Convex <admin key>`), what `corral token` and `corral api-key` use:

    POST /api/auth/tokens                     {"subject", "name"?, "email"?, "ttl"?, "claims"?} → {"token", "expiresAt"}
    GET  /api/auth/api_keys                   → {"keys": [{id, name, kind, hint, created, revoked}]}
    POST /api/auth/api_keys                   {"name", "kind"?} → {"key", id, name, kind, hint, created}
    POST /api/auth/api_keys/revoke            {"key": id | name | the key} → {id, …, "revoked", "alreadyRevoked"}
    POST /api/auth/login_links                {"subject"?, "name"?, "email"?} → {"url", "expiresAt"} (default: the local user)

Sign-in (corral/engine/auth/sessions.py; public, the ticket or refresh token is the credential):

    POST /api/auth/session                    {"ticket"} → {"token", "expiresAt", "refreshToken", "refreshExpiresAt", …}
    POST /api/auth/session/refresh            {"refreshToken"} → {"token", "expiresAt", …}
    POST /api/auth/session/sign_out           {"refreshToken"} → {}
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..clock import Clock
from ..errors import BadRequest, ConfigError, CorralError, Unauthenticated
from ..settings import Settings
from ..storage import Store
from .api_keys import ApiKeys
from .authenticator import Authenticator
from .callers import Caller
from .sessions import Sessions
from .tokens import (
    DISCOVERY_PATH,
    JWKS_PATH,
    SIGNING_KEY_META,
    LocalSigner,
    TokenVerifier,
    parse_providers,
)

ISSUER_PATH = "/api/auth"
MAX_BODY = 64 * 1024


ISSUER_META = "auth_issuer"


def default_issuer(node_url: str) -> str:
    """The issuer URL a node used before issuers were stable (ADR 0013): kept for those databases."""
    return node_url.rstrip("/") + ISSUER_PATH


def new_deployment_issuer() -> str:
    return "urn:corral:" + uuid.uuid4().hex


class AuthService:
    """Everything auth a node needs, built at construction (bad settings fail early) and started with the store."""

    def __init__(self, settings: Settings, store: Store, clock: Clock, node_url: str) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.node_url = node_url.rstrip("/")
        self.providers = parse_providers(settings.auth_providers)
        # The issuer is the deployment's, not the node URL's: a change of port or host keeps every
        # identity (tokenIdentifier = issuer|subject) and so every membership (ADR 0013).
        self.issuer = (settings.auth_issuer or "").rstrip("/")
        if settings.auth_issuer is not None and not self.issuer.startswith(("http://", "https://")):
            raise ConfigError(f"setting 'auth_issuer' must be an http:// or https:// URL, not {self.issuer!r}")
        self._check_own_issuer()
        self.api_keys = ApiKeys(store, clock)
        self.signer: LocalSigner | None = None
        self.verifier: TokenVerifier | None = None
        self.sessions: Sessions | None = None

    def _check_own_issuer(self) -> None:
        if self.issuer and any(p.issuer.rstrip("/") == self.issuer for p in self.providers):
            raise ConfigError(f"auth_providers configures {self.issuer}, which is this node's own issuer; "
                              "remove that entry, or set auth_issuer to another URL")

    def start(self) -> None:
        """Load (or, on a new database, create) the issuer and its signing key; make sure the key table exists."""
        if not self.issuer:
            had_key = self.store.get_meta(SIGNING_KEY_META) is not None
            # A database from before ADR 0013 keeps the issuer its tokens were signed as.
            first = default_issuer(self.node_url) if had_key else new_deployment_issuer()
            self.issuer = self.store.set_meta_if_absent(ISSUER_META, first)
            self._check_own_issuer()
        record = self.store.set_meta_if_absent(SIGNING_KEY_META, LocalSigner.new_key_record())
        self.signer = LocalSigner.from_record(self.issuer, record, jwks_base=self.node_url + ISSUER_PATH)
        self.sessions = Sessions(self.signer, self.store, self.clock, self.settings)
        s = self.settings
        self.verifier = TokenVerifier(self.providers, self.clock, leeway=s.auth_clock_leeway,
                                      cache_ttl=s.auth_jwks_cache_ttl, refetch_interval=s.auth_jwks_refetch_interval,
                                      fetch_timeout=s.auth_jwks_fetch_timeout, local=self.signer)
        self.api_keys.ensure_table()

    def attach(self, authenticator: Authenticator) -> None:
        authenticator.verify_token = self.verify_token
        authenticator.verify_api_key = self.verify_api_key
        authenticator.revalidate = self.revalidate

    # -- hooks of the Authenticator
    async def verify_token(self, token: str) -> Caller:
        if self.verifier is None:
            raise Unauthenticated("this node is not started yet")
        return await self.verifier.verify(token)

    async def verify_api_key(self, secret: str) -> Caller:
        return Caller.api_key(await self.api_keys.verify(secret))

    async def revalidate(self, caller: Caller) -> None:
        """Raise Unauthenticated when a caller's credential stopped being valid (expired, revoked)."""
        if self.verifier is not None:
            reason = self.verifier.expired(caller)
            if reason is not None:
                raise Unauthenticated(reason)
        if caller.machine is not None:
            await self.api_keys.still_valid(caller.machine.id)

    # -- minting
    def mint(self, subject: Any, *, ttl: Any = None, name: Any = None, email: Any = None, claims: Any = None) -> tuple[str, float]:
        """A token from the node's own issuer; returns it and its expiry (seconds since the epoch)."""
        assert self.signer is not None, "start() first"
        if not isinstance(subject, str) or not subject.strip():
            raise BadRequest("a token needs a 'subject': the user's stable id", code="InvalidTokenRequest")
        lifetime = self.settings.auth_token_ttl if ttl is None else ttl
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not lifetime > 0:
            raise BadRequest(f"'ttl' must be a number of seconds above 0, not {lifetime!r}", code="InvalidTokenRequest")
        extra: dict[str, Any] = {}
        if claims is not None:
            if not isinstance(claims, dict):
                raise BadRequest("'claims' must be an object of extra claims", code="InvalidTokenRequest")
            reserved = sorted(set(claims) & {"iss", "sub", "aud", "exp", "iat", "nbf", "jti"})
            if reserved:
                raise BadRequest(f"'claims' may not set {', '.join(reserved)}: Corral sets those itself", code="InvalidTokenRequest")
            extra.update(claims)
        for claim, value in (("name", name), ("email", email)):
            if value is not None:
                if not isinstance(value, str):
                    raise BadRequest(f"'{claim}' must be a string", code="InvalidTokenRequest")
                extra[claim] = value
        now = self.clock.time()
        token = self.signer.mint(subject.strip(), now=now, ttl=float(lifetime), claims=extra)
        return token, float(int(now + float(lifetime)))

    # -- HTTP
    def routes(self, authenticator: Authenticator) -> list[BaseRoute]:
        # The issuer's documents are served where the issuer URL points on this node: under /api/auth
        # by default, or under the path of an `auth_issuer` whose path also starts with /api/.
        base = urlsplit(self.issuer).path.rstrip("/") or ISSUER_PATH
        if not base.startswith("/api/"):
            base = ISSUER_PATH
        admin = _Admin(self, authenticator)
        routes: list[BaseRoute] = [
            Route(base + DISCOVERY_PATH, self._discovery, methods=["GET"]),
            Route(base + JWKS_PATH, self._jwks, methods=["GET"]),
            Route(ISSUER_PATH + "/tokens", admin.mint, methods=["POST"]),
            Route(ISSUER_PATH + "/api_keys", admin.api_keys, methods=["GET", "POST"]),
            Route(ISSUER_PATH + "/api_keys/revoke", admin.revoke, methods=["POST"]),
            Route(ISSUER_PATH + "/login_links", admin.login_link, methods=["POST"]),
            Route(ISSUER_PATH + "/session", self._session, methods=["POST"]),
            Route(ISSUER_PATH + "/session/refresh", self._session, methods=["POST"]),
            Route(ISSUER_PATH + "/session/sign_out", self._session, methods=["POST"]),
        ]
        if base != ISSUER_PATH:
            routes += [Route(ISSUER_PATH + DISCOVERY_PATH, self._discovery, methods=["GET"]),
                       Route(ISSUER_PATH + JWKS_PATH, self._jwks, methods=["GET"])]
        return routes

    def login_link(self, subject: Any = None, *, name: Any = None, email: Any = None) -> tuple[str, float]:
        """A one-time sign-in link to the console; without a subject, for the node's local user."""
        assert self.sessions is not None, "start() first"
        if subject is None:
            subject, name = self.settings.auth_local_subject, name or _local_name()
        ticket, expires = self.sessions.ticket(subject, name=name, email=email)
        return f"{self.node_url}/#login={ticket}", expires

    async def _session(self, request: Request) -> Response:
        assert self.sessions is not None
        try:
            body = await _read_body(request)
            action = request.url.path.rsplit("/", 1)[-1]
            if action == "session":
                return _json(await self.sessions.exchange(body.get("ticket")))
            if action == "refresh":
                return _json(await self.sessions.refresh(body.get("refreshToken")))
            await self.sessions.sign_out(body.get("refreshToken"))
            return _json({})
        except Unauthenticated as exc:
            return _json({"code": "Unauthenticated", "message": exc.message}, 401)
        except CorralError as exc:
            return _error(exc)

    async def _discovery(self, request: Request) -> Response:
        assert self.signer is not None
        return _json(self.signer.discovery())

    async def _jwks(self, request: Request) -> Response:
        assert self.signer is not None
        return _json(self.signer.jwks())


class _Admin:
    """The admin-only endpoints behind `corral token mint` and `corral api-key`."""

    def __init__(self, service: AuthService, authenticator: Authenticator) -> None:
        self.service = service
        self.authenticator = authenticator

    async def _guard(self, request: Request) -> Response | None:
        try:
            caller = await self.authenticator.from_headers(request.headers)
        except Unauthenticated as exc:
            return _json({"code": "Unauthenticated", "message": exc.message}, 401)
        except CorralError as exc:
            return _error(exc)
        if not caller.is_admin:
            return _json({"code": "Unauthorized", "message": f"{request.url.path} needs the admin key (Authorization: Convex <admin key>)"}, 403)
        return None

    async def _body(self, request: Request) -> dict[str, Any]:
        return await _read_body(request)

    async def login_link(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        try:
            body = await self._body(request)
            url, expires = self.service.login_link(body.get("subject"), name=body.get("name"), email=body.get("email"))
        except CorralError as exc:
            return _error(exc)
        return _json({"url": url, "expiresAt": expires})

    async def mint(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        try:
            body = await self._body(request)
            token, expires = self.service.mint(body.get("subject"), ttl=body.get("ttl"), name=body.get("name"),
                                               email=body.get("email"), claims=body.get("claims"))
        except CorralError as exc:
            return _error(exc)
        return _json({"token": token, "expiresAt": expires, "issuer": self.service.issuer})

    async def api_keys(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        keys = self.service.api_keys
        try:
            if request.method == "GET":
                return _json({"keys": [r.public() for r in await keys.list()]})
            body = await self._body(request)
            secret, record = await keys.create(body.get("name"), body.get("kind", "client"))
        except CorralError as exc:
            return _error(exc)
        return _json({"key": secret, **record.public()})

    async def revoke(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        try:
            body = await self._body(request)
            record, revoked_now = await self.service.api_keys.revoke(body.get("key"))
        except CorralError as exc:
            return _error(exc)
        return _json({**record.public(), "alreadyRevoked": not revoked_now})


async def _read_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest(f"request body is over {MAX_BODY} bytes", code="RequestTooLarge")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="BadJsonBody") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="BadJsonBody")
    return body


def _local_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "local user"


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(exc: CorralError) -> Response:
    status = exc.http_status if 400 <= exc.http_status < 600 else 400
    return _json({"code": exc.code, "message": exc.message}, status)
