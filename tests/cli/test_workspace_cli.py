"""`corral login`, `corral workspaces|members|runs|artifacts`: the product from a terminal, as a person."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from tests.conftest import LiveNode

CORRAL = [sys.executable, "-m", "corral"]


def corral(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CORRAL_ADMIN_KEY", "CORRAL_TOKEN")}
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=120, input=stdin,
                          env={**clean, **(env or {})})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """A one-line error on stderr, exit status 1, nothing on stdout."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    error = result.stderr.strip()
    assert error.startswith("Error: ") and "\n" not in error and "Traceback" not in error, error
    for word in words:
        assert word in error, error
    return error


@pytest.mark.parametrize("command", [["login"], ["logout"], ["workspaces"], ["workspaces", "ls"], ["workspaces", "create"],
                                     ["workspaces", "rm"], ["workspaces", "keys", "create"], ["workspaces", "keys", "ls"],
                                     ["workspaces", "keys", "revoke"], ["members"], ["members", "ls"], ["members", "add"],
                                     ["members", "rm"], ["members", "role"], ["runs"], ["runs", "ls"], ["runs", "show"],
                                     ["runs", "start"], ["runs", "cancel"], ["artifacts"], ["artifacts", "ls"],
                                     ["artifacts", "show"], ["artifacts", "capture"], ["artifacts", "approve"], ["artifacts", "reject"],
                                     ["artifacts", "download"]])
