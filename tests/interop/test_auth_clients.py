"""The official clients' auth against a live node: a token minted by `corral token mint`, sent by
the npm clients' `setAuth` (HTTP and over the socket) and the PyPI client's `set_auth`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveNode
from tests.interop.test_npm_client import node_scripts, run_script  # noqa: F401 - node_scripts is a fixture

HERE = Path(__file__).resolve().parent
SCENARIO_TIMEOUT = 30


def mint(node: LiveNode, subject: str, name: str) -> str:
    response = httpx.post(node.url + "/api/auth/tokens", json={"subject": subject, "name": name},
                          headers={"authorization": f"Convex {node.admin_key}"}, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def node_issuer(node: LiveNode) -> str:
    """The deployment's own issuer (ADR 0013): the same on any port or host."""
    return str(httpx.get(node.url + "/api/auth/.well-known/openid-configuration", timeout=10).json()["issuer"])


def api_key(node: LiveNode, name: str) -> str:
    response = httpx.post(node.url + "/api/auth/api_keys", json={"name": name},
                          headers={"authorization": f"Convex {node.admin_key}"}, timeout=10)
    return str(response.json()["key"])


@pytest.mark.node
def test_npm_clients_set_auth(node_scripts: str, chat_node: LiveNode) -> None:  # noqa: F811
    token = mint(chat_node, "ada", "Ada Lovelace")
    seen = run_script(node_scripts, "chat_auth.mjs", chat_node.url, token, "not-a-token")
    issuer = node_issuer(chat_node)
    assert seen["httpAnonymous"] is None
    assert seen["httpIdentity"]["tokenIdentifier"] == f"{issuer}|ada"
    assert seen["wsIdentity"]["name"] == "Ada Lovelace"
    assert [(m["author"], m["body"]) for m in seen["messages"]] == [
        ("Ada Lovelace", "over http"), ("Ada Lovelace", "over the socket")]
    assert seen["authChanges"] == [True]
    assert seen["badAuthChanges"] == [False]
    assert seen["badIdentity"] is None


def run_python(url: str, token: str, key: str) -> dict[str, Any]:
    try:
        proc = subprocess.run([sys.executable, str(HERE / "python_auth_scenario.py"), url, token, key],
                              capture_output=True, text=True, timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the Python client hung; its progress:\n{exc.stderr!r}", pytrace=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_python_client_set_auth(chat_node: LiveNode) -> None:
    seen = run_python(chat_node.url, mint(chat_node, "grace", "Grace Hopper"), api_key(chat_node, "py-sdk"))
    issuer = node_issuer(chat_node)
    assert seen["anonymous"] is None
    assert seen["user"]["tokenIdentifier"] == f"{issuer}|grace"
    assert seen["authors"] == ["Grace Hopper"]
    assert seen["cleared"] is None
    assert seen["machine"]["name"] == "py-sdk" and seen["machine"]["keyKind"] == "client"
