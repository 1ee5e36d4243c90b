"""The node as its own issuer: minted tokens, its OIDC metadata and JWKS, its key kept in the database."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from corral.engine.clock import Clock
from corral.engine.errors import ConfigError
from tests.engine.auth_helpers import ServedNode, b64url, ec_key, serve_node
from tests.engine.sync_client import SyncClient

ISSUER = "http://corral.test/api/auth"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedNode]:
    with serve_node(tmp_path / "data", auth_token_ttl=120.0, auth_clock_leeway=5.0) as node:
        yield node


def mint(node: ServedNode, **body: object) -> str:
    response = node.admin("POST", "/api/auth/tokens", {"subject": "ada", **body})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_the_node_publishes_its_issuer_metadata_and_keys(served: ServedNode) -> None:
    discovery = httpx.get(served.url + "/api/auth/.well-known/openid-configuration")
    assert discovery.status_code == 200
    metadata = discovery.json()
    assert metadata["issuer"].startswith("urn:corral:")  # the deployment's, not the node URL's (ADR 0013)
    assert metadata["jwks_uri"] == served.url + "/api/auth/jwks.json"
    assert metadata["id_token_signing_alg_values_supported"] == ["ES256"]
    keys = httpx.get(metadata["jwks_uri"]).json()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "EC" and keys[0]["alg"] == "ES256" and keys[0]["kid"]
    assert "d" not in keys[0]  # the public half only


def test_a_minted_token_verifies_anywhere_with_the_published_keys(served: ServedNode) -> None:
    token = mint(served, name="Ada Lovelace", email="ada@example.com")
    metadata = httpx.get(served.url + "/api/auth/.well-known/openid-configuration").json()
    jwks = jwt.PyJWKClient(metadata["jwks_uri"])
    claims = jwt.decode(token, jwks.get_signing_key_from_jwt(token).key, algorithms=["ES256"],
                        audience="corral", issuer=metadata["issuer"])
    assert claims["sub"] == "ada" and claims["name"] == "Ada Lovelace"
    assert claims["exp"] - claims["iat"] == 120


def test_a_minted_token_is_the_users_identity(served: ServedNode) -> None:
    token = mint(served, name="Ada Lovelace", email="ada@example.com", claims={"team": "engines", "level": 3})
    identity = served.whoami(bearer(token)).json()["value"]
    issuer = jwt.decode(token, options={"verify_signature": False})["iss"]
    assert issuer.startswith("urn:corral:")
    assert identity == {"tokenIdentifier": f"{issuer}|ada", "subject": "ada", "issuer": issuer,
                        "name": "Ada Lovelace", "email": "ada@example.com", "team": "engines", "level": 3}


def test_a_minted_token_lasts_its_ttl(served: ServedNode) -> None:
    default = mint(served)
    short = mint(served, ttl=30)
    served.clock.advance(30 + 5 + 1)
    assert served.whoami(bearer(short)).status_code == 401
    assert served.whoami(bearer(default)).status_code == 200
    served.clock.advance(120)
    response = served.whoami(bearer(default))
    assert response.status_code == 401 and "expired" in response.json()["message"]


def test_a_minted_token_authenticates_a_socket(served: ServedNode) -> None:
    client = SyncClient(served.url)
    client.send({"type": "Authenticate", "tokenType": "User", "value": mint(served, name="Ada"), "baseVersion": 0})
    client.recv_until(lambda m: m["type"] == "Transition" and m["endVersion"]["identity"] == 1)
    assert client.mutation("messages:send", {"body": "signed"})["success"] is True
    q = client.subscribe("messages:list")
    client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
    assert [(m["author"], m["body"]) for m in client.results[q]] == [("Ada", "signed")]
    client.close()


def test_tokens_signed_by_another_key_with_the_nodes_kid_are_refused(served: ServedNode) -> None:
    real = jwt.decode(mint(served), options={"verify_signature": False})
    kid = httpx.get(served.url + "/api/auth/jwks.json").json()["keys"][0]["kid"]
    forged = jwt.encode(real, ec_key(kid).private, algorithm="ES256", headers={"kid": kid})
    response = served.whoami(bearer(forged))
    assert response.status_code == 401 and "signature does not verify" in response.json()["message"]
    unsigned = b64url(json.dumps({"alg": "none", "kid": kid})) + "." + b64url(json.dumps(real)) + "."
    response = served.whoami(bearer(unsigned))
    assert response.status_code == 401 and "alg 'none'" in response.json()["message"]


def test_another_deployment_with_the_same_issuer_url_cannot_sign_for_this_one(tmp_path: Path) -> None:
    with serve_node(tmp_path / "a", auth_issuer=ISSUER) as a, serve_node(tmp_path / "b", auth_issuer=ISSUER) as b:
        token = mint(a)
        assert a.whoami(bearer(token)).status_code == 200
        response = b.whoami(bearer(token))
        assert response.status_code == 401
        assert "is not one of issuer" in response.json()["message"]


def test_the_signing_key_survives_a_restart(tmp_path: Path) -> None:
    with serve_node(tmp_path / "data", auth_issuer=ISSUER) as first:
        token = mint(first)
        kid = httpx.get(first.url + "/api/auth/jwks.json").json()["keys"][0]["kid"]
    with serve_node(tmp_path / "data", auth_issuer=ISSUER) as second:
        assert httpx.get(second.url + "/api/auth/jwks.json").json()["keys"][0]["kid"] == kid
        assert second.whoami(bearer(token)).json()["value"]["tokenIdentifier"] == f"{ISSUER}|ada"


def test_the_default_issuer_survives_a_change_of_port(tmp_path: Path) -> None:
    with serve_node(tmp_path / "data") as first:
        token = mint(first)
        before = first.whoami(bearer(token)).json()["value"]["tokenIdentifier"]
    with serve_node(tmp_path / "data") as second:  # the same data on another port: the same identities
        assert second.url != first.url
        assert second.whoami(bearer(token)).json()["value"]["tokenIdentifier"] == before
    with serve_node(tmp_path / "other") as third:  # another deployment: another issuer
        response = third.whoami(bearer(token))
        assert response.status_code == 401 and "is not one this node trusts" in response.json()["message"]


def test_a_node_serves_its_issuer_documents_under_a_configured_issuer_path(tmp_path: Path) -> None:
    with serve_node(tmp_path / "data", auth_issuer="https://corral.example.com/api/corral-auth") as node:
        metadata = httpx.get(node.url + "/api/corral-auth/.well-known/openid-configuration").json()
        assert metadata["issuer"] == "https://corral.example.com/api/corral-auth"
        assert metadata["jwks_uri"] == "https://corral.example.com/api/corral-auth/jwks.json"
        assert httpx.get(node.url + "/api/auth/jwks.json").json()["keys"]


@pytest.mark.parametrize(("issuer", "message"), [
    ("corral.test", "must be an http:// or https:// URL"),
    ("ftp://corral.test", "must be an http:// or https:// URL"),
])
def test_a_bad_auth_issuer_is_refused_at_start(tmp_path: Path, issuer: str, message: str) -> None:
    from corral.node import Node
    from tests.conftest import make_settings

    with pytest.raises(ConfigError, match=message):
        Node(make_settings(tmp_path, auth_issuer=issuer))


def test_a_provider_may_not_claim_the_nodes_own_issuer(tmp_path: Path) -> None:
    from corral.node import Node
    from tests.conftest import make_settings

    with pytest.raises(ConfigError, match="this node's own issuer"):
        Node(make_settings(tmp_path, auth_issuer=ISSUER,
                           auth_providers=[{"issuer": ISSUER, "jwks_url": "https://elsewhere/jwks.json"}]))


# -- the admin endpoint behind `corral token mint` -------------------------------------------------------

@pytest.mark.parametrize(("body", "code", "message"), [
    ({}, "InvalidTokenRequest", "needs a 'subject'"),
    ({"subject": "  "}, "InvalidTokenRequest", "needs a 'subject'"),
    ({"subject": 7}, "InvalidTokenRequest", "needs a 'subject'"),
    ({"subject": "ada", "ttl": 0}, "InvalidTokenRequest", "'ttl' must be a number of seconds above 0"),
    ({"subject": "ada", "ttl": -5}, "InvalidTokenRequest", "'ttl' must be a number of seconds above 0"),
    ({"subject": "ada", "ttl": "1h"}, "InvalidTokenRequest", "'ttl' must be a number of seconds above 0"),
    ({"subject": "ada", "ttl": True}, "InvalidTokenRequest", "'ttl' must be a number of seconds above 0"),
    ({"subject": "ada", "name": 5}, "InvalidTokenRequest", "'name' must be a string"),
    ({"subject": "ada", "claims": [1]}, "InvalidTokenRequest", "'claims' must be an object"),
    ({"subject": "ada", "claims": {"iss": "x", "exp": 1}}, "InvalidTokenRequest", "may not set exp, iss"),
    ([1, 2], "BadJsonBody", "must be a JSON object"),
])
def test_bad_mint_requests_get_a_400_saying_why(served: ServedNode, body: object, code: str, message: str) -> None:
    response = served.admin("POST", "/api/auth/tokens", body)
    assert response.status_code == 400
    assert response.json()["code"] == code and message in response.json()["message"]


def test_minting_needs_the_admin_key(served: ServedNode) -> None:
    anonymous = httpx.post(served.url + "/api/auth/tokens", json={"subject": "ada"})
    assert anonymous.status_code == 403 and "admin key" in anonymous.json()["message"]
    wrong = served.admin("POST", "/api/auth/tokens", {"subject": "ada"}, key="corral-admin-nope")
    assert wrong.status_code == 401 and wrong.json()["code"] == "Unauthenticated"
    as_user = httpx.post(served.url + "/api/auth/tokens", json={"subject": "mallory"}, headers=bearer(mint(served)))
    assert as_user.status_code == 403
    not_json = httpx.post(served.url + "/api/auth/tokens", content=b"{oops",
                          headers={"authorization": f"Convex {served.admin_key}"})
    assert not_json.status_code == 400 and not_json.json()["code"] == "BadJsonBody"


# -- several nodes on one PostgreSQL ------------------------------------------------------------------------

def test_nodes_on_one_postgres_share_the_signing_key(tmp_path: Path, postgres_url: str) -> None:
    with serve_node(tmp_path / "a", database_url=postgres_url, auth_issuer=ISSUER) as a, \
            serve_node(tmp_path / "b", database_url=postgres_url, auth_issuer=ISSUER, clock=Clock()) as b:
        token = mint(a, name="Ada")
        assert b.whoami(bearer(token)).json()["value"]["name"] == "Ada"
        key_a = httpx.get(a.url + "/api/auth/jwks.json").json()
        assert httpx.get(b.url + "/api/auth/jwks.json").json() == key_a
        payload = token.split(".")[1]
        assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iss"] == ISSUER