def test_every_product_command_has_help_with_an_example_or_its_options(command: list[str]) -> None:
    result = corral(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    if len(command) == 1:
        assert "Example" in result.stdout
    else:
        assert "--json" in result.stdout and "--url" in result.stdout


def test_a_person_manages_a_workspace_and_the_role_rules_apply_to_them(live_node: LiveNode) -> None:
    where = ("--data-dir", str(live_node.data_dir))
    refused(corral("workspaces", "ls", *where), "not signed in", "corral login")

    signed_in = ok(corral("login", *where))
    assert "signed in to" in signed_in and live_node.url in signed_in
    workspace = json.loads(ok(corral("workspaces", "create", "Research", *where, "--json")))["_id"]
    listed = ok(corral("workspaces", "ls", *where))
    assert "Research" in listed and "owner" in listed and listed.splitlines()[0].split()[:3] == ["ID", "NAME", "ROLE"]

    bob = ok(corral("token", "mint", "--subject", "bob", "--name", "Bob", "--email", "bob@example.com", *where)).strip()
    as_bob = {"CORRAL_TOKEN": bob}
    bobs_login = ok(corral("login", "--subject", "bob", "--email", "bob@example.com", "--data-dir",
                           str(live_node.data_dir.parent / "bob"), "--url", live_node.url, "--admin-key", live_node.admin_key))
    bob_id = re.search(r"\((\S+\|bob)\)", bobs_login).group(1)  # type: ignore[union-attr]  # his profile exists now
    members_before = json.loads(ok(corral("members", "ls", workspace, *where, "--json")))
    ok(corral("members", "add", workspace, "bob@example.com", *where))
    members_after = ok(corral("members", "ls", workspace, *where))
    assert "bob@example.com" in members_after and "member" in members_after
    assert json.loads(ok(corral("members", "ls", workspace, *where, "--json"))) != members_before

    # bob sees the workspace as a member and may not change roles
    bobs = json.loads(ok(corral("workspaces", "ls", *where, "--json", env=as_bob)))
    assert [(w["_id"], w["role"]) for w in bobs] == [(workspace, "member")]
    refused(corral("members", "role", workspace, bob_id, "admin", *where, env=as_bob), "admin role")
    refused(corral("workspaces", "rm", workspace, "--yes", *where, env=as_bob), "owner")

    # a stranger is told nothing about the workspace
    stranger = ok(corral("token", "mint", "--subject", "eve", *where)).strip()
    assert json.loads(ok(corral("workspaces", "ls", *where, "--json", env={"CORRAL_TOKEN": stranger}))) == []
    refused(corral("members", "ls", workspace, *where, env={"CORRAL_TOKEN": stranger}))

    # bad input: a clear error, exit 1 or usage error 2
    refused(corral("workspaces", "create", "x" * 500, *where), "name")
    assert corral("members", "role", workspace, bob_id, "emperor", *where).returncode == 2
    refused(corral("members", "add", workspace, "bob@example.com", *where), "already")

    ok(corral("members", "role", workspace, bob_id, "admin", *where))
    assert "admin" in ok(corral("members", "ls", workspace, *where))
    ok(corral("members", "rm", workspace, bob_id, *where))
    assert json.loads(ok(corral("workspaces", "ls", *where, "--json", env=as_bob))) == []

    ok(corral("logout", *where))
    refused(corral("workspaces", "ls", *where), "corral login")


def test_runs_and_artifacts_from_the_cli(live_node: LiveNode) -> None:
    where = ("--data-dir", str(live_node.data_dir))
    ok(corral("login", *where))
    workspace = json.loads(ok(corral("workspaces", "create", "Jobs", *where, "--json")))["_id"]
    started = json.loads(ok(corral("runs", "start", workspace, *where, "--json")))
    assert started["status"] == "running" and started["sandbox_id"]
    listed = ok(corral("runs", "ls", workspace, *where))
    assert started["_id"] in listed and "running" in listed
    assert started["_id"] in ok(corral("runs", "ls", workspace, "--status", "running", *where))
    shown = ok(corral("runs", "show", started["_id"], *where))
    assert "booting" in shown and "running" in shown  # the state history

    # a workspace key sees exactly the workspace's sandboxes through the E2B API
    exports = dict(line.removeprefix("export ").split("=", 1)
                   for line in ok(corral("workspaces", "keys", "create", workspace, "--name", "ci", "--e2b-env", *where)).splitlines())
    assert exports["E2B_API_URL"] == live_node.url + "/e2b"
    listed_by_key = httpx.get(exports["E2B_API_URL"] + "/sandboxes", headers={"X-API-KEY": exports["E2B_API_KEY"]}, timeout=30)
    assert [s["sandboxID"] for s in listed_by_key.json()] == [started["sandbox_id"]]
    keys = json.loads(ok(corral("workspaces", "keys", "ls", workspace, *where, "--json")))
    assert [(k["name"], k["revoked"]) for k in keys] == [("ci", None)]
    from e2b import Sandbox

    Sandbox.connect(started["sandbox_id"], api_key=exports["E2B_API_KEY"], api_url=exports["E2B_API_URL"],
                    sandbox_url=exports["E2B_SANDBOX_URL"]).files.write("/home/user/report.csv", "a,b\n1,2\n")
    captured = json.loads(ok(corral("artifacts", "capture", started["_id"], "/home/user/report.csv", *where, "--json")))
    assert (captured["title"], captured["review_state"]) == ("report.csv", "pending")
    assert captured["_id"] in ok(corral("artifacts", "ls", "--pending", workspace, *where))
    assert "a,b" in ok(corral("artifacts", "show", captured["_id"], *where))  # its text preview
    approved = json.loads(ok(corral("artifacts", "approve", captured["_id"], "--comment", "right", *where, "--json")))
    assert approved["review_state"] == "approved"
    assert ok(corral("artifacts", "download", captured["_id"], "-o", "-", *where)) == "a,b\n1,2\n"
    refused(corral("artifacts", "capture", started["_id"], "/etc/passwd", *where), "/etc/passwd")
    ok(corral("workspaces", "keys", "revoke", workspace, keys[0]["id"], *where))
    assert httpx.get(exports["E2B_API_URL"] + "/sandboxes", headers={"X-API-KEY": exports["E2B_API_KEY"]}, timeout=30).status_code == 401
    refused(corral("workspaces", "keys", "create", workspace, "--name", "x" * 200, *where), "name")

    assert ok(corral("artifacts", "ls", "--pending", workspace, *where)).strip() == "(none)"
    assert corral("artifacts", "ls", *where).returncode == 2  # neither --run nor --pending

    canceled = json.loads(ok(corral("runs", "cancel", started["_id"], *where, "--json")))
    assert canceled["status"] == "canceled"
    refused(corral("runs", "cancel", started["_id"], *where), "canceled")
    refused(corral("runs", "show", "not-an-id", *where))
