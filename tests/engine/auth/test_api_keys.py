"""API keys for machines: shown once, stored hashed, revocable; client keys call functions, runner keys do not."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.engine.auth_helpers import ServedNode, serve_node
from tests.engine.sync_client import SyncClient

KEY_SHAPE = re.compile(r"^e2b_[0-9a-f]{40}$")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedNode]:
    with serve_node(tmp_path / "data") as node:
        yield node


def create(node: ServedNode, name: str, kind: str = "client") -> dict[str, Any]:
    response = node.admin("POST", "/api/auth/api_keys", {"name": name, "kind": kind})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_key_has_the_shape_every_e2b_sdk_accepts(served: ServedNode) -> None:
    keys = {create(served, f"k{n}")["key"] for n in range(5)}
    assert len(keys) == 5
    assert all(KEY_SHAPE.match(k) for k in keys)


def test_a_client_key_calls_functions_as_itself(served: ServedNode) -> None:
    created = create(served, "ci-bot")
    expected = {"tokenIdentifier": f"api-key|{created['id']}", "subject": created["id"], "issuer": "api-key",
                "name": "ci-bot", "keyKind": "client"}
    assert served.whoami(bearer(created["key"])).json()["value"] == expected
    assert served.whoami({"x-api-key": created["key"]}).json()["value"] == expected
    assert served.call("mutation", "messages:send", {"body": "beep"}, {"x-api-key": created["key"]}).json()["status"] == "success"
    assert [m["author"] for m in served.call("query", "messages:list").json()["value"]] == ["ci-bot"]


def test_a_client_key_authenticates_a_socket(served: ServedNode) -> None:
    key = create(served, "sdk")["key"]
    client = SyncClient(served.url)
    client.send({"type": "Authenticate", "tokenType": "User", "value": key, "baseVersion": 0})
    client.recv_until(lambda m: m["type"] == "Transition" and m["endVersion"]["identity"] == 1)
    q = client.subscribe("auth:whoami")
    client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
    assert client.results[q]["name"] == "sdk"
    client.close()


def test_a_runner_key_is_refused_for_every_function(served: ServedNode) -> None:
    key = create(served, "builder-1", kind="runner")["key"]
    for kind, path, args in (("query", "auth:whoami", {}), ("mutation", "messages:send", {"body": "x"})):
        response = served.call(kind, path, args, bearer(key))
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "error"
        assert f"the runner key 'builder-1' may only register a runner and report its work, not call {path}" in body["errorMessage"]
    assert served.call("query", "messages:list").json()["value"] == []
    client = SyncClient(served.url)
    client.send({"type": "Authenticate", "tokenType": "User", "value": key, "baseVersion": 0})
    client.recv_until(lambda m: m["type"] == "Transition" and m["endVersion"]["identity"] == 1)
    q = client.subscribe("messages:list")
    client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
    assert client.results[q][0] == "failed" and "runner key" in client.results[q][1]
    response = client.mutation("messages:send", {"body": "x"})
    assert response["success"] is False and "runner key" in response["result"]
    client.close()


def test_a_revoked_key_is_refused(served: ServedNode) -> None:
    created = create(served, "old")
    assert served.whoami(bearer(created["key"])).status_code == 200
    revoked = served.admin("POST", "/api/auth/api_keys/revoke", {"key": "old"})
    assert revoked.status_code == 200 and revoked.json()["alreadyRevoked"] is False and revoked.json()["revoked"]
    response = served.whoami(bearer(created["key"]))
    assert response.status_code == 401
    assert "the API key 'old'" in response.json()["message"] and "was revoked" in response.json()["message"]
    again = served.admin("POST", "/api/auth/api_keys/revoke", {"key": created["id"]})
    assert again.status_code == 200 and again.json()["alreadyRevoked"] is True
    listed = served.admin("GET", "/api/auth/api_keys").json()["keys"]
    assert [(k["name"], k["revoked"] is not None) for k in listed] == [("old", True)]


def test_a_key_can_be_revoked_by_itself(served: ServedNode) -> None:
    created = create(served, "leaked")
    assert served.admin("POST", "/api/auth/api_keys/revoke", {"key": created["key"]}).json()["id"] == created["id"]
    assert served.whoami({"x-api-key": created["key"]}).status_code == 401


def test_a_socket_whose_key_is_revoked_gets_auth_error_on_its_next_request(served: ServedNode) -> None:
    created = create(served, "runner-ish")
    client = SyncClient(served.url)
    client.send({"type": "Authenticate", "tokenType": "User", "value": created["key"], "baseVersion": 0})
    client.recv_until(lambda m: m["type"] == "Transition" and m["endVersion"]["identity"] == 1)
    assert client.mutation("messages:send", {"body": "before"})["success"] is True
    served.admin("POST", "/api/auth/api_keys/revoke", {"key": created["id"]})
    client.send({"type": "Mutation", "requestId": 50, "udfPath": "messages:send", "args": [{"body": "after"}]})
    error = client.recv_until(lambda m: m["type"] == "AuthError")
    assert "was revoked" in error["error"] and error["authUpdateAttempted"] is False
    with pytest.raises(ConnectionClosed):
        client.recv_until(lambda m: False, timeout=30)
    assert [m["body"] for m in served.call("query", "messages:list").json()["value"]] == ["before"]


@pytest.mark.parametrize(("headers", "status", "message"), [
    ({"authorization": "Bearer e2b_" + "0" * 40}, 401, "not one of this deployment's keys"),
    ({"x-api-key": "e2b_" + "0" * 40}, 401, "not one of this deployment's keys"),
    ({"authorization": "Bearer e2b_" + "A" * 40}, 401, "malformed"),
    ({"authorization": "Bearer e2b_123"}, 401, "malformed"),
    ({"x-api-key": "e2b_" + "0" * 41}, 401, "malformed"),
    ({"x-api-key": "not-a-key"}, 401, "holds no API key"),
    ({"x-api-key": ""}, 401, "holds no API key"),
])
def test_bad_api_keys_are_refused_with_a_clear_message(served: ServedNode, headers: dict[str, str], status: int, message: str) -> None:
    response = served.whoami(headers)
    assert response.status_code == status
    assert response.json()["code"] == "Unauthenticated" and message in response.json()["message"]


def test_keys_are_stored_hashed(served: ServedNode, tmp_path: Path) -> None:
    created = create(served, "secret-keeper")
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").iterdir() if p.is_file())
    assert created["id"].encode() in stored
    assert created["key"].encode() not in stored
    assert created["key"][4:].encode() not in stored
    listed = served.admin("GET", "/api/auth/api_keys").json()["keys"]
    assert created["key"] not in str(listed)
    assert listed[0]["hint"] == created["key"][:8] + "…" + created["key"][-4:]


def test_keys_survive_a_restart(tmp_path: Path) -> None:
    with serve_node(tmp_path / "data") as first:
        key = create(first, "durable")["key"]
    with serve_node(tmp_path / "data") as second:
        assert second.whoami(bearer(key)).json()["value"]["name"] == "durable"


# -- the admin endpoints behind `corral api-key` -----------------------------------------------------------

@pytest.mark.parametrize(("body", "code", "message"), [
    ({}, "InvalidApiKey", "needs a name"),
    ({"name": "   "}, "InvalidApiKey", "needs a name"),
    ({"name": 5}, "InvalidApiKey", "needs a name"),
    ({"name": "x" * 101}, "InvalidApiKey", "at most 100 characters"),
    ({"name": "tab\there"}, "InvalidApiKey", "printable"),
    ({"name": "ok", "kind": "admin"}, "InvalidApiKey", "'client' or 'runner', not 'admin'"),
    ("just a string", "BadJsonBody", "must be a JSON object"),
])
def test_bad_create_requests_get_a_400(served: ServedNode, body: Any, code: str, message: str) -> None:
    response = served.admin("POST", "/api/auth/api_keys", body)
    assert response.status_code == 400
    assert response.json()["code"] == code and message in response.json()["message"]


def test_an_active_name_is_not_reused(served: ServedNode) -> None:
    first = create(served, "ci")
    response = served.admin("POST", "/api/auth/api_keys", {"name": "ci"})
    assert response.status_code == 400 and response.json()["code"] == "ApiKeyExists"
    assert first["id"] in response.json()["message"]
    served.admin("POST", "/api/auth/api_keys/revoke", {"key": "ci"})
    second = create(served, "ci")  # once revoked, the name is free again
    assert served.admin("POST", "/api/auth/api_keys/revoke", {"key": "ci"}).json()["id"] == second["id"]
    ambiguous = served.admin("POST", "/api/auth/api_keys/revoke", {"key": "ci"})
    assert ambiguous.status_code == 400 and ambiguous.json()["code"] == "ApiKeyAmbiguous"
    assert first["id"] in ambiguous.json()["message"] and second["id"] in ambiguous.json()["message"]


@pytest.mark.parametrize(("body", "code"), [({"key": "nope"}, "ApiKeyNotFound"), ({}, "InvalidApiKey"),
                                            ({"key": 3}, "InvalidApiKey"), ({"key": "e2b_" + "1" * 40}, "ApiKeyNotFound")])
def test_revoking_what_does_not_exist_says_so(served: ServedNode, body: dict[str, Any], code: str) -> None:
    response = served.admin("POST", "/api/auth/api_keys/revoke", body)
    assert response.status_code == 400 and response.json()["code"] == code


def test_managing_keys_needs_the_admin_key(served: ServedNode) -> None:
    client_key = create(served, "not-admin")["key"]
    for method, route in (("GET", "/api/auth/api_keys"), ("POST", "/api/auth/api_keys"), ("POST", "/api/auth/api_keys/revoke")):
        anonymous = httpx.request(method, served.url + route, json={"name": "x", "key": "not-admin"})
        assert anonymous.status_code == 403
        with_client_key = httpx.request(method, served.url + route, json={"name": "x", "key": "not-admin"},
                                        headers={"x-api-key": client_key})
        assert with_client_key.status_code == 403
    assert served.whoami(bearer(client_key)).status_code == 200  # nothing was revoked


def test_keys_and_revocations_reach_every_node_on_one_postgres(tmp_path: Path, postgres_url: str) -> None:
    with serve_node(tmp_path / "a", database_url=postgres_url) as a, serve_node(tmp_path / "b", database_url=postgres_url) as b:
        created = create(a, "shared")
        assert b.whoami(bearer(created["key"])).json()["value"]["name"] == "shared"
        assert [k["id"] for k in b.admin("GET", "/api/auth/api_keys").json()["keys"]] == [created["id"]]
        a.admin("POST", "/api/auth/api_keys/revoke", {"key": "shared"})
        response = b.whoami(bearer(created["key"]))
        assert response.status_code == 401 and "was revoked" in response.json()["message"]


def test_a_runner_key_may_call_only_the_functions_made_for_runners(tmp_path: Path) -> None:
    services = Path(__file__).resolve().parents[2] / "fixtures" / "services"
    with serve_node(tmp_path / "data", functions=services) as node:
        runner = create(node, "builder-2", kind="runner")["key"]
        client = create(node, "sdk-2")["key"]
        reported = node.call("mutation", "runner_reports:report", {"label": "up"}, bearer(runner)).json()
        assert reported["status"] == "success" and reported["value"] == {"name": "builder-2", "keyKind": "runner"}
        refused = node.call("mutation", "jobs:open_gate", {"name": "g"}, bearer(runner)).json()
        assert refused["status"] == "error" and "may only register a runner and report its work" in refused["errorMessage"]
        # Other callers keep their rights to such a function.
        assert node.call("mutation", "runner_reports:report", {"label": "by a client"}, bearer(client)).json()["status"] == "success"
        assert node.call("query", "jobs:gate_is_open", {"name": "g"}).json()["value"] is False
