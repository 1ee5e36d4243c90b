"""`corral token` and `corral api-key`: user tokens from the node's own issuer, and machine keys.

Like `corral run`, each command goes through the node recorded in the data directory (with the
admin key) when one is running, or through `--url`; otherwise it opens the store directly
(the data directory's SQLite file, or `--database`).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from corral.engine.errors import ConfigError, CorralError
from corral.engine.settings import Settings

from .locate import Target, locate

DATA_DIR_HELP = "Data directory of the deployment. Default: $XDG_DATA_HOME/corral, or $CORRAL_DATA_DIR."
URL_HELP = "The node to go through. Default: the node recorded in the data directory, if it runs."
DATABASE_HELP = "Open this database directly instead of going through a node."
ADMIN_KEY_HELP = "The admin key, for --url to a node whose data directory is elsewhere. Default: $CORRAL_ADMIN_KEY or the data directory's key."

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

F = TypeVar("F", bound=Callable[..., Any])


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `1h30m`, `7d`, `2w` → seconds; refuses anything else, and 0."""
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    else:
        parts = _DURATION_PART.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise click.BadParameter(f"{text!r} is not a duration; use e.g. 90s, 15m, 1h, 1h30m, 7d", param_hint="--ttl")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise click.BadParameter(f"{text!r}: a token's lifetime must be more than 0 seconds", param_hint="--ttl")
    return seconds


def _location_options(fn: F) -> F:
    fn = click.option("--admin-key", "admin_key", envvar="CORRAL_ADMIN_KEY", default=None, help=ADMIN_KEY_HELP)(fn)
    fn = click.option("--database", default=None, metavar="URL", help=DATABASE_HELP)(fn)
    fn = click.option("--url", default=None, help=URL_HELP)(fn)
    fn = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=DATA_DIR_HELP)(fn)
    return fn


