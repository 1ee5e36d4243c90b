"""The console: the server-rendered operator's page at `/operator` (sandboxes, runners, how to connect;
no secrets; operators only), and the live app's files at `/` and `/console/` (its pages in a
browser: test_console_e2e.py)."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import httpx

from tests.conftest import LiveNode


def _client_key(node: LiveNode, kind: str = "client") -> str:
    created = httpx.post(node.url + "/api/auth/api_keys", json={"name": f"k-{secrets.token_hex(3)}", "kind": kind},
                         headers={"Authorization": f"Convex {node.admin_key}"}, timeout=30)
    assert created.status_code == 200, created.text
    return str(created.json()["key"])


def _runner_secret(node: LiveNode, name: str) -> str:
    found = httpx.post(node.url + "/api/function", json={"path": "corral/runners:get", "args": {"name": name}},
                       headers={"Authorization": f"Convex {node.admin_key}"}, timeout=30).json()
    return str(found["value"]["secret"])


def test_console_lists_sandboxes_and_runners_without_secrets(live_node_factory, short_dir: Path) -> None:  # type: ignore[no-untyped-def]
    node: LiveNode = live_node_factory(data_dir=short_dir / "d", env={"CORRAL_SANDBOX_PROVIDER": "host"})
    key = _client_key(node)
    api = node.url + "/e2b"
    headers = {"X-API-KEY": key}
    made = []
    try:
        for _ in range(3):
            created = httpx.post(api + "/v2/sandboxes", json={"templateID": "base", "timeout": 120, "secure": True},
                                 headers=headers, timeout=60)
            assert created.status_code == 201, created.text
            made.append(created.json())
        running, paused, killed = made
        assert httpx.post(f"{api}/sandboxes/{paused['sandboxID']}/pause", headers=headers, timeout=60).status_code == 204
        assert httpx.delete(f"{api}/sandboxes/{killed['sandboxID']}", headers=headers, timeout=60).status_code == 204

        page = httpx.get(node.url + "/operator", headers={"Authorization": f"Convex {node.admin_key}"}, timeout=30)
        assert page.status_code == 200
        html = page.text
        sandboxes = html.split("<h2>Sandboxes</h2>", 1)[1].split("<h2>Runners</h2>", 1)[0]
        listed, _, collapsed = sandboxes.partition("<details>")
        rows = re.findall(r"<tr><td><code>(\w+)</code></td><td><span class=\"state \w+\">([\w ()]+)</span>", listed)
        assert rows == [(running["sandboxID"], "running"), (paused["sandboxID"], "paused (request)")]  # running first
        assert "1 running, 1 paused, 0 lost, 1 killed" in listed
        assert killed["sandboxID"] in collapsed and killed["sandboxID"] not in listed  # counted, collapsed
        runner = running["clientID"]
        runners = html.split("<h2>Runners</h2>", 1)[1].split("<h2>", 1)[0]
        assert runner in runners and ">up<" in runners
        assert 'eval "$(corral e2b env --data-dir ' in html and f"export E2B_API_URL={node.url}/e2b" in html
        assert str(node.data_dir.absolute()) in html
        assert re.search(r"last write</span> <span title=\"[0-9-]+ [0-9:]+ UTC\">\d+ s ago", html), "when the node last wrote"
        for secret in (key, running["envdAccessToken"], paused["envdAccessToken"], _runner_secret(node, runner)):
            assert secret and secret not in html
    finally:
        for sandbox in made:
            httpx.delete(f"{api}/sandboxes/{sandbox['sandboxID']}", headers=headers, timeout=60)


def _token(node: LiveNode, subject: str) -> str:
    minted = httpx.post(node.url + "/api/auth/tokens", json={"subject": subject},
                        headers={"Authorization": f"Convex {node.admin_key}"}, timeout=30)
    assert minted.status_code == 200, minted.text
    return str(minted.json()["token"])


def test_the_operator_page_is_for_operators_only(live_node_factory, short_dir: Path) -> None:  # type: ignore[no-untyped-def]
    node: LiveNode = live_node_factory(data_dir=short_dir / "d", env={"CORRAL_SANDBOX_PROVIDER": "host",
                                                                      "CORRAL_HOST": "0.0.0.0",
                                                                      "CORRAL_AUTH_LOCAL_SUBJECT": "opal"})
    anonymous = httpx.get(node.url + "/operator", timeout=30)  # a browser: sent to the live page, which signs in
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/#/operator"
    assert "Sandboxes" not in anonymous.text and str(node.data_dir) not in anonymous.text
    plain = httpx.get(node.url + "/operator", headers={"Authorization": f"Bearer {_token(node, 'bob')}"}, timeout=30)
    assert plain.status_code == 403 and "for the node's operators" in plain.text
    assert str(node.data_dir) not in plain.text and "<h2>" not in plain.text
    wrong = httpx.get(node.url + "/operator", headers={"Authorization": "Convex corral-admin-nope"}, timeout=30)
    assert wrong.status_code == 401 and "admin key" in wrong.text
    for credential in (f"Convex {node.admin_key}", f"Bearer {_token(node, 'opal')}"):  # the admin key; the local user
        html = httpx.get(node.url + "/operator", headers={"Authorization": credential}, timeout=30).text
        assert "<h2>Sandboxes</h2>" in html and "<th>last heartbeat</th>" in html, credential[:10]
        assert str(node.data_dir.absolute()) in html


def test_the_app_and_its_files_are_served_from_the_package(live_node: LiveNode) -> None:
    page = httpx.get(live_node.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/console/app.js">' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "text/javascript"), ("sync.js", "text/javascript"), ("app.css", "text/css")):
        served = httpx.get(f"{live_node.url}/console/{name}", timeout=30)
        assert served.status_code == 200 and served.headers["content-type"].startswith(kind), name
    assert "export class SyncClient" in httpx.get(live_node.url + "/console/sync.js", timeout=30).text
    for missing in ("nope.js", ".hidden.js", "console.html"):
        refused = httpx.get(f"{live_node.url}/console/{missing}", timeout=30)
        assert refused.status_code == 404 and "is not a file of the console" in refused.text, missing
    outside = httpx.get(f"{live_node.url}/console/..%2Fconsole.py", timeout=30)
    assert outside.status_code == 404 and "Console" not in outside.text  # never a file beside static/
