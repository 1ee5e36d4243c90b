"""`corral login-link`, `corral login` and `corral logout`: people signed in, in the console and in the CLI.

`corral login` opens a session with the node's own issuer (a one-time sign-in ticket exchanged
for a user token and a refresh token, corral/engine/auth/sessions.py) and keeps it per node URL
(corral/cli/person.py); the token is refreshed as commands use it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from .deployment import Deployment, location_options, on_store
from .person import call_as_person, forget_login, node_url, post_auth, save_login, saved_logins


@click.command("login-link")
@click.option("--subject", default=None, help="The user's stable id. Default: the node's local user (auth_local_subject).")
@click.option("--name", default=None, help="The user's display name.")
@click.option("--email", default=None, help="The user's email.")
@location_options
def login_link(subject: str | None, name: str | None, email: str | None, data_dir: Path | None, url: str | None,
               database: str | None, admin_key: str | None) -> None:
    """Print a one-time link that signs a browser in to the console as --subject (needs the admin key).

    The link works once, within auth_login_link_ttl (a day by default). `corral up` prints one
    for the node's local user.

    \b
    Examples:
      corral login-link --subject ada --name "Ada Lovelace" --email ada@example.com
      corral login-link                       # the node's local user
    """
    deployment = Deployment(data_dir, url, database, admin_key)
    if deployment.target.url:
        body = {k: v for k, v in {"subject": subject, "name": name, "email": email}.items() if v is not None}
        click.echo(deployment.call("POST", "/api/auth/login_links", body)["url"])
        return
    click.echo(on_store(deployment, lambda node: node.auth.login_link(subject, name=name, email=email)[0]))


@click.command()
@click.option("--subject", default=None, help="Sign in as this user. Default: the node's local user.")
@click.option("--name", default=None, help="The user's display name (with --subject).")
@click.option("--email", default=None, help="The user's email (with --subject).")
@click.option("--link", default=None, metavar="URL", help="A sign-in link someone gave you (`corral login-link`): no admin key needed.")
@location_options
def login(subject: str | None, name: str | None, email: str | None, link: str | None, data_dir: Path | None,
          url: str | None, database: str | None, admin_key: str | None) -> None:
    """Sign the CLI in as a person, so later commands act as them and the role rules apply.

    With the node's admin key it signs in as the local user (or --subject); with --link, as
    whoever the link is for. The session is kept per node URL and its token refreshed as used.

    \b
    Examples:
      corral login                                         # the node's local user
      corral login --subject ada --email ada@example.com   # someone else (admin key)
      corral login --link 'http://127.0.0.1:3210/#login=eyJ…'
    """
    deployment = Deployment(data_dir, url, database, admin_key)
    if link is not None:
        where, ticket = _parse_link(link)
    else:
        body: dict[str, Any] = {k: v for k, v in {"subject": subject, "name": name, "email": email}.items() if v is not None}
        _, ticket = _parse_link(deployment.call("POST", "/api/auth/login_links", body)["url"])
        where = node_url(deployment)  # the URL the CLI reaches the node by, whatever the link says
    session = post_auth(where, "/session", {"ticket": ticket})
    login_record = {k: session.get(k) for k in ("token", "expiresAt", "refreshToken", "refreshExpiresAt", "subject",
                                                "tokenIdentifier", "name", "email")}
    path = save_login(deployment, where, login_record)
    # The person's profile (name, email) exists from their first sign-in, so invitations reach them.
    with contextlib.suppress(click.ClickException):  # a node without Corral's users module: still signed in
        call_as_person(deployment, "mutation", "corral/users:sync_profile", {}, token=session["token"], url=where)
    who = session.get("name") or session.get("email") or session["subject"]
    click.echo(f"You are signed in to {where} as {who} ({session['tokenIdentifier']}); kept in {path}.")


@click.command()
@location_options
def logout(data_dir: Path | None, url: str | None, database: str | None, admin_key: str | None) -> None:
    """Sign the CLI out of a node: its session ends on the node and is forgotten here.

    \b
    Example:
      corral logout
    """
    deployment = Deployment(data_dir, url, database, admin_key)
    where = node_url(deployment)
    record = saved_logins(deployment).get(where) or {}
    if not forget_login(deployment, where):
        click.echo(f"The CLI was not signed in to {where}.")
        return
    if record.get("refreshToken"):
        with contextlib.suppress(click.ClickException):  # forgotten here; it ends by itself at refreshExpiresAt
            post_auth(where, "/session/sign_out", {"refreshToken": record["refreshToken"]})
    click.echo(f"You are signed out of {where}.")


def _parse_link(link: str) -> tuple[str, str]:
    parts = urlsplit(link.strip())
    if parts.scheme not in ("http", "https") or not parts.fragment.startswith("login="):
        raise click.BadParameter("a sign-in link looks like http://HOST:PORT/#login=TICKET", param_hint="--link")
    return f"{parts.scheme}://{parts.netloc}", parts.fragment.removeprefix("login=")
