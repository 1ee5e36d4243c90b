"""Helpers for the auth tests: a node served in this process (so tests can advance its clock), an
identity provider serving its JWKS from a real HTTP server on 127.0.0.1, and token forging."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from corral.engine.clock import Clock
from tests.conftest import CHAT, free_port, make_settings

# -- a node in this process -------------------------------------------------------------------------


@dataclass
class ServedNode:
    node: Any
    url: str
    clock: Clock

    @property
    def admin_key(self) -> str:
        return str(self.node.admin_key)

    def call(self, kind: str, path: str, args: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}/api/{kind}", content=orjson.dumps({"path": path, "args": args or {}}),
                          headers={"content-type": "application/json", **(headers or {})}, timeout=10)

    def whoami(self, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.call("query", "auth:whoami", {}, headers)

    def admin(self, method: str, route: str, body: Any = None, key: str | None = None) -> httpx.Response:
        return httpx.request(method, self.url + route, json=body, timeout=10,
                             headers={"authorization": f"Convex {key or self.admin_key}"})


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextmanager
def serve_node(data_dir: Path, *, functions: Path | None = CHAT, database_url: str | None = None,
               clock: Clock | None = None, **settings: Any) -> Iterator[ServedNode]:
    """A started node serving HTTP and the sync socket on a free port, in a thread of this process."""
    from corral.node import Node

    port = free_port()
    clock = clock or Clock()
    node = Node(make_settings(data_dir, database_url, functions, port=port, **settings), clock=clock)
    node.start()
    ready = threading.Event()
    server = _Server(uvicorn.Config(node.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                    ws="websockets-sansio"), ready)
    thread = threading.Thread(target=server.run, name=f"corral-test-node-{port}", daemon=True)
    thread.start()
    try:
        if not ready.wait(30) or not server.started:
            raise RuntimeError(f"the in-process node did not start on port {port}")
        yield ServedNode(node, f"http://127.0.0.1:{port}", clock)
    finally:
        server.should_exit = True
        thread.join(15)
        node.stop()


# -- an identity provider -----------------------------------------------------------------------------


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @property
    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        jwk = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    @property
    def public_pem(self) -> bytes:
        return bytes(self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def b64url(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return b64url(json.dumps(header)) + "." + b64url(json.dumps(claims))


@dataclass
class IdentityProvider:
    """An OIDC issuer whose discovery document and JWKS a real HTTP server on 127.0.0.1 serves."""

    url: str = ""
    keys: list[SigningKey] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)
    failing: bool = False
    audience: str = "corral-tests"

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks.json"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk for k in self.keys]}

    def claims(self, now: float, **overrides: Any) -> dict[str, Any]:
        claims = {"iss": self.issuer, "sub": "user-42", "aud": self.audience, "iat": int(now), "exp": int(now) + 600,
                  "name": "Ada Lovelace", "email": "ada@example.com"}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, now: float, key: SigningKey | None = None, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        key = key or self.keys[0]
        return jwt.encode(self.claims(now, **claims), key.private, algorithm=key.alg,
                          headers={"kid": key.kid, **(headers or {})})

    def provider(self, **extra: Any) -> dict[str, Any]:
        return {"issuer": self.issuer, "jwks_url": self.jwks_url, "audience": self.audience,
                "algorithms": ["RS256", "ES256"], **extra}


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = unsigned(header, claims)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


@contextmanager
def identity_provider(*keys: SigningKey) -> Iterator[IdentityProvider]:
    provider = IdentityProvider(keys=list(keys) or [rsa_key("k1")])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            provider.hits[self.path] = provider.hits.get(self.path, 0) + 1
            if provider.failing:
                body, status = b'{"error": "down"}', 503
            elif self.path == "/jwks.json":
                body, status = json.dumps(provider.jwks()).encode(), 200
            elif self.path == "/.well-known/openid-configuration":
                body, status = json.dumps({"issuer": provider.issuer, "jwks_uri": provider.jwks_url}).encode(), 200
            else:
                body, status = b"{}", 404
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
