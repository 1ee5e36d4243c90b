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
from pathlib import Path
from typing import Any

import click

from .deployment import Deployment, call_function, location_options, on_store
from .output import format_time, print_table

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")



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
@location_options
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

    click.echo(on_store(deployment, work))


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
@location_options
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

        secret, record = on_store(deployment, work)
    click.echo(secret)
    click.echo(f"Created {record['kind']} key {record['name']!r} (id {record['id']}). Store it now: it is not shown again.",
               err=True)






@api_key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@location_options
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
        keys = on_store(deployment, lambda node: [r.public() for r in asyncio.run(node.auth.api_keys.list())])
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
@location_options
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

        record, already = on_store(deployment, work)
    if already:
        click.echo(f"The {record['kind']} key {record['name']!r} (id {record['id']}) was already revoked at {format_time(record['revoked'])}.")
    else:
        click.echo(f"Revoked the {record['kind']} key {record['name']!r} (id {record['id']}).")
    owner = f"api-key|{record['id']}"
    sandboxes = call_function(deployment, "corral/sandboxes:admin_list", {"owner": owner})
    if not sandboxes:
        return
    if kill_sandboxes:
        for doc in sandboxes:
            call_function(deployment, "corral/sandboxes:admin_kill", {"sandbox_id": doc["sandbox_id"]})
        click.echo(f"Killed its {len(sandboxes)} running or paused sandbox{'es' if len(sandboxes) != 1 else ''}.")
        return
    ids = " ".join(doc["sandbox_id"] for doc in sandboxes)
    if len(sandboxes) == 1:
        owned, them = "1 running or paused sandbox, which keeps running until it times out", "it"
    else:
        owned, them = f"{len(sandboxes)} running or paused sandboxes, which keep running until they time out", "them"
    click.echo(f"It still owns {owned}: kill {them} with `corral sandbox kill {ids}` (or revoke with "
               f"--kill-sandboxes; `corral sandbox list --owner {shlex.quote(owner)}` lists {them}).")




