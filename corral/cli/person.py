"""The CLI acting as a person: the user token `corral login` saved, sent as a Convex client sends it.

A login is kept per node URL in `<data dir>/cli_logins.json` (mode 0600), so that the role rules
apply to CLI commands exactly as they do in the console.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from .deployment import Deployment, request_json

LOGINS_FILE = "cli_logins.json"
REFRESH_MARGIN = 60.0  # refresh a saved login's token this many seconds before it expires


def _logins_path(deployment: Deployment) -> Path:
    return Path(deployment.settings.data_dir) / LOGINS_FILE


def saved_logins(deployment: Deployment) -> dict[str, dict[str, Any]]:
    try:
        found = json.loads(_logins_path(deployment).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def save_login(deployment: Deployment, url: str, login: dict[str, Any]) -> Path:
    """Keep `login` ({token, expiresAt, subject}) for the node at `url`; returns the file written."""
    logins = saved_logins(deployment)
    logins[url] = login
    return _write(deployment, logins)


def forget_login(deployment: Deployment, url: str) -> bool:
    logins = saved_logins(deployment)
    if logins.pop(url, None) is None:
        return False
    _write(deployment, logins)
    return True


def _write(deployment: Deployment, logins: dict[str, dict[str, Any]]) -> Path:
    path = _logins_path(deployment)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(logins, out, indent=2)
    return path


def node_url(deployment: Deployment) -> str:
    url = deployment.target.url
    if not url:
        raise click.ClickException(f"no node is running for {deployment.settings.data_dir}: start one with "
                                   f"`corral up`, or pass --url")
    return url


def person_token(deployment: Deployment, token: str | None) -> str:
    """The token to act with: the one given, else the saved login for this node (refreshed near its end)."""
    if token:
        return token.strip()
    url = node_url(deployment)
    login = saved_logins(deployment).get(url)
    if not login or not login.get("token"):
        raise click.ClickException(f"you are not signed in to {url}: run `corral login` (or set CORRAL_TOKEN)")
    if login.get("refreshToken") and float(login.get("expiresAt") or 0) - REFRESH_MARGIN <= time.time():
        fresh = post_auth(url, "/session/refresh", {"refreshToken": login["refreshToken"]})
        login.update(token=fresh["token"], expiresAt=fresh["expiresAt"])
        save_login(deployment, url, login)
    return str(login["token"])


def post_auth(url: str, route: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the node's sign-in endpoints (/api/auth/session…); their refusal becomes the command's error."""
    status, payload = request_json("POST", f"{url}/api/auth{route}", body, timeout=30)
    if status != 200:
        message = payload.get("message") if isinstance(payload, dict) else None
        hint = ": run `corral login` again" if route == "/session/refresh" else ""
        raise click.ClickException(f"{message or f'{url} answered HTTP {status}'}{hint}")
    return dict(payload)


def call_as_person(deployment: Deployment, kind: str, path: str, args: dict[str, Any], *, token: str | None = None,
                   url: str | None = None) -> Any:
    """Run a public function as the signed-in person; its error's message becomes the command's error."""
    url = url or node_url(deployment)
    bearer = person_token(deployment, token)
    status, payload = request_json("POST", f"{url}/api/{kind}", {"path": path, "args": args, "format": "json"},
                                   {"Authorization": f"Bearer {bearer}"})
    if status == 401 or (isinstance(payload, dict) and payload.get("code") == "Unauthenticated"):
        raise click.ClickException(f"{url} refused your sign-in ({payload.get('message', 'expired?')}): run `corral login` again")
    if not isinstance(payload, dict) or payload.get("status") not in ("success", "error"):
        message = payload.get("message") if isinstance(payload, dict) else None
        raise click.ClickException(str(message or f"{url} answered HTTP {status}"))
    if payload["status"] == "error":
        data = payload.get("errorData")
        message = data.get("message") if isinstance(data, dict) else None
        raise click.ClickException(str(message or payload.get("errorMessage", "error")))
    return payload.get("value")