class Deployment:
    """Where a command acts: a running node over HTTP, or the store opened directly."""

    def __init__(self, data_dir: Path | None, url: str | None, database: str | None, admin_key: str | None) -> None:
        try:
            self.settings = Settings.load({"data_dir": data_dir, "database_url": database})
        except ConfigError as exc:
            raise click.ClickException(exc.message) from None
        self.settings.data_dir = Path(self.settings.data_dir).absolute()  # printed in hints: valid from anywhere
        self.target: Target = locate(self.settings.data_dir, url, database)
        if admin_key:
            self.target.admin_key = admin_key.strip()

    # -- through a node
    def call(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        url = self.target.url
        assert url is not None
        if not self.target.admin_key:
            raise click.ClickException(f"no admin key for {url}: pass --admin-key or set CORRAL_ADMIN_KEY "
                                       "(`corral admin-key` prints it where the node's data lives)")
        try:
            response = httpx.request(method, url + route, json=body,
                                     headers={"Authorization": f"Convex {self.target.admin_key}"}, timeout=60)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {url}: {exc}") from None
        try:
            payload = response.json()
        except ValueError:
            raise click.ClickException(f"{url}{route} answered HTTP {response.status_code}: {response.text[:200]}") from None
        if response.status_code != 200:
            message = payload.get("message") if isinstance(payload, dict) else None
            if response.status_code == 404:
                message = f"{url} does not serve {route}: is it a Corral node with auth?"
            raise click.ClickException(message or f"{url}{route} answered HTTP {response.status_code}")
        return payload

    # -- on the store
    def open_node(self) -> Any:
        from corral.node import Node

        if not self.target.database and not Path(self.settings.data_dir).exists():
            raise click.ClickException(f"no node is running for {self.settings.data_dir} and it holds no data; start one "
                                       f"with `corral serve --data-dir {self.settings.data_dir}`, or pass --url")
        try:
            node = Node(self.settings)
            node.start(serving=False)
        except CorralError as exc:
            raise click.ClickException(exc.message) from None
        return node


def call_function(deployment: Deployment, path: str, args: dict[str, Any]) -> Any:
    """Run a function (internal ones too) as the admin: through the node, or on the store when none runs."""
    if deployment.target.url:
        result = deployment.call("POST", "/api/function", {"path": path, "args": args, "format": "json"})
        if result.get("status") == "error":
            data = result.get("errorData")
            message = data.get("message") if isinstance(data, dict) else None
            raise click.ClickException(str(message or result.get("errorMessage", "error")))
        return result.get("value")

    def work(node: Any) -> Any:
        from corral.engine.auth import Caller
        from corral.engine.errors import ConvexError
        from corral.engine.values import decode, encode_clean

        spec = node.registry.get(path)
        try:
            value, _ts = asyncio.run(node.engine.call(spec.kind, path, decode(args), Caller.admin()))
        except ConvexError as exc:
            data = exc.data if isinstance(exc.data, dict) else {}
            raise click.ClickException(str(data.get("message", exc.message))) from None
        return encode_clean(value)

    return _direct(deployment, work)


def _direct(deployment: Deployment, work: Callable[[Any], Any]) -> Any:
    node = deployment.open_node()
    try:
        return work(node)
    except CorralError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        node.stop()


# -- corral token ----------------------------------------------------------------------------------

@click.group()
def token() -> None:
    """User tokens signed by the deployment's own issuer.

    \b
    Example:
      corral token mint --subject ada --name "Ada Lovelace" --email ada@example.com --ttl 1h
    """


def _claims(pairs: tuple[str, ...]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--claim")
        try:
            claims[name] = json.loads(raw)
        except ValueError:
            claims[name] = raw
    return claims


@token.command()
@click.option("--subject", required=True, help="The user's stable id: the token's 'sub'.")
@click.option("--name", default=None, help="The user's display name (the 'name' claim).")
@click.option("--email", default=None, help="The user's email (the 'email' claim).")
@click.option("--ttl", default=None, metavar="DURATION",
              help="Lifetime: 90s, 15m, 1h, 7d… Default: the auth_token_ttl setting (1h).")
@click.option("--claim", "claim_pairs", multiple=True, metavar="NAME=VALUE",
              help="An extra claim; VALUE is JSON if it parses as JSON, else a string. Repeatable.")
@_location_options
def mint(subject: str, name: str | None, email: str | None, ttl: str | None, claim_pairs: tuple[str, ...],
         data_dir: Path | None, url: str | None, database: str | None, admin_key: str | None) -> None:
    """Print a signed user token (a JWT) for the user --subject names, and nothing else.

    Send it as `Authorization: Bearer <token>`, or give it to a Convex client (`setAuth`). The
    node verifies it with its own key, which it publishes at /api/auth/jwks.json.

    \b
    Examples:
      corral token mint --subject ada --name "Ada Lovelace" --email ada@example.com
      TOKEN=$(corral token mint --subject ada --ttl 15m)
      # auth:whoami is a function of examples/chat: run `corral serve --functions examples/chat` first
      curl -s http://127.0.0.1:3210/api/query -H "Authorization: Bearer $TOKEN" \\
        -H 'Content-Type: application/json' -d '{"path": "auth:whoami", "args": {}}'
    """
    lifetime = parse_duration(ttl) if ttl is not None else None
    claims = _claims(claim_pairs)
    deployment = Deployment(data_dir, url, database, admin_key)
    if deployment.target.url:
        body = {"subject": subject, "name": name, "email": email, "ttl": lifetime, "claims": claims or None}
        minted = deployment.call("POST", "/api/auth/tokens", {k: v for k, v in body.items() if v is not None})
        click.echo(minted["token"])
        return

    def work(node: Any) -> str:
        return str(node.auth.mint(subject, ttl=lifetime, name=name, email=email, claims=claims or None)[0])

    click.echo(_direct(deployment, work))


# -- corral api-key --------------------------------------------------------------------------------

@click.group("api-key")
def api_key() -> None:
    """API keys for machines: runners, SDKs, E2B clients.

    \b
    Examples:
      corral api-key create --name ci                  # prints e2b_… once
      corral api-key create --name builder-1 --kind runner
      corral api-key list
      corral api-key revoke ci
    """


@api_key.command()
@click.option("--name", required=True, help="What the key is for; unique among active keys.")
@click.option("--kind", type=click.Choice(["client", "runner"]), default="client", show_default=True,
              help="client: calls functions as itself. runner: only registers a runner and reports.")
@_location_options
def create(name: str, kind: str, data_dir: Path | None, url: str | None, database: str | None, admin_key: str | None) -> None:
    """Create an API key and print it, and nothing else: it is shown only this once.

    The key is `e2b_` and 40 hex digits, usable as `Authorization: Bearer <key>`, as `X-API-Key`,
    and as `E2B_API_KEY` for the e2b SDK.

    \b
    Examples:
      corral api-key create --name ci
      export E2B_API_KEY=$(corral api-key create --name sdk)
    """
    deployment = Deployment(data_dir, url, database, admin_key)
    if deployment.target.url:
        created = deployment.call("POST", "/api/auth/api_keys", {"name": name, "kind": kind})
        secret, record = created["key"], created
    else:
        def work(node: Any) -> tuple[str, dict[str, Any]]:
            made_secret, made = asyncio.run(node.auth.api_keys.create(name, kind))
            return made_secret, made.public()

        secret, record = _direct(deployment, work)
    click.echo(secret)
    click.echo(f"Created {record['kind']} key {record['name']!r} (id {record['id']}). Store it now: it is not shown again.",
               err=True)


def format_time(ms: float | None) -> str:
    """A time in milliseconds, in UTC, for tables; "-" for none."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows (the first one the header) as left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@api_key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@_location_options
def list_keys(as_json: bool, data_dir: Path | None, url: str | None, database: str | None, admin_key: str | None) -> None:
    """List API keys (never the keys themselves: their id, name, kind and a hint).

    \b
    Examples:
      corral api-key list
      corral api-key list --json
    """
    deployment = Deployment(data_dir, url, database, admin_key)
    if deployment.target.url:
        keys = deployment.call("GET", "/api/auth/api_keys")["keys"]
    else:
        keys = _direct(deployment, lambda node: [r.public() for r in asyncio.run(node.auth.api_keys.list())])
    if as_json:
        click.echo(json.dumps(keys, indent=2))
        return
    if not keys:
        click.echo("No API keys yet: create one with `corral api-key create --name NAME`.", err=True)
        return
    rows = [("ID", "NAME", "KIND", "KEY", "CREATED", "REVOKED")]
    rows += [(k["id"], k["name"], k["kind"], k["hint"], format_time(k["created"]), format_time(k["revoked"])) for k in keys]
    print_table(rows)


@api_key.command()
@click.argument("key")
@_location_options
@click.option("--kill-sandboxes", is_flag=True, help="Also kill the key's running and paused sandboxes.")
def revoke(key: str, kill_sandboxes: bool, data_dir: Path | None, url: str | None, database: str | None,
           admin_key: str | None) -> None:
    """Revoke KEY (its id, its name, or the key itself): every node refuses it from then on.

    Its sandboxes keep running until they time out: the command says how many there are;
    --kill-sandboxes kills them too (or `corral sandbox kill ID`).

    \b
    Examples:
      corral api-key revoke ci
      corral api-key revoke 3f9a1c2b7d4e --kill-sandboxes
    """
    deployment = Deployment(data_dir, url, database, admin_key)
    if deployment.target.url:
        record = deployment.call("POST", "/api/auth/api_keys/revoke", {"key": key})
        already = bool(record.get("alreadyRevoked"))
    else:
        def work(node: Any) -> tuple[dict[str, Any], bool]:
            revoked, now = asyncio.run(node.auth.api_keys.revoke(key))
            return revoked.public(), not now

        record, already = _direct(deployment, work)
    if already:
        click.echo(f"The {record['kind']} key {record['name']!r} (id {record['id']}) was already revoked at {format_time(record['revoked'])}.")
    else:
        click.echo(f"Revoked the {record['kind']} key {record['name']!r} (id {record['id']}).")
    owner = f"api-key|{record['id']}"
    sandboxes = call_function(deployment, "sandboxes:admin_list", {"owner": owner})
    if not sandboxes:
        return
    if kill_sandboxes:
        for doc in sandboxes:
            call_function(deployment, "sandboxes:admin_kill", {"sandbox_id": doc["sandbox_id"]})
        click.echo(f"Killed its {len(sandboxes)} running or paused sandbox{'es' if len(sandboxes) != 1 else ''}.")
        return
    ids = " ".join(doc["sandbox_id"] for doc in sandboxes)
    if len(sandboxes) == 1:
        owned, them = "1 running or paused sandbox, which keeps running until it times out", "it"
    else:
        owned, them = f"{len(sandboxes)} running or paused sandboxes, which keep running until they time out", "them"
    click.echo(f"It still owns {owned}: kill {them} with `corral sandbox kill {ids}` (or revoke with "
               f"--kill-sandboxes; `corral sandbox list --owner {shlex.quote(owner)}` lists {them}).")


def _register() -> None:
    """Add `corral token` and `corral api-key` to the `corral` group (main.py imports this module)."""
    from .main import main

    main.add_command(token)
    main.add_command(api_key)


_register()
