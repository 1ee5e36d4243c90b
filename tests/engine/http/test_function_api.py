"""Convex's HTTP function API, including every kind of bad request."""

from __future__ import annotations

import base64

import httpx
import orjson
import pytest


def post(node, route: str, body, headers: dict | None = None) -> httpx.Response:  # type: ignore[no-untyped-def]
    content = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
    return httpx.post(node.url + route, content=content, headers={"content-type": "application/json", **(headers or {})}, timeout=10)


def test_query_mutation_and_run_routes(live_node):
    created = post(live_node, "/api/mutation", {"path": "rooms:create", "args": {"name": "lobby"}})
    assert created.status_code == 200 and created.json()["status"] == "success"
    room = created.json()["value"]
    listed = post(live_node, "/api/query", {"path": "rooms:list", "args": {}})
    assert [r["name"] for r in listed.json()["value"]] == ["lobby"]
    ran = post(live_node, "/api/run/rooms/get", {"args": {"room_id": room}})
    assert ran.json()["value"]["name"] == "lobby"
    got = httpx.get(live_node.url + "/api/query", params={"path": "rooms:get", "args": orjson.dumps({"room_id": room}).decode()})
    assert got.json()["value"]["_id"] == room


def test_formats_encoded_and_clean(live_node):
    value = {"n": {"$integer": base64.b64encode((5).to_bytes(8, "little")).decode()}, "b": {"$bytes": "AAE="}}
    encoded = post(live_node, "/api/query", {"path": "misc:echo", "args": {"value": value}, "format": "convex_encoded_json"})
    assert encoded.json()["value"] == value
    clean = post(live_node, "/api/query", {"path": "misc:echo", "args": {"value": value}, "format": "json"})
    assert clean.json()["value"] == {"n": "5", "b": "AAE="}
    legacy_array = post(live_node, "/api/query", {"path": "misc:echo", "args": [{"value": 1}]})
    assert legacy_array.json()["value"] == 1


def test_convex_error_data_reaches_the_client(live_node):
    response = post(live_node, "/api/mutation", {"path": "misc:fail_action", "args": {}})
    assert response.json()["status"] == "error"  # an action is not a mutation: not found
    int64_data = post(live_node, "/api/mutation", {"path": "rooms:post", "args": {"room_id": "k" * 32, "author": "a", "body": "b"}})
    assert int64_data.json()["status"] == "error"
    action = post(live_node, "/api/action", {"path": "misc:fail_action", "args": {}})
    assert action.status_code == 200
    assert action.json() == {"status": "error", "errorMessage": "ConvexError", "errorData": {"why": "because"}}


@pytest.mark.parametrize(
    ("route", "body", "headers", "status", "code"),
    [
        ("/api/query", b"{not json", None, 400, "BadJsonBody"),
        ("/api/query", b"[1, 2]", None, 400, "BadJsonBody"),
        ("/api/query", {"args": {}}, None, 400, "MissingPath"),
        ("/api/query", {"path": 5, "args": {}}, None, 400, "MissingPath"),
        ("/api/query", {"path": "rooms:list", "args": "x"}, None, 400, "InvalidArgs"),
        ("/api/query", {"path": "rooms:list", "args": {"$weird": 1}}, None, 400, "InvalidArgs"),
        ("/api/query", {"path": "rooms:list", "format": "xml"}, None, 400, "InvalidFormat"),
        ("/api/query", {"path": "rooms:list"}, {"authorization": "Basic abc"}, 400, "BadAuthHeader"),
        ("/api/query", {"path": "rooms:list"}, {"authorization": "Bearer"}, 400, "BadAuthHeader"),
        ("/api/query", {"path": "rooms:list"}, {"authorization": "Convex wrong-key"}, 401, "Unauthenticated"),
        ("/api/query", {"path": "rooms:list"}, {"authorization": "Bearer not.a.token"}, 401, "Unauthenticated"),
        ("/api/run/rooms", {"args": {}}, None, 400, "MissingIdentifier"),
        ("/api/function", {"path": "rooms:list"}, None, 403, "Unauthorized"),
    ],
)
def test_malformed_requests_get_a_4xx_with_code_and_message(live_node, route, body, headers, status, code):
    response = post(live_node, route, body, headers)
    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.json()["message"]
    assert post(live_node, "/api/query", {"path": "rooms:list"}).json()["value"] == []


