"""HTTP actions under /http/: routes from http.py, the caller's identity, streaming, errors, CORS."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import httpx
import orjson
import pytest

from corral.engine.errors import SchemaError
from corral.engine.http import HttpRouter

from ...conftest import ROOT, make_settings
from ..served import ServedNode, served, wait_until

SERVICES = ROOT / "tests" / "fixtures" / "services"


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CORRAL_ENV_SERVICE_KEY", "sk-http-secret-0042")
    with served(tmp_path / "data", functions=SERVICES) as running:
        yield running


def get(node: ServedNode, path: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.get(node.url + path, timeout=30, **kwargs)


def post(node: ServedNode, path: str, body: object, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(node.url + path, content=orjson.dumps(body), headers={"content-type": "application/json", **kwargs.pop("headers", {})},
                      timeout=30, **kwargs)


def test_a_route_answers_its_method_and_path(node):
    response = post(node, "/http/hello", {"name": "Ada"})
    assert response.status_code == 200 and response.json() == {"hello": "Ada"}


def test_an_exact_path_beats_a_prefix_and_the_longest_prefix_wins(node):
    assert get(node, "/http/files/a/b.txt").text == "file /http/files/a/b.txt"
    assert get(node, "/http/files/special/x").text == "special"


def test_unknown_paths_are_404_and_other_methods_405(node):
    missing = get(node, "/http/nowhere")
    assert missing.status_code == 404 and missing.json()["code"] == "NotFound"
    wrong = get(node, "/http/hello")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


def test_a_handler_runs_functions_as_an_action(node):
    response = post(node, "/http/record", {"label": "via http"})
    assert response.status_code == 201
    [run] = node.call("query", "jobs:runs", {"label": "via http"})
    assert run["_id"] == response.json()["id"]


def test_the_handler_runs_as_the_caller_named_by_the_authorization_header(node):
    assert get(node, "/http/whoami").json() == {"tokenIdentifier": None}
    acting = base64.b64encode(orjson.dumps({"subject": "ada", "issuer": "https://issuer.example"})).decode()
    as_ada = get(node, "/http/whoami", headers={"authorization": f"Convex {node.node.admin_key}:{acting}"})
    assert as_ada.json() == {"tokenIdentifier": "https://issuer.example|ada"}
    bad_token = get(node, "/http/whoami", headers={"authorization": "Bearer not-a-token"})
    assert bad_token.status_code == 401 and bad_token.json()["code"] == "Unauthenticated"
    bad_header = get(node, "/http/whoami", headers={"authorization": "Basic abc"})
    assert bad_header.status_code == 400 and bad_header.json()["code"] == "BadAuthHeader"


def test_a_streamed_response_arrives_piece_by_piece_and_is_persisted(node):
    """Persistent text streaming: the client reads the first piece while the handler still runs."""
    body = {"stream": "s1", "words": ["Hello", " there", ", friend."], "gate": "s1-rest"}
    with httpx.Client(timeout=30) as client, client.stream("POST", node.url + "/http/stream", json=body) as response:
        assert response.status_code == 200
        pieces = response.iter_bytes()
        first = next(pieces)
        assert first == b"Hello"
        assert node.call("query", "streams:body", {"stream": "s1"}) == "Hello"  # persisted as it streams
        node.call("mutation", "jobs:open_gate", {"name": "s1-rest"})
        rest = b"".join(pieces)
    assert first + rest == b"Hello there, friend."
    wait_until(lambda: node.call("query", "streams:body", {"stream": "s1"}) == "Hello there, friend.<done>", what="the stream's end")


def test_a_failing_handler_is_a_500_with_a_message_and_no_secret(node):
    broken = get(node, "/http/broken")
    assert broken.status_code == 500
    message = broken.json()["message"]
    assert broken.json()["code"] == "HttpActionFailed"
    assert "Uncaught RuntimeError in HTTP action GET /broken: the handler broke" in message
    assert "sk-http-secret-0042" not in message and "[secret SERVICE_KEY]" in message
    assert "Traceback" not in broken.text
    wrong = get(node, "/http/not-a-response")
    assert wrong.status_code == 500 and "not a starlette Response" in wrong.json()["message"]


def test_a_handler_past_its_time_limit_is_a_504_by_the_engine_clock(node):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(get, node, "/http/wait")
        wait_until(lambda: node.call("query", "jobs:runs", {"label": "waiting"}), what="the handler starting")
        node.clock.advance(node.node.settings.action_timeout)
        response = answer.result(timeout=30)
    assert response.status_code == 504 and response.json()["code"] == "FunctionTimeout"
    assert "ran longer than its limit of 600 s" in response.json()["message"]


def test_cors_is_off_unless_configured(node):
    response = post(node, "/http/hello", {"name": "x"}, headers={"origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_the_configured_origins(tmp_path):
    with served(tmp_path / "data", functions=SERVICES, http_cors_origins="https://app.example, https://admin.example") as node:
        preflight = httpx.options(node.url + "/http/hello", timeout=30, headers={
            "origin": "https://app.example", "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-max-age"] == "600"
        simple = post(node, "/http/hello", {"name": "x"}, headers={"origin": "https://admin.example"})
        assert simple.headers["access-control-allow-origin"] == "https://admin.example"
        other = httpx.options(node.url + "/http/hello", timeout=30, headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


# -- declarations checked when the node starts -------------------------------------------

BAD_ROUTES = {
    "a plain def": ('@http.route("/x", method="GET")\ndef handler(ctx, request):\n    pass', "async def"),
    "wrong parameters": ('@http.route("/x", method="GET")\nasync def handler(request):\n    pass', "two parameters"),
    "unknown method": ('@http.route("/x", method="FETCH")\nasync def handler(ctx, request):\n    pass', "not one of"),
    "relative path": ('@http.route("x", method="GET")\nasync def handler(ctx, request):\n    pass', "starts with '/'"),
    "prefix without a slash": ('@http.route(path_prefix="/x", method="GET")\nasync def handler(ctx, request):\n    pass', "ends with '/'"),
    "path and prefix": ('@http.route("/x", path_prefix="/y/")\nasync def handler(ctx, request):\n    pass', "either a path or a path_prefix"),
    "declared twice": ('@http.route("/x", method="GET")\nasync def one(ctx, request):\n    pass\n\n'
                       '@http.route("/x", method="GET")\nasync def two(ctx, request):\n    pass', "declared twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROUTES))
def test_a_bad_route_stops_the_node_with_a_message(tmp_path, case):
    from corral.node import Node

    folder = tmp_path / "functions"
    folder.mkdir()
    (folder / "schema.py").write_text("")
    code, message = BAD_ROUTES[case]
    (folder / "http.py").write_text("from corral import HttpRouter\n\nhttp = HttpRouter()\n\n" + textwrap.dedent(code) + "\n")
    with pytest.raises(SchemaError) as err:
        Node(make_settings(tmp_path / "data", functions=folder))
    assert message in err.value.message and "http.py" in err.value.message


def test_a_router_can_also_take_a_handler_directly():
    router = HttpRouter()

    async def handler(ctx, request):  # type: ignore[no-untyped-def]
        return None

    assert router.route("/direct", method="put", handler=handler) is handler
    assert [r.describe() for r in router.routes] == ["PUT /direct"]
