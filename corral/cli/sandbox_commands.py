"""`corral runner`, `corral template`, `corral sandbox` and `corral e2b`: the execution plane and E2B clients."""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path

import click

from corral.engine.errors import ConfigError
from corral.engine.settings import Settings, default_data_dir

from .deployment import Deployment, call_function, location_options
from .output import format_time, print_table

RUNNER_DATA_DIR_HELP = "Where this runner keeps its sandboxes. Default: $XDG_DATA_HOME/corral/runner."


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT, e.g. 0.0.0.0:3211", param_hint="--listen")
    return host.strip("[]") or "0.0.0.0", int(port)


@click.command()
@click.option("--server", required=True, metavar="URL", help="The Corral node to register with, e.g. http://10.0.0.5:3210.")
@click.option("--key", required=True, envvar="CORRAL_RUNNER_KEY", metavar="KEY",
              help="A runner key (corral api-key create --kind runner). Default: $CORRAL_RUNNER_KEY, which keeps "
                   "the key out of `ps`, where a command-line argument shows.")
@click.option("--listen", "listen", default="127.0.0.1:3211", show_default=True, metavar="HOST:PORT",
              help="Where to serve the data plane that nodes proxy to this runner.")
@click.option("--label", "labels", multiple=True, metavar="LABEL", help="A label for placement (repeatable).")
@click.option("--capacity", type=click.IntRange(0), default=100, show_default=True,
              help="Sandboxes (running and paused) this runner may hold.")
@click.option("--name", default=None, help="The runner's name; keep it across restarts. Default: <hostname>-<port>.")
@click.option("--advertise", default=None, metavar="URL",
              help="The URL nodes reach this runner at. Default: http://HOST:PORT of --listen.")
