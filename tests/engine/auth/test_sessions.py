"""Sign-in sessions: one-time sign-in links, refreshed tokens, sign-out (corral/engine/auth/sessions.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engine.auth_helpers import ServedNode, serve_node

TOKEN_TTL = 300.0
SESSION_TTL = 3600.0
LINK_TTL = 600.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedNode]:
    with serve_node(tmp_path / "data", auth_session_token_ttl=TOKEN_TTL, auth_session_ttl=SESSION_TTL,
                    auth_login_link_ttl=LINK_TTL, auth_clock_leeway=5.0, auth_local_subject="me") as node:
        yield node


def link(served: ServedNode, **body: Any) -> str:
    response = served.admin("POST", "/api/auth/login_links", body)
    assert response.status_code == 200, response.text
    url = str(response.json()["url"])
    assert url.startswith(served.url + "/#login=")
    return url.split("#login=", 1)[1]


def session(served: ServedNode, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(served.url + "/api/auth/session" + route, json=body, timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_sign_in_link_works_once_and_gives_a_refreshable_session(served: ServedNode) -> None:
    ticket = link(served, subject="ada", name="Ada Lovelace", email="ada@example.com")
    before = served.clock.time()
    opened = session(served, "", {"ticket": ticket})
    assert opened.status_code == 200, opened.text
    body = opened.json()
    identity = served.whoami(bearer(body["token"])).json()["value"]
    assert identity["tokenIdentifier"] == body["tokenIdentifier"] and identity["subject"] == "ada"
    assert identity["name"] == "Ada Lovelace" and identity["email"] == "ada@example.com"
    assert before + TOKEN_TTL - 1 <= body["expiresAt"] <= served.clock.time() + TOKEN_TTL  # whole seconds

    again = session(served, "", {"ticket": ticket})
    assert again.status_code == 401 and "already used" in again.json()["message"]

    served.clock.advance(TOKEN_TTL + 10)
    assert served.whoami(bearer(body["token"])).status_code == 401  # the token expired …
    fresh = session(served, "/refresh", {"refreshToken": body["refreshToken"]})
    assert fresh.status_code == 200, fresh.text
    assert served.whoami(bearer(fresh.json()["token"])).json()["value"]["name"] == "Ada Lovelace"  # … the session did not


def test_without_a_subject_the_link_is_for_the_nodes_local_user(served: ServedNode) -> None:
    body = session(served, "", {"ticket": link(served)}).json()
    assert body["subject"] == "me" and body["tokenIdentifier"].endswith("|me")
    assert "operator" not in body  # who is an operator is the server's to say (corral/operator:me)


def test_sign_out_ends_the_session(served: ServedNode) -> None:
    body = session(served, "", {"ticket": link(served, subject="ada")}).json()
    assert session(served, "/sign_out", {"refreshToken": body["refreshToken"]}).status_code == 200
    refused = session(served, "/refresh", {"refreshToken": body["refreshToken"]})
    assert refused.status_code == 401 and "signed out" in refused.json()["message"]


def test_a_session_and_a_link_expire(served: ServedNode) -> None:
    ticket = link(served, subject="ada")
    body = session(served, "", {"ticket": link(served, subject="ada")}).json()
    served.clock.advance(max(LINK_TTL, SESSION_TTL) + 1)
    for route, payload in (("", {"ticket": ticket}), ("/refresh", {"refreshToken": body["refreshToken"]})):
        refused = session(served, route, payload)
        assert refused.status_code == 401 and "has expired" in refused.json()["message"]


def test_tickets_and_refresh_tokens_are_not_user_tokens(served: ServedNode) -> None:
    ticket = link(served, subject="ada")
    body = session(served, "", {"ticket": link(served, subject="ada")}).json()
    for token in (ticket, body["refreshToken"]):
        refused = served.whoami(bearer(token))
        assert refused.status_code == 401 and "audience" in refused.json()["message"]
    # nor is a user token a ticket or a refresh token
    for route, payload in (("", {"ticket": body["token"]}), ("/refresh", {"refreshToken": body["token"]})):
        refused = session(served, route, payload)
        assert refused.status_code == 401 and "not valid on this deployment" in refused.json()["message"]


def test_bad_requests_are_refused_with_what_was_wrong(served: ServedNode) -> None:
    assert session(served, "", {}).json()["message"] == "the sign-in link token is missing or is not a token"
    assert session(served, "/refresh", {"refreshToken": 7}).status_code == 400
    assert session(served, "", {"ticket": "a.b.c"}).status_code == 401
    not_json = httpx.post(served.url + "/api/auth/session", content=b"{oops", timeout=10)
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["message"]
    anonymous = httpx.post(served.url + "/api/auth/login_links", json={"subject": "mallory"}, timeout=10)
    assert anonymous.status_code == 401 or anonymous.status_code == 403
    blank = served.admin("POST", "/api/auth/login_links", {"subject": " "})
    assert blank.status_code == 400 and "subject" in blank.json()["message"]
    wrong_name = served.admin("POST", "/api/auth/login_links", {"subject": "ada", "name": 3})
    assert wrong_name.status_code == 400 and "'name' must be a string" in wrong_name.json()["message"]
