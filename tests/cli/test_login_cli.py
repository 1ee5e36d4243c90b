"""Sign-in links from the CLI: the one `corral serve`/`up` prints, `corral login-link`, `corral login --link`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import LiveNode

CORRAL = [sys.executable, "-m", "corral"]


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CORRAL_ADMIN_KEY", "CORRAL_TOKEN")}
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=120, env=clean)


def exchange(url: str, link: str) -> httpx.Response:
    return httpx.post(url + "/api/auth/session", json={"ticket": link.split("#login=", 1)[1]}, timeout=30)


def test_the_node_prints_a_sign_in_link_for_its_local_user(live_node: LiveNode) -> None:
    port = live_node.url.rsplit(":", 1)[1]
    log = (live_node.data_dir.parent / f"node-{port}.log").read_text()
    found = re.search(r"console:\s+(http://\S+/#login=\S+)", log)
    assert found, log
    opened = exchange(live_node.url, found.group(1))
    assert opened.status_code == 200 and opened.json()["subject"] == "local"
    assert exchange(live_node.url, found.group(1)).status_code == 401  # once


def test_login_link_signs_a_browser_in_as_someone_and_login_link_signs_the_cli_in(live_node: LiveNode,
                                                                                  tmp_path: Path) -> None:
    made = corral("login-link", "--subject", "ada", "--name", "Ada Lovelace", "--data-dir", str(live_node.data_dir))
    assert made.returncode == 0, made.stderr
    link = made.stdout.strip()
    assert link.startswith(live_node.url + "/#login=") and "\n" not in link

    elsewhere = tmp_path / "ada-laptop"  # no admin key here: the link is the credential
    signed_in = corral("login", "--link", link, "--data-dir", str(elsewhere))
    assert signed_in.returncode == 0, signed_in.stderr
    assert f"signed in to {live_node.url} as Ada Lovelace" in signed_in.stdout
    saved = json.loads((elsewhere / "cli_logins.json").read_text())[live_node.url]
    assert saved["subject"] == "ada" and saved["refreshToken"] and saved["token"]
    assert (elsewhere / "cli_logins.json").stat().st_mode & 0o777 == 0o600

    again = corral("login", "--link", link, "--data-dir", str(tmp_path / "eve"))
    assert again.returncode == 1 and "already used" in again.stderr


def test_a_bad_link_or_no_admin_key_is_refused_with_what_to_do(live_node: LiveNode, tmp_path: Path) -> None:
    bad = corral("login", "--link", "http://127.0.0.1:3210/nothing", "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "http://HOST:PORT/#login=TICKET" in bad.stderr
    keyless = corral("login-link", "--subject", "ada", "--url", live_node.url, "--data-dir", str(tmp_path / "none"))
    assert keyless.returncode == 1 and "admin key" in keyless.stderr and keyless.stdout == ""
