"""`corral token mint` and `corral api-key`, as a user runs them: through a running node or on the store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import CHAT, LiveNode, free_port

CORRAL = [sys.executable, "-m", "corral"]
KEY_SHAPE = re.compile(r"^e2b_[0-9a-f]{40}\n$")
ISSUER = "http://corral.test/api/auth"


def corral(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "CORRAL_ADMIN_KEY"}
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})


def whoami(node: LiveNode, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(node.url + "/api/query", json={"path": "auth:whoami", "args": {}}, headers=headers, timeout=10)


@pytest.mark.parametrize("command", [["token"], ["token", "mint"], ["api-key"], ["api-key", "create"],
                                     ["api-key", "list"], ["api-key", "revoke"]])
def test_every_auth_command_has_complete_help(command: list[str]) -> None:
    result = corral(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout and "Example" in result.stdout
    if len(command) == 2:
        for flag in ("--data-dir", "--url", "--database", "--admin-key"):
            assert flag in result.stdout


# -- corral token mint ---------------------------------------------------------------------------------

def test_mint_prints_only_a_token_the_node_accepts(chat_node: LiveNode) -> None:
    result = corral("token", "mint", "--data-dir", str(chat_node.data_dir), "--subject", "ada", "--name", "Ada Lovelace",
                    "--email", "ada@example.com", "--ttl", "15m", "--claim", "team=engines", "--claim", 'tags=["a","b"]')
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.count(".") == 2
    identity = whoami(chat_node, {"authorization": f"Bearer {token}"}).json()["value"]
    issuer = httpx.get(chat_node.url + "/api/auth/.well-known/openid-configuration", timeout=10).json()["issuer"]
    assert identity == {"tokenIdentifier": f"{issuer}|ada", "subject": "ada", "issuer": issuer, "name": "Ada Lovelace",
                        "email": "ada@example.com", "team": "engines", "tags": ["a", "b"]}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 15 * 60


def test_mint_without_a_running_node_signs_with_the_stored_key(live_node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"CORRAL_AUTH_ISSUER": ISSUER}
    node = live_node_factory(functions=CHAT, env=env)
    node.stop()
    result = corral("token", "mint", "--data-dir", str(node.data_dir), "--subject", "grace", "--ttl", "1h", env=env)
    assert result.returncode == 0, result.stderr
    restarted = live_node_factory(functions=CHAT, data_dir=node.data_dir, env=env)
    identity = whoami(restarted, {"authorization": f"Bearer {result.stdout.strip()}"}).json()["value"]
    assert identity["tokenIdentifier"] == f"{ISSUER}|grace"


def test_mint_with_url_needs_the_admin_key(chat_node: LiveNode, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    missing = corral("token", "mint", "--subject", "ada", "--url", chat_node.url, "--data-dir", str(elsewhere))
    assert missing.returncode == 1 and "no admin key" in missing.stderr and "--admin-key" in missing.stderr
    wrong = corral("token", "mint", "--subject", "ada", "--url", chat_node.url, "--data-dir", str(elsewhere),
                   "--admin-key", "corral-admin-wrong")
    assert wrong.returncode == 1 and "admin key is not this deployment's" in wrong.stderr
    by_option = corral("token", "mint", "--subject", "ada", "--url", chat_node.url, "--data-dir", str(elsewhere),
                       "--admin-key", chat_node.admin_key)
    by_env = corral("token", "mint", "--subject", "ada", "--url", chat_node.url, "--data-dir", str(elsewhere),
                    env={"CORRAL_ADMIN_KEY": chat_node.admin_key})
    for result in (by_option, by_env):
        assert result.returncode == 0, result.stderr
        assert whoami(chat_node, {"authorization": f"Bearer {result.stdout.strip()}"}).json()["value"]["subject"] == "ada"


@pytest.mark.parametrize(("args", "message"), [
    (["--ttl", "abc"], "Invalid value for --ttl: 'abc' is not a duration"),
    (["--ttl", "1x"], "is not a duration"),
    (["--ttl", "-1h"], "is not a duration"),
    (["--ttl", "0"], "more than 0 seconds"),
    (["--ttl", "0s"], "more than 0 seconds"),
    (["--claim", "no-equals-sign"], "is not NAME=VALUE"),
    (["--claim", "exp=1"], "may not set exp"),
])
def test_mint_refuses_bad_options_saying_why(chat_node: LiveNode, args: list[str], message: str) -> None:
    result = corral("token", "mint", "--subject", "ada", "--data-dir", str(chat_node.data_dir), *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stdout == ""


def test_mint_needs_a_subject(chat_node: LiveNode) -> None:
    result = corral("token", "mint", "--data-dir", str(chat_node.data_dir))
    assert result.returncode == 2 and "--subject" in result.stderr


def test_mint_with_no_node_and_no_data_says_what_to_do(tmp_path: Path) -> None:
    result = corral("token", "mint", "--subject", "ada", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert "no node is running" in result.stderr and "corral serve" in result.stderr
    assert not (tmp_path / "nothing").exists()


def test_mint_through_an_unreachable_url_says_so(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = corral("token", "mint", "--subject", "ada", "--url", url, "--admin-key", "corral-admin-x")
    assert result.returncode == 1 and f"cannot reach {url}" in result.stderr


# -- corral api-key ------------------------------------------------------------------------------------

def test_api_key_lifecycle_through_the_running_node(chat_node: LiveNode) -> None:
    data = ["--data-dir", str(chat_node.data_dir)]
    created = corral("api-key", "create", "--name", "ci", *data)
    assert created.returncode == 0, created.stderr
    assert KEY_SHAPE.match(created.stdout)
    assert "not shown again" in created.stderr
    key = created.stdout.strip()
    assert whoami(chat_node, {"authorization": f"Bearer {key}"}).json()["value"]["name"] == "ci"
    assert whoami(chat_node, {"x-api-key": key}).json()["value"]["keyKind"] == "client"

    runner = corral("api-key", "create", "--name", "builder", "--kind", "runner", *data).stdout.strip()
    refused = whoami(chat_node, {"authorization": f"Bearer {runner}"}).json()
    assert refused["status"] == "error" and "runner key 'builder'" in refused["errorMessage"]

    table = corral("api-key", "list", *data)
    assert table.returncode == 0
    assert key not in table.stdout and runner not in table.stdout
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "KIND", "KEY", "CREATED", "REVOKED"]
    assert [line.split()[1:3] for line in lines[1:]] == [["ci", "client"], ["builder", "runner"]]
    assert key[:8] + "…" + key[-4:] in table.stdout

    revoked = corral("api-key", "revoke", "ci", *data)
    assert revoked.returncode == 0 and "Revoked the client key 'ci'" in revoked.stdout
    assert whoami(chat_node, {"authorization": f"Bearer {key}"}).status_code == 401
    again = corral("api-key", "revoke", "ci", *data)
    assert again.returncode == 0 and "already revoked" in again.stdout
    listed = json.loads(corral("api-key", "list", "--json", *data).stdout)
    assert [(k["name"], k["revoked"] is not None) for k in listed] == [("ci", True), ("builder", False)]


def test_api_keys_on_the_store_when_no_node_runs(live_node_factory) -> None:  # type: ignore[no-untyped-def]
    node = live_node_factory(functions=CHAT)
    node.stop()
    data = ["--data-dir", str(node.data_dir)]
    created = corral("api-key", "create", "--name", "offline", *data)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert KEY_SHAPE.match(created.stdout)
    listed = json.loads(corral("api-key", "list", "--json", *data).stdout)
    assert [k["name"] for k in listed] == ["offline"]
    restarted = live_node_factory(functions=CHAT, data_dir=node.data_dir)
    assert whoami(restarted, {"x-api-key": key}).json()["value"]["name"] == "offline"
    restarted.stop()
    assert corral("api-key", "revoke", "offline", *data).returncode == 0
    again = live_node_factory(functions=CHAT, data_dir=node.data_dir)
    assert whoami(again, {"x-api-key": key}).status_code == 401


def test_api_key_commands_refuse_bad_input_saying_why(chat_node: LiveNode) -> None:
    data = ["--data-dir", str(chat_node.data_dir)]
    assert corral("api-key", "create", "--name", "dup", *data).returncode == 0
    duplicate = corral("api-key", "create", "--name", "dup", *data)
    assert duplicate.returncode == 1 and "already named 'dup'" in duplicate.stderr and duplicate.stdout == ""
    bad_kind = corral("api-key", "create", "--name", "x", "--kind", "admin", *data)
    assert bad_kind.returncode == 2 and "'admin' is not one of 'client', 'runner'" in bad_kind.stderr
    no_name = corral("api-key", "create", *data)
    assert no_name.returncode == 2 and "--name" in no_name.stderr
    blank = corral("api-key", "create", "--name", " ", *data)
    assert blank.returncode == 1 and "needs a name" in blank.stderr
    unknown = corral("api-key", "revoke", "nope", *data)
    assert unknown.returncode == 1 and "no API key has the id or name 'nope'" in unknown.stderr


def test_an_empty_key_list_says_how_to_make_one(chat_node: LiveNode) -> None:
    result = corral("api-key", "list", "--data-dir", str(chat_node.data_dir))
    assert result.returncode == 0 and result.stdout == ""
    assert "corral api-key create" in result.stderr
    assert json.loads(corral("api-key", "list", "--json", "--data-dir", str(chat_node.data_dir)).stdout) == []
