"""What a user sees when E2B_API_URL or E2B_SANDBOX_URL is set slightly wrong: either it works
anyway (a trailing slash), or the error says which variable to set to what."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveNode

from .conftest import Served


def test_urls_with_a_trailing_slash_work(served_e2b: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2b import Sandbox

    monkeypatch.setenv("E2B_API_URL", served_e2b.api_url + "/")
    monkeypatch.setenv("E2B_SANDBOX_URL", served_e2b.sandbox_url + "/")  # the SDK then asks for /envd//process.Process/…
    monkeypatch.setenv("E2B_API_KEY", served_e2b.api_key)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    sandbox = Sandbox.create(timeout=60)
    try:
        assert sandbox.commands.run("echo doubled").stdout == "doubled\n"
        sandbox.files.write("a.txt", "kept")
        assert sandbox.files.read("a.txt") == "kept"
    finally:
        sandbox.kill()


def test_the_api_url_without_e2b_says_what_to_set(live_node: LiveNode, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2b import Sandbox

    monkeypatch.setenv("E2B_API_URL", live_node.url)  # no /e2b
    monkeypatch.setenv("E2B_SANDBOX_URL", live_node.url + "/envd")
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    with pytest.raises(Exception, match=f"set E2B_API_URL={live_node.url}/e2b") as raised:
        Sandbox.create(timeout=60)
    assert "JSONDecodeError" not in type(raised.value).__name__


def test_unknown_paths_at_the_root_answer_json_and_point_at_the_prefix(live_node: LiveNode) -> None:
    control = httpx.post(live_node.url + "/v2/sandboxes", json={"templateID": "base"})
    assert control.status_code == 404
    assert control.json() == {"code": 404, "message": control.json()["message"]}
    assert f"E2B_API_URL={live_node.url}/e2b" in control.json()["message"]
    for path in ("/process.Process/Start", "/filesystem.Filesystem/ListDir"):
        envd = httpx.post(live_node.url + path, json={})
        assert envd.status_code == 404 and f"E2B_SANDBOX_URL={live_node.url}/envd" in envd.json()["message"]
    for method, path in (("GET", "/nothing/here"), ("POST", "/"), ("DELETE", "/favicon.ico")):
        other = httpx.request(method, live_node.url + path)
        assert other.status_code == 404 and other.json()["code"] == 404 and path in other.json()["message"]
    assert httpx.get(live_node.url + "/api/nothing").json()["code"] == "NotFound"  # the Convex plane keeps its shape


def test_templates_are_explained(served_e2b: Served) -> None:
    response = httpx.get(served_e2b.api_url + "/templates", headers={"X-API-KEY": served_e2b.api_key})
    assert response.status_code == 404 and "corral template" in response.json()["message"]


def test_a_timeout_over_the_maximum_is_said_plainly(served_e2b: Served) -> None:
    response = httpx.post(served_e2b.api_url + "/v2/sandboxes", headers={"X-API-KEY": served_e2b.api_key},
                          json={"templateID": "base", "timeout": 10_000_000})
    assert response.status_code == 400
    assert response.json()["message"] == "timeout 10000000 s is over the maximum of 3600 s (sandbox_max_timeout)"
