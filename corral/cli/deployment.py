"""Where a command acts: the running node of a data directory (with its admin key), a node
named by `--url`, or the store opened directly (the data directory's SQLite file, or `--database`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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

F = TypeVar("F", bound=Callable[..., Any])


def location_options(fn: F) -> F:
    """--data-dir, --url, --database and --admin-key: the options that say where a command acts."""
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
        url = self.target.url
        assert url is not None
        if not self.target.admin_key:
            raise click.ClickException(f"no admin key for {url}: pass --admin-key or set CORRAL_ADMIN_KEY "
                                       "(`corral admin-key` prints it where the node's data lives)")
        status, payload = request_json(method, url + route, body, {"Authorization": f"Convex {self.target.admin_key}"})
        if status != 200:
            message = payload.get("message") if isinstance(payload, dict) else None
            if status == 404:
                message = f"{url} does not serve {route}: is it a Corral node with auth?"
            raise click.ClickException(message or f"{url}{route} answered HTTP {status}")
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


def request_json(method: str, url: str, body: dict[str, Any] | None, headers: dict[str, str] | None = None,
                 timeout: float = 120) -> tuple[int, Any]:
    """An HTTP call to a node and its JSON answer; an unreachable node or an answer that is not JSON
    becomes the command's error."""
    import httpx

    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
    try:
        return response.status_code, response.json()
    except ValueError:
        raise click.ClickException(f"{url} answered HTTP {response.status_code}: {response.text[:200]}") from None


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

    return on_store(deployment, work)


def on_store(deployment: Deployment, work: Callable[[Any], Any]) -> Any:
    node = deployment.open_node()
    try:
        return work(node)
    except CorralError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        node.stop()