@click.option("--provider", type=click.Choice(["local", "host"]), default="local", show_default=True,
              help="local: isolated (bubblewrap). host: no isolation, for trusted work only.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=RUNNER_DATA_DIR_HELP)
def runner(server: str, key: str, listen: str, labels: tuple[str, ...], capacity: int, name: str | None,
           advertise: str | None, provider: str, data_dir: Path | None) -> None:
    """Run a sandbox runner here, registered with the node at --server.

    It registers its capacity and labels with a runner key, heartbeats, runs the sandboxes the
    node places on it and serves their data plane on --listen. Its sandboxes outlive it: a
    restart with the same --name and --data-dir adopts them.

    \b
    Example:
      export CORRAL_RUNNER_KEY=$(corral api-key create --name builder-1 --kind runner)
      corral runner --server http://127.0.0.1:3210 --listen 127.0.0.1:3211 --label gpu --capacity 20
    """
    from corral.fleet import ProviderUnavailable
    from corral.listen import ListenError
    from corral.runner.standalone import RunnerOptions, run

    from . import logs

    host, port = _listen(listen)
    try:
        settings = Settings.load()
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    options = RunnerOptions(server=server.rstrip("/"), key=key.strip(), host=host, port=port,
                            data_dir=data_dir or default_data_dir() / "runner", provider=provider, name=name,
                            advertise=advertise, capacity=capacity, labels=list(labels), settings=settings)
    logs.configure(level="info")
    try:
        asyncio.run(run(options))
    except ListenError as exc:
        click.echo(f"corral runner: {exc}", err=True)
        sys.exit(1)
    except ProviderUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        raise click.ClickException(f"cannot run: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - say what went wrong, not a traceback
        message = getattr(exc, "message", None) or str(exc)
        click.echo(f"corral runner: {message}", err=True)
        sys.exit(1)


# -- corral template -----------------------------------------------------------------------------

@click.group()
def template() -> None:
    """Templates of the local sandbox provider: `base` (the host's userland) and root directories.

    \b
    Examples:
      corral template add py312 --rootfs /srv/rootfs/py312
      corral template list
    """


TEMPLATE_DATA_DIR_HELP = ("The data directory of the node or `corral runner` whose sandboxes use the template "
                          "(templates are per runner). Default: $XDG_DATA_HOME/corral, or $CORRAL_DATA_DIR.")


def _template_root(data_dir: Path | None, *, must_exist: bool = True) -> tuple[Path, Path]:
    """(data directory, where its local provider keeps templates). Refuses a data directory that no node or
    runner uses: a template there would serve no sandbox."""
    from corral.cli.locate import running_node_url
    from corral.runner.providers import provider_root

    settings = Settings.load({"data_dir": data_dir})
    directory = Path(settings.data_dir)
    holds_data = directory.is_dir() and any(directory.iterdir())
    if must_exist and not holds_data and running_node_url(directory) is None:
        raise click.ClickException(
            f"no node or runner uses {directory} (nothing runs there and it holds no data): templates are registered "
            "per runner, in the data directory of the node or `corral runner` whose sandboxes use them. Pass that "
            "one with --data-dir (e.g. `corral template add NAME --rootfs DIR --data-dir /var/lib/corral/runner`), "
            f"or start a node there first (`corral serve --data-dir {directory}`)")
    return directory, provider_root("local", directory)


@template.command("add")
@click.argument("name")
@click.option("--rootfs", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The root of an unpacked filesystem, with /bin/bash and /bin/sh (docs/sandboxes.md#templates).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=TEMPLATE_DATA_DIR_HELP)
def template_add(name: str, rootfs: Path, data_dir: Path | None) -> None:
    """Register (or replace) template NAME from the root directory --rootfs, for one runner.

    Sandboxes created with this template see that directory read-only as their root, with a
    generated /etc (no secrets) and their own writable /home/user and /tmp. The root needs
    /bin/bash and /bin/sh: the E2B SDK runs every command with `/bin/bash -l -c`. The runner
    using --data-dir reports the template at its next heartbeat; sandboxes asking for it are
    placed only on runners that have it.

    \b
    Example:
      debootstrap --variant=minbase bookworm /srv/rootfs/bookworm
      corral template add bookworm --rootfs /srv/rootfs/bookworm --data-dir ./data
    """
    from corral.sandbox.local import templates

    directory, root = _template_root(data_dir)
    try:
        added = templates.add(root, name, rootfs)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Template {name!r} registered from {added} in the data directory {directory}; "
               "its runner reports it at its next heartbeat.")


@template.command("remove")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=TEMPLATE_DATA_DIR_HELP)
def template_remove(name: str, data_dir: Path | None) -> None:
    """Unregister template NAME (its root directory stays; running sandboxes keep it).

    \b
    Example:
      corral template remove bookworm --data-dir ./data
    """
    from corral.sandbox.local import templates
    from corral.sandbox.protocol import TemplateNotFound

    directory, root = _template_root(data_dir)
    try:
        templates.remove(root, name)
    except TemplateNotFound:
        raise click.ClickException(f"no template {name!r} in the data directory {directory}; there are: "
                                   f"{', '.join(templates.names(root))}") from None
    click.echo(f"Template {name!r} removed from the data directory {directory}.")


@template.command("list")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=TEMPLATE_DATA_DIR_HELP)
def template_list(data_dir: Path | None) -> None:
    """List the templates of one node or runner: the ones its sandboxes can be created from.

    \b
    Example:
      corral template list --data-dir ./data
    """
    from corral.sandbox.local import templates

    directory, root = _template_root(data_dir, must_exist=False)
    click.echo(f"Templates in the data directory {directory}:", err=True)
    for found, rootfs in templates.registered(root):
        click.echo(f"{found}\t{'(the host userland)' if found == templates.BASE else rootfs}")


# -- corral sandbox -------------------------------------------------------------------------------

@click.group()
def sandbox() -> None:
    """Every owner's sandboxes, for the admin: list them, kill them.

    \b
    Examples:
      corral sandbox list
      corral sandbox kill i3f9a1c2b7d4e5f60718
    """


@sandbox.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also the killed and lost ones (running and paused only by default).")
@click.option("--owner", default=None, metavar="IDENTITY", help="Only this owner's, e.g. 'api-key|3f9a1c2b7d4e' (quoted: `|` is a pipe to the shell).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@location_options
def sandbox_list(show_all: bool, owner: str | None, as_json: bool, data_dir: Path | None, url: str | None,
                 database: str | None, admin_key: str | None) -> None:
    """List the sandboxes of every owner, newest first.

    \b
    Examples:
      corral sandbox list
      corral sandbox list --all --owner 'api-key|3f9a1c2b7d4e'
    """
    import json

    states = ["running", "paused", "lost", "killed"] if show_all else ["running", "paused"]
    deployment = Deployment(data_dir, url, database, admin_key)
    found = call_function(deployment, "corral/sandboxes:admin_list", {"states": states, "owner": owner})
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("No sandboxes." if show_all else "No running or paused sandboxes (--all shows the others).", err=True)
        return
    rows = [("ID", "STATE", "TEMPLATE", "RUNNER", "OWNER", "STARTED")]
    rows += [(d["sandbox_id"], d["state"], d["template"], d["runner"], d["owner"], format_time(d["started_at"])) for d in found]
    print_table(rows)


@sandbox.command("kill")
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="ID...")
@location_options
def sandbox_kill(sandbox_ids: tuple[str, ...], data_dir: Path | None, url: str | None, database: str | None,
                 admin_key: str | None) -> None:
    """Kill sandboxes of any owner: every process, file and mount of each goes.

    \b
    Example:
      corral sandbox kill i3f9a1c2b7d4e5f60718
    """
    deployment = Deployment(data_dir, url, database, admin_key)
    failed = False
    for sandbox_id in sandbox_ids:
        try:
            killed = call_function(deployment, "corral/sandboxes:admin_kill", {"sandbox_id": sandbox_id})
        except click.ClickException as exc:
            click.echo(f"corral sandbox kill: {exc.message}", err=True)
            failed = True
            continue
        click.echo(f"Killed sandbox {sandbox_id} (owner {killed['owner']}, runner {killed['runner']}).")
    if failed:
        sys.exit(1)


# -- corral e2b ---------------------------------------------------------------------------------

@click.group()
def e2b() -> None:
    """Point code written for the e2b SDK at this deployment.

    \b
    Example, with a node running on the default data directory (`corral up`, `make up`):
      eval "$(corral e2b env)"
      python -c "from e2b import Sandbox; print(Sandbox.create().commands.run('echo hi').stdout)"
    For a node started with `corral serve --data-dir DIR`, pass the same --data-dir to `corral e2b env`.
    """


@e2b.command("env")
@click.option("--name", default=None, help="Name of the API key to create. Default: e2b-<random>.")
@location_options
def e2b_env(name: str | None, data_dir: Path | None, url: str | None, database: str | None, admin_key: str | None) -> None:
    """Create an API key through the running node and print the E2B_* variables, as `export` lines.

    It finds the node as the other commands do: --url, else the node running on the data
    directory (--data-dir, default the one `corral up` and `make up` use). Each run creates a
    new key. Without --name the key gets a unique name, so running it again works; with --name,
    save the output once and source it afterwards.

    \b
    Examples:
      eval "$(corral e2b env)"                          # the node of `corral up` / `make up`
      python -c "from e2b import Sandbox; print(Sandbox.create().commands.run('echo hi').stdout)"
      eval "$(corral e2b env --data-dir ./data)"        # a node run with `corral serve --data-dir ./data`
      corral e2b env --name my-agent > .e2b.env         # once, with a name of your own
      . ./.e2b.env                                      # then in every new shell
    """
    deployment = Deployment(data_dir, url, database, admin_key)
    node = deployment.target.url
    if not node:
        raise click.ClickException(f"no node is running for {deployment.settings.data_dir}: start one with "
                                   f"`corral serve --data-dir {deployment.settings.data_dir}`, or pass the "
                                   "--data-dir (or --url) of the node that runs")
    try:
        created = deployment.call("POST", "/api/auth/api_keys", {"name": name or f"e2b-{secrets.token_hex(3)}", "kind": "client"})
    except click.ClickException as exc:
        if name and "already named" in exc.message:
            raise click.ClickException(
                f"{exc.message}; `corral e2b env` creates a key each time it runs: omit --name for a unique one, or "
                f"save the lines once (`corral e2b env --name {name} > .e2b.env`) and `source .e2b.env` in each "
                "new shell") from None
        raise
    click.echo(f"export E2B_API_URL={node}/e2b")
    click.echo(f"export E2B_SANDBOX_URL={node}/envd")
    click.echo(f"export E2B_API_KEY={created['key']}")
    click.echo(f"Created client key {created['name']!r} (id {created['id']}) for the e2b SDK.", err=True)




