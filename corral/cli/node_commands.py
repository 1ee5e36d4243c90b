"""`corral serve`, `corral up`, `corral admin-key` and `corral run`: a node, its key, and calling its functions."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import click

from corral.engine.errors import ConfigError, CorralError
from corral.engine.settings import Settings
from corral.listen import ListenError, bind

from . import logs
from .locate import locate, read_admin_key

DATA_DIR_HELP = "Data directory (SQLite file, keys, node.json). Default: $XDG_DATA_HOME/corral, or $CORRAL_DATA_DIR."


def _settings(**overrides: Any) -> Settings:
    """The settings a command acts on; the data directory made absolute, so that the commands it
    prints (`corral admin-key --data-dir …`) work from any working directory."""
    try:
        settings = Settings.load({k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    settings.data_dir = Path(settings.data_dir).absolute()
    return settings


# Fields that hold secrets inside the fleet: a sandbox's envd access token, a runner's secret.
HIDDEN_FIELDS = frozenset({"access_token", "secret"})


def _shown(value: Any) -> Any:
    """A function's result as `corral run` prints it: secrets replaced by "<hidden>"."""
    if isinstance(value, dict):
        return {k: "<hidden>" if k in HIDDEN_FIELDS and v else _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


def _self_command() -> str:
    """How this command was invoked, so printed hints work when `corral` is not on PATH."""
    invoked = sys.argv[0]
    if invoked.endswith("__main__.py"):
        return f"{sys.executable} -m corral"
    if shutil.which(Path(invoked).name) == invoked or "/" not in invoked:
        return Path(invoked).name
    return invoked


def _serve(settings: Settings) -> None:
    import uvicorn

    from corral.node import Node

    logs.configure(level="info")
    try:  # the port first: a node that cannot serve must not open the data directory or adopt sandboxes
        listener = bind(settings.host, settings.port, "node")
    except ListenError as exc:
        click.echo(f"corral: {exc}", err=True)
        sys.exit(1)
    try:
        node = Node(settings)
        node.start()
    except CorralError as exc:
        listener.close()
        click.echo(f"corral: cannot start: {exc.message}", err=True)
        sys.exit(2)

    class NodeServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                node.announce()
                click.echo(f"Corral is running at {node.url}")
                link, _expires = node.auth.login_link()
                click.echo(f"  console:   {link}")
                click.echo(f"             (signs you in as {settings.auth_local_subject!r}, once; "
                           f"another: {_self_command()} login-link --data-dir {settings.data_dir})")
                click.echo(f"  data:      {settings.data_dir}")
                click.echo(f"  admin key: {_self_command()} admin-key --data-dir {settings.data_dir}")
                click.echo(f"  e2b SDK:   eval \"$({_self_command()} e2b env --data-dir {settings.data_dir})\"")
                click.echo("  stop:      Ctrl+C")

    config = uvicorn.Config(node.app, host=settings.host, port=settings.port, log_level="warning",
                            ws="websockets-sansio", lifespan="on", ws_max_size=32 << 20,
                            ws_ping_interval=settings.ping_interval, ws_ping_timeout=settings.client_timeout,
                            timeout_graceful_shutdown=5)
    server = NodeServer(config)
    # uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the signal again with the
    # handler it found: make that a KeyboardInterrupt for both, so that the node is stopped below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass  # Ctrl+C or SIGTERM is how a node is stopped: uvicorn has shut down gracefully
    except SystemExit:
        pass  # uvicorn exits when it cannot start serving; say so below
    finally:
        node.stop()
        listener.close()
    if not server.started:
        click.echo(f"corral: could not serve on {settings.host}:{settings.port}", err=True)
        sys.exit(1)


@click.command()
@click.option("--host", default=None, help="Interface to listen on. Default 127.0.0.1.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port to listen on. Default 3210.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("--database", default=None, metavar="URL",
              help="postgresql://… to store data in PostgreSQL (or $CORRAL_DATABASE_URL). Default: SQLite in the data directory.")
@click.option("--functions", "functions_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder of your functions (schema.py plus one module per domain) to serve next to Corral's own.")
def serve(host: str | None, port: int | None, data_dir: Path | None, database: str | None, functions_dir: Path | None) -> None:
    """Run a Corral node.

    \b
    Examples:
      corral serve --port 3210 --data-dir ./data
      corral serve --functions examples/chat
      corral serve --database postgresql://postgres@127.0.0.1:5432/corral
    """
    _serve(_settings(host=host, port=port, data_dir=data_dir, database_url=database, functions_dir=functions_dir))


@click.command()
@click.option("--functions", "functions_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder of your functions to serve next to Corral's own.")
def up(functions_dir: Path | None) -> None:
    """Run Corral on its embedded default: http://127.0.0.1:3210, SQLite in ~/.local/share/corral.

    Another port or data directory: set CORRAL_PORT or CORRAL_DATA_DIR, or use `corral serve`,
    which takes --port, --data-dir and --database.

    \b
    Examples:
      corral up
      CORRAL_PORT=3300 corral up
    """
    _serve(_settings(functions_dir=functions_dir))


@click.command("admin-key")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("--database", default=None, metavar="URL", help="Read the key from this database instead of the data directory.")
def admin_key(data_dir: Path | None, database: str | None) -> None:
    """Print the admin key (use it as `Authorization: Convex <key>`). Prints only the key.

    \b
    Example:
      curl -H "Authorization: Convex $(corral admin-key)" ...
    """
    settings = _settings(data_dir=data_dir, database_url=database)
    key = None if database else read_admin_key(settings.data_dir)
    if key is None:
        key = _key_from_store(settings)
    if key is None:
        raise click.ClickException(f"no admin key yet in {settings.data_dir}: start a node there first (corral serve --data-dir {settings.data_dir})")
    click.echo(key)


def _key_from_store(settings: Settings) -> str | None:
    """The admin key as the database holds it, read without starting a node."""
    import sqlite3

    import psycopg

    from corral.engine.storage import is_postgres, sqlite_file

    query = "SELECT value FROM _meta WHERE key = 'admin_key'"
    if is_postgres(settings.database_url):
        try:
            with psycopg.connect(settings.database_url, connect_timeout=10) as conn:  # type: ignore[arg-type]
                row = conn.execute(query).fetchone()
        except psycopg.Error as exc:
            raise click.ClickException(f"cannot read the admin key from {settings.database_url}: {exc}") from None
        return str(row[0]) if row else None
    path = sqlite_file(settings.database_url, settings.sqlite_path)
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as sconn:
            srow = sconn.execute(query).fetchone()
    except sqlite3.Error:
        return None
    return str(srow[0]) if srow else None


@click.command()
@click.argument("path")
@click.argument("args", default="{}")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("--url", default=None, help="The node to call. Default: the node recorded in the data directory.")
@click.option("--database", default=None, metavar="URL", help="Open this database directly instead of going through a node.")
@click.option("--functions", "functions_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Your functions folder, needed when opening the store directly.")
def run(path: str, args: str, data_dir: Path | None, url: str | None, database: str | None, functions_dir: Path | None) -> None:
    """Run a function as the admin and print its result as JSON.

    \b
    Examples:
      corral run messages:send '{"author": "ada", "body": "hi"}'
      corral run messages:list
    """
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"ARGS must be a JSON object: {exc}") from None
    if not isinstance(parsed, dict):
        raise click.ClickException("ARGS must be a JSON object")
    settings = _settings(data_dir=data_dir, database_url=database, functions_dir=functions_dir)
    target = locate(settings.data_dir, url, database)
    if target.url:
        import httpx

        headers = {"Authorization": f"Convex {target.admin_key}"} if target.admin_key else {}
        try:
            response = httpx.post(target.url + "/api/function", json={"path": path, "args": parsed, "format": "json"},
                                  headers=headers, timeout=60)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {target.url}: {exc}") from None
        body = response.json()
        if response.status_code != 200:
            raise click.ClickException(body.get("message", response.text))
        if body.get("status") == "error":
            raise click.ClickException(_describe_failure(body.get("errorMessage", "error"), body.get("errorData")))
        click.echo(json.dumps(_shown(body.get("value")), indent=2))
        return
    if not target.database and not Path(settings.data_dir).exists():
        raise click.ClickException(f"no node is running for {settings.data_dir} and it holds no data; start one with "
                                   f"`corral serve --data-dir {settings.data_dir}`, or pass --url")
    click.echo(json.dumps(_shown(_run_direct(settings, path, parsed)), indent=2))


def _describe_failure(message: str, data: Any) -> str:
    return message if data is None else f"{message}\nerror data: {json.dumps(data)}"


def _run_direct(settings: Settings, path: str, args: dict[str, Any]) -> Any:
    from corral.engine.auth import Caller
    from corral.engine.errors import ConvexError, FunctionError, path_hint
    from corral.engine.values import decode, encode_clean
    from corral.node import Node

    node = Node(settings)
    try:
        node.start(serving=False)
    except CorralError as exc:
        raise click.ClickException(exc.message) from None
    try:
        spec = node.registry.get(path)
        if spec is None:
            hint = path_hint(path) or ("" if settings.functions_dir else
                                       " (no node is running, so pass --functions DIR to load your functions)")
            raise click.ClickException(f"there is no function '{path}'{hint}")
        value, _ts = asyncio.run(node.engine.call(spec.kind, path, decode(args), Caller.admin()))
        return encode_clean(value)
    except ConvexError as exc:
        raise click.ClickException(_describe_failure(exc.message, encode_clean(exc.data))) from None
    except FunctionError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        node.stop()
