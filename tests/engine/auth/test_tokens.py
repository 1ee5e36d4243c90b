"""User tokens from an external OIDC provider: identities, every forgery refused, expiry, key rotation.

The provider is a real HTTP server on 127.0.0.1 serving a JWKS; the node runs in this process so
the tests advance its clock instead of sleeping."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from corral.engine.clock import Clock
from corral.engine.errors import ConfigError
from corral.engine.settings import Settings
from tests.conftest import free_port
from tests.engine.auth_helpers import (
    IdentityProvider,
    ServedNode,
    b64url,
    ec_key,
    hs256,
    identity_provider,
    rsa_key,
    serve_node,
    unsigned,
)
from tests.engine.sync_client import SyncClient

LEEWAY = 10.0
REFETCH = 60.0
CACHE_TTL = 3600.0


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    with identity_provider(rsa_key("k1"), ec_key("e1")) as provider:
        yield provider


@pytest.fixture
def served(tmp_path: Path, idp: IdentityProvider) -> Iterator[ServedNode]:
    with serve_node(tmp_path / "data", auth_providers=[idp.provider()], auth_clock_leeway=LEEWAY,
                    auth_jwks_refetch_interval=REFETCH, auth_jwks_cache_ttl=CACHE_TTL) as node:
        yield node


@pytest.fixture(scope="module")
def shared_idp() -> Iterator[IdentityProvider]:
    with identity_provider(rsa_key("k1"), ec_key("e1")) as provider:
        yield provider


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, shared_idp: IdentityProvider) -> Iterator[ServedNode]:
    """One node for the tests that only read and never move its clock."""
    with serve_node(tmp_path_factory.mktemp("shared") / "data", auth_providers=[shared_idp.provider()],
                    auth_clock_leeway=LEEWAY) as node:
        yield node


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def refused(response: Any, fragment: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "Unauthenticated"
    assert fragment in body["message"], body["message"]


# -- accepted tokens -------------------------------------------------------------------------------

def test_a_valid_token_gives_convex_identity_over_http(served: ServedNode, idp: IdentityProvider) -> None:
    token = idp.token(served.clock.time(), picture="https://img.example/ada.png", email_verified=True,
                      org_id="acme", **{"https://example.com/roles": ["admin"]})
    response = served.whoami(bearer(token))
    assert response.status_code == 200, response.text
    identity = response.json()["value"]
    assert identity == {
        "tokenIdentifier": f"{idp.issuer}|user-42",
        "subject": "user-42",
        "issuer": idp.issuer,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "emailVerified": True,
        "pictureUrl": "https://img.example/ada.png",
        "org_id": "acme",
        "https://example.com/roles": ["admin"],
    }


def test_es256_tokens_and_audience_lists_are_accepted(served: ServedNode, idp: IdentityProvider) -> None:
    token = idp.token(served.clock.time(), key=idp.keys[1], aud=["other-api", idp.audience])
    assert served.whoami(bearer(token)).json()["value"]["subject"] == "user-42"


def test_anonymous_callers_have_no_identity(served: ServedNode) -> None:
    assert served.whoami().json() == {"status": "success", "value": None}


def test_a_signed_in_user_sends_chat_messages_under_their_name(served: ServedNode, idp: IdentityProvider) -> None:
    token = idp.token(served.clock.time())
    assert served.call("mutation", "messages:send", {"body": "hi"}, bearer(token)).json()["status"] == "success"
    assert served.call("mutation", "messages:send", {"body": "yo", "author": "bob"}).json()["status"] == "success"
    listed = served.call("query", "messages:list").json()["value"]
    assert [(m["author"], m["body"]) for m in listed] == [("Ada Lovelace", "hi"), ("bob", "yo")]


def test_a_valid_token_over_the_socket(served: ServedNode, idp: IdentityProvider) -> None:
    client = SyncClient(served.url)
    client.send({"type": "Authenticate", "tokenType": "User", "value": idp.token(served.clock.time()), "baseVersion": 0})
    client.recv_until(lambda m: m["type"] == "Transition" and m["endVersion"]["identity"] == 1)
    q = client.subscribe("auth:whoami")
    client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
    assert client.results[q]["tokenIdentifier"] == f"{idp.issuer}|user-42"
    client.close()


# -- forged and invalid tokens -----------------------------------------------------------------------

Forgery = Callable[[IdentityProvider, float], str]
ATTACKER_RSA = rsa_key("k1")  # claims the provider's kid, but it is not the provider's key
ATTACKER_EC = ec_key("k1")

FORGERIES: dict[str, tuple[Forgery, str]] = {
    "signed by an unknown key": (
        lambda idp, now: idp.token(now, key=ATTACKER_RSA), "signature does not verify"),
    "alg none": (
        lambda idp, now: unsigned({"alg": "none", "kid": "k1", "typ": "JWT"}, idp.claims(now)) + ".",
        "alg 'none'"),
    "alg NONE with a signature": (
        lambda idp, now: unsigned({"alg": "NONE", "kid": "k1"}, idp.claims(now)) + ".c2ln",
        "alg 'none'"),
    "HS256 signed with the public key": (
        lambda idp, now: hs256({"alg": "HS256", "kid": "k1", "typ": "JWT"}, idp.claims(now), idp.keys[0].public_pem),
        "shared secret (HS256)"),
    "HS256 signed with the public JWK": (
        lambda idp, now: hs256({"alg": "HS256", "kid": "k1"}, idp.claims(now), json.dumps(idp.keys[0].public_jwk).encode()),
        "shared secret (HS256)"),
    "expired": (
        lambda idp, now: idp.token(now, iat=int(now) - 7200, exp=int(now) - 3600), "expired at"),
    "not yet valid": (
        lambda idp, now: idp.token(now, nbf=int(now) + 3600), "not valid yet"),
    "issued in the future": (
        lambda idp, now: idp.token(now, iat=int(now) + 3600, exp=int(now) + 7200), "in the future"),
    "wrong issuer": (
        lambda idp, now: idp.token(now, iss="https://evil.example"), "'https://evil.example' is not one this node trusts"),
    "no issuer": (
        lambda idp, now: idp.token(now, iss=None), "names no issuer"),
    "wrong audience": (
        lambda idp, now: idp.token(now, aud="someone-else"), "for audience someone-else, not corral-tests"),
    "no audience": (
        lambda idp, now: idp.token(now, aud=None), "has no audience"),
    "unknown kid": (
        lambda idp, now: idp.token(now, key=rsa_key("k-rogue")), "key 'k-rogue', which is not one of issuer"),
    "no expiry": (
        lambda idp, now: idp.token(now, exp=None), "no expiry"),
    "no subject": (
        lambda idp, now: idp.token(now, sub=None), "subject"),
    "ES256 with the kid of an RSA key": (
        lambda idp, now: idp.token(now, key=ATTACKER_EC), "RSA key, which cannot check an ES256 signature"),
    "unsupported algorithm RS384": (
        lambda idp, now: unsigned({"alg": "RS384", "kid": "k1"}, idp.claims(now)) + ".c2ln", "'RS384' is not accepted"),
    "altered claims": (
        lambda idp, now: _swap_claims(idp.token(now), idp.claims(now, sub="someone-else")), "signature does not verify"),
    "an unsupported critical extension": (
        lambda idp, now: idp.token(now, headers={"crit": ["exp"], "exp": 1}), "Unsupported critical extension"),
    "garbage": (lambda idp, now: "garbage", "not a JWT"),
    "three garbage parts": (lambda idp, now: "a.b.c", "not a valid JWT"),
    "JSON that is not an object": (lambda idp, now: "WzFd.WzFd.c2ln", "not a valid JWT"),
    "empty signature segment": (lambda idp, now: "e30.e30.", "alg"),
}


def _swap_claims(token: str, claims: dict[str, Any]) -> str:
    header, _payload, signature = token.split(".")
    return f"{header}.{b64url(json.dumps(claims))}.{signature}"


@pytest.mark.parametrize("case", list(FORGERIES), ids=list(FORGERIES))
def test_a_forged_token_is_refused_over_http_with_no_identity(shared: ServedNode, shared_idp: IdentityProvider, case: str) -> None:
    served, idp = shared, shared_idp
    forge, fragment = FORGERIES[case]
    token = forge(idp, served.clock.time())
    refused(served.whoami(bearer(token)), fragment)
    # Nothing ran as anyone: the mutation wrote nothing.
    refused(served.call("mutation", "messages:send", {"body": "forged"}, bearer(token)), fragment)
    assert served.call("query", "messages:list").json()["value"] == []


@pytest.mark.parametrize("case", list(FORGERIES), ids=list(FORGERIES))
def test_a_forged_token_gets_auth_error_over_the_socket(shared: ServedNode, shared_idp: IdentityProvider, case: str) -> None:
    served, idp = shared, shared_idp
    forge, fragment = FORGERIES[case]
    client = SyncClient(served.url)
    client.send({"type": "Authenticate", "tokenType": "User", "value": forge(idp, served.clock.time()), "baseVersion": 0})
    error = client.recv_until(lambda m: m["type"] == "AuthError")
    assert fragment in error["error"]
    assert error["baseVersion"] == 0 and error["authUpdateAttempted"] is True
    q = client.subscribe("auth:whoami")
    client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
    assert client.results[q] is None
    assert client.version["identity"] == 0
    client.close()


def test_an_algorithm_outside_the_providers_list_is_refused(tmp_path: Path, idp: IdentityProvider) -> None:
    with serve_node(tmp_path / "d", auth_providers=[idp.provider(algorithms=["RS256"])]) as node:
        token = idp.token(node.clock.time(), key=idp.keys[1])  # ES256, with the provider's own EC key
        refused(node.whoami(bearer(token)), "configured for RS256; a token signed with ES256 is not accepted")
        assert node.whoami(bearer(idp.token(node.clock.time()))).status_code == 200


# -- time ----------------------------------------------------------------------------------------------

def test_a_token_stops_working_when_it_expires(served: ServedNode, idp: IdentityProvider) -> None:
    token = idp.token(served.clock.time(), exp=int(served.clock.time()) + 60)
    assert served.whoami(bearer(token)).status_code == 200
    served.clock.advance(60 + LEEWAY / 2)  # past exp, within the leeway
    assert served.whoami(bearer(token)).status_code == 200
    served.clock.advance(LEEWAY)
    refused(served.whoami(bearer(token)), "expired at")


def test_a_token_becomes_valid_at_nbf(served: ServedNode, idp: IdentityProvider) -> None:
    token = idp.token(served.clock.time(), nbf=int(served.clock.time()) + 300, exp=int(served.clock.time()) + 900)
    refused(served.whoami(bearer(token)), "not valid yet")
    served.clock.advance(300)
    assert served.whoami(bearer(token)).status_code == 200


def test_a_socket_whose_token_expires_gets_auth_error_on_its_next_request(served: ServedNode, idp: IdentityProvider) -> None:
    client = SyncClient(served.url)
    token = idp.token(served.clock.time(), exp=int(served.clock.time()) + 60)
    client.send({"type": "Authenticate", "tokenType": "User", "value": token, "baseVersion": 0})
    client.recv_until(lambda m: m["type"] == "Transition" and m["endVersion"]["identity"] == 1)
    assert client.mutation("messages:send", {"body": "in time"})["success"] is True

    served.clock.advance(60 + LEEWAY + 1)
    client.send({"type": "Mutation", "requestId": 99, "udfPath": "messages:send", "args": [{"body": "too late"}]})
    error = client.recv_until(lambda m: m["type"] == "AuthError")
    assert "expired" in error["error"]
    assert error["authUpdateAttempted"] is False and error["baseVersion"] == 1
    with pytest.raises(ConnectionClosed):
        client.recv_until(lambda m: False, timeout=30)
    bodies = [m["body"] for m in served.call("query", "messages:list").json()["value"]]
    assert bodies == ["in time"]


# -- keys: fetching, caching, rotation -------------------------------------------------------------------

def test_keys_are_fetched_once_and_cached(served: ServedNode, idp: IdentityProvider) -> None:
    for _ in range(5):
        assert served.whoami(bearer(idp.token(served.clock.time()))).status_code == 200
    assert idp.hits.get("/jwks.json") == 1


def test_a_rotated_key_is_picked_up_by_its_kid(served: ServedNode, idp: IdentityProvider) -> None:
    assert served.whoami(bearer(idp.token(served.clock.time()))).status_code == 200
    served.clock.advance(REFETCH)
    new = rsa_key("k2")
    idp.keys.append(new)
    response = served.whoami(bearer(idp.token(served.clock.time(), key=new)))
    assert response.status_code == 200, response.text
    assert idp.hits["/jwks.json"] == 2


def test_unknown_kids_refetch_the_keys_at_most_once_per_interval(served: ServedNode, idp: IdentityProvider) -> None:
    assert served.whoami(bearer(idp.token(served.clock.time()))).status_code == 200
    served.clock.advance(REFETCH)
    for n in range(5):
        refused(served.whoami(bearer(idp.token(served.clock.time(), key=rsa_key(f"rogue-{n}")))), "not one of issuer")
    assert idp.hits["/jwks.json"] == 2  # the first fetch, then one refetch for the first unknown kid
    late = rsa_key("k-late")
    idp.keys.append(late)
    refused(served.whoami(bearer(idp.token(served.clock.time(), key=late))), "not one of issuer")  # rate-limited
    served.clock.advance(REFETCH)
    assert served.whoami(bearer(idp.token(served.clock.time(), key=late))).status_code == 200


def test_a_key_removed_by_the_provider_stops_working_once_the_cache_expires(served: ServedNode, idp: IdentityProvider) -> None:
    assert served.whoami(bearer(idp.token(served.clock.time()))).status_code == 200
    old = idp.keys.pop(0)
    assert served.whoami(bearer(idp.token(served.clock.time(), key=old))).status_code == 200  # cached
    served.clock.advance(CACHE_TTL)
    refused(served.whoami(bearer(idp.token(served.clock.time(), key=old))), "not one of issuer")


def test_cached_keys_outlive_a_provider_outage(served: ServedNode, idp: IdentityProvider) -> None:
    assert served.whoami(bearer(idp.token(served.clock.time()))).status_code == 200
    idp.failing = True
    served.clock.advance(CACHE_TTL)
    assert served.whoami(bearer(idp.token(served.clock.time()))).status_code == 200


def test_an_unreachable_jwks_is_a_clear_401(tmp_path: Path, idp: IdentityProvider) -> None:
    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    with serve_node(tmp_path / "d", auth_providers=[idp.provider(jwks_url=dead)]) as node:
        response = node.whoami(bearer(idp.token(node.clock.time())))
        refused(response, f"cannot fetch the keys (JWKS) of issuer {idp.issuer} from {dead}")


def test_a_failing_jwks_is_a_clear_401_and_is_not_hammered(tmp_path: Path, idp: IdentityProvider) -> None:
    idp.failing = True
    with serve_node(tmp_path / "d", auth_providers=[idp.provider()], auth_jwks_refetch_interval=REFETCH) as node:
        for _ in range(3):
            refused(node.whoami(bearer(idp.token(node.clock.time()))), "HTTP 503")
        assert idp.hits["/jwks.json"] == 1
        idp.failing = False
        node.clock.advance(REFETCH)
        assert node.whoami(bearer(idp.token(node.clock.time()))).status_code == 200


def test_a_provider_given_only_its_issuer_is_discovered(tmp_path: Path, idp: IdentityProvider) -> None:
    with serve_node(tmp_path / "d", auth_providers=[{"issuer": idp.issuer, "audience": idp.audience}]) as node:
        assert node.whoami(bearer(idp.token(node.clock.time()))).json()["value"]["issuer"] == idp.issuer
    assert idp.hits == {"/.well-known/openid-configuration": 1, "/jwks.json": 1}


def test_a_provider_with_inline_keys_needs_no_server(tmp_path: Path) -> None:
    key = rsa_key("inline-1")
    provider = IdentityProvider(url="https://auth.example.com", keys=[key])
    config = {"issuer": provider.issuer, "jwks": json.dumps(provider.jwks()), "audience": provider.audience}
    with serve_node(tmp_path / "d", auth_providers=[config]) as node:
        identity = node.whoami(bearer(provider.token(node.clock.time()))).json()["value"]
        assert identity["tokenIdentifier"] == "https://auth.example.com|user-42"
        refused(node.whoami(bearer(provider.token(node.clock.time(), key=rsa_key("other")))), "not one of issuer")


# -- configuration ----------------------------------------------------------------------------------------

BAD_PROVIDERS = [
    ({"jwks_url": "https://x/jwks.json"}, "needs an 'issuer'"),
    ("https://auth.example.com", "must be an object"),
    ({"issuer": "https://a", "jwks_url": "ftp://a/jwks"}, "'jwks_url' must be an http:// or https:// URL"),
    ({"issuer": "https://a", "algorithms": ["HS256"]}, "'algorithms' must list some of RS256, ES256"),
    ({"issuer": "https://a", "algorithms": ["none"]}, "'algorithms' must list some of RS256, ES256"),
    ({"issuer": "https://a", "audience": 5}, "'audience' must be a string or a list of strings"),
    ({"issuer": "https://a", "jwks": "{not json"}, "'jwks' is not valid JSON"),
    ({"issuer": "https://a", "jwks": {"keys": []}}, "holds no RSA or EC signing key"),
    ({"issuer": "https://a", "jwks": {"keys": [{"kty": "RSA", "kid": "x", "n": "zz"}]}}, "cannot be read"),
    ({"issuer": "https://a", "jwks_url": "https://a/j", "jwks": {"keys": []}}, "not both"),
    ({"issuer": "my-issuer"}, "only an http(s) issuer can be discovered"),
    ({"issuer": "https://a", "domain": "x"}, "unknown field(s) domain"),
    ({"issuer": "api-key", "jwks": {"keys": []}}, "issuer of API-key identities"),
]


@pytest.mark.parametrize(("entry", "message"), BAD_PROVIDERS)
def test_a_bad_provider_stops_the_node_from_starting_with_a_clear_message(tmp_path: Path, entry: Any, message: str) -> None:
    from corral.node import Node
    from tests.conftest import make_settings

    with pytest.raises(ConfigError) as caught:
        Node(make_settings(tmp_path, auth_providers=[entry]))
    assert message in caught.value.message


def test_the_same_issuer_twice_is_refused(tmp_path: Path) -> None:
    from corral.node import Node
    from tests.conftest import make_settings

    entry = {"issuer": "https://a", "jwks_url": "https://a/jwks.json"}
    with pytest.raises(ConfigError, match="repeats an issuer"):
        Node(make_settings(tmp_path, auth_providers=[entry, entry]))


def test_providers_come_from_the_environment_as_json(tmp_path: Path, idp: IdentityProvider) -> None:
    settings = Settings.load(environ={"CORRAL_AUTH_PROVIDERS": json.dumps([idp.provider()]),
                                      "CORRAL_AUTH_JWKS_CACHE_TTL": "120", "CORRAL_CONFIG": str(tmp_path / "none.toml")})
    assert settings.auth_providers == [idp.provider()]
    assert settings.auth_jwks_cache_ttl == 120.0
    with pytest.raises(ConfigError, match="auth_providers"):
        Settings.load(environ={"CORRAL_AUTH_PROVIDERS": "{not json", "CORRAL_CONFIG": str(tmp_path / "none.toml")})
    with pytest.raises(ConfigError, match="expected a list"):
        Settings.load(environ={"CORRAL_AUTH_PROVIDERS": '{"issuer": "x"}', "CORRAL_CONFIG": str(tmp_path / "none.toml")})


def test_providers_come_from_corral_toml(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text('auth_token_ttl = 900\n\n[[auth_providers]]\nissuer = "https://auth.example.com/"\n'
                      'audience = "my-app"\nalgorithms = ["RS256"]\n')
    settings = Settings.load(environ={"CORRAL_CONFIG": str(config)})
    assert settings.auth_providers == [{"issuer": "https://auth.example.com/", "audience": "my-app", "algorithms": ["RS256"]}]
    assert settings.auth_token_ttl == 900.0


def test_a_node_without_providers_still_refuses_foreign_tokens(tmp_path: Path, idp: IdentityProvider) -> None:
    with serve_node(tmp_path / "d", clock=Clock()) as node:
        refused(node.whoami(bearer(idp.token(node.clock.time()))), "is not one this node trusts")
