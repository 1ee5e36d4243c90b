"""The `corral` command: the group, and every command registered on it."""

from __future__ import annotations

import click

from .auth_commands import api_key, token
from .login_commands import login, login_link, logout
from .node_commands import admin_key, run, serve, up
from .sandbox_commands import e2b, runner, sandbox, template
from .workspace_commands import artifacts, members, runs, workspaces


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="corral")
def main() -> None:
    """Corral: a self-hosted, Convex-compatible reactive backend for products that run AI agents.

    \b
    Quick start:
      corral up                                  # serve on http://127.0.0.1:3210; open the console link it prints
      corral login                               # act as yourself from the CLI, as in the console
      corral workspaces create "Research"        # the product: workspaces, members, runs, artifacts
      corral serve --functions examples/chat     # serve your own functions too
      corral admin-key                           # print the admin key
      corral run messages:list                   # call a function
    """


for command in (serve, up, admin_key, run, login_link, login, logout, workspaces, members, runs, artifacts,
                token, api_key, runner, template, sandbox, e2b):
    main.add_command(command)

__all__ = ["main"]