@pytest.mark.parametrize(
    ("path", "args", "message"),
    [
        ("rooms:nope", {}, "Could not find public function for 'rooms:nope'"),
        ("rooms:count_all", {}, "Could not find public function for 'rooms:count_all'"),
        ("rooms", {}, "Could not find public function for 'rooms:default'"),  # Convex: a bare module is its default export
        ("rooms:create", {"name": 3}, "`name`"),
        ("rooms:create", {}, "`name` of rooms:create: missing required field"),
        ("rooms:create", {"name": "x", "extra": True}, "`extra`"),
    ],
)
def test_function_level_failures_are_convex_error_responses(live_node, path, args, message):
    response = post(live_node, "/api/mutation", {"path": path, "args": args})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "error" and message in body["errorMessage"]
    assert post(live_node, "/api/query", {"path": "rooms:list"}).json()["value"] == []


def test_oversized_and_too_deep_values_are_refused_and_nothing_is_written(live_node):
    room = post(live_node, "/api/mutation", {"path": "rooms:create", "args": {"name": "r"}}).json()["value"]
    big = post(live_node, "/api/mutation", {"path": "rooms:post", "args": {"room_id": room, "author": "a", "body": "x" * (1 << 20)}})
    assert big.json()["status"] == "error" and "1048576" in big.json()["errorMessage"]
    deep: dict = {"v": 1}
    for _ in range(20):
        deep = {"v": deep}
    too_deep = post(live_node, "/api/query", {"path": "misc:echo", "args": {"value": deep}})
    assert too_deep.json()["status"] == "error" and "nested deeper than 16" in too_deep.json()["errorMessage"]
    latest = post(live_node, "/api/query", {"path": "rooms:latest", "args": {"room_id": room}})
    assert latest.json()["value"] == []


def test_admin_key_reaches_internal_functions_and_can_act_as_a_user(live_node):
    admin = {"authorization": f"Convex {live_node.admin_key}"}
    assert post(live_node, "/api/query", {"path": "rooms:count_all"}, admin).json()["value"] == "0"
    identity = base64.b64encode(orjson.dumps({"subject": "user-1", "issuer": "https://issuer.example", "name": "Ada"})).decode()
    acting = {"authorization": f"Convex {live_node.admin_key}:{identity}"}
    whoami = post(live_node, "/api/query", {"path": "rooms:whoami"}, acting).json()["value"]
    assert whoami["tokenIdentifier"] == "https://issuer.example|user-1" and whoami["name"] == "Ada"
    ran = post(live_node, "/api/function", {"path": "rooms:count_all", "args": {}}, admin)
    assert ran.json() == {"status": "success", "value": "0"}


def test_unknown_routes_under_each_plane_are_404_json(live_node):
    for path in ("/api/nothing", "/http/hook"):
        response = httpx.get(live_node.url + path)
        assert response.status_code == 404
        assert response.json()["code"] == "NotFound"
    for path in ("/e2b/nothing", "/envd/nothing/here"):  # E2B's error shape: {"code": 404, "message": …}
        response = httpx.get(live_node.url + path)
        assert response.status_code == 404
        assert response.json()["code"] == 404 and path in response.json()["message"]


def test_console_and_metrics(live_node):
    page = httpx.get(live_node.url + "/operator", headers={"Authorization": f"Convex {live_node.admin_key}"})  # operators only
    assert page.status_code == 200
    assert "rooms:latest" in page.text and "kitchen_sink" in page.text and "workspaces" in page.text
    post(live_node, "/api/query", {"path": "rooms:list"})
    post(live_node, "/api/query", {"path": "rooms:nope"})
    metrics = httpx.get(live_node.url + "/metrics")
    assert metrics.status_code == 200
    assert 'corral_function_calls_total{kind="query",outcome="success"} 1.0' in metrics.text
    assert 'corral_function_calls_total{kind="query",outcome="error"} 1.0' in metrics.text
