"""`corral workspaces`, `corral members`, `corral runs` and `corral artifacts`: the product, as a person.

Every command acts as the person `corral login` signed in (or the token in $CORRAL_TOKEN), so
the server's role rules apply to it exactly as they do in the console.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from .deployment import Deployment, location_options
from .output import format_time, print_table
from .person import call_as_person

F = TypeVar("F", bound=Callable[..., Any])
PAGE = 100


def person_options(fn: F) -> F:
    """Where to act (location options), --token, and --json."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")(fn)
    fn = click.option("--token", envvar="CORRAL_TOKEN", default=None,
                      help="A user token to act as. Default: $CORRAL_TOKEN, else the one `corral login` saved.")(fn)
    return location_options(fn)


class Context:
    def __init__(self, data_dir: Path | None, url: str | None, database: str | None, admin_key: str | None,
                 token: str | None, as_json: bool) -> None:
        self.deployment = Deployment(data_dir, url, None, admin_key)
        if database:
            raise click.UsageError("these commands act as a person through a running node; --database is not for them")
        self.token = token
        self.as_json = as_json

    def call(self, kind: str, path: str, args: dict[str, Any]) -> Any:
        return call_as_person(self.deployment, kind, path, args, token=self.token)

    def all_pages(self, path: str, args: dict[str, Any]) -> list[Any]:
        """Every page of a paginated query (`paginationOpts`), in order."""
        rows: list[Any] = []
        cursor: str | None = None
        while True:
            result = self.call("query", path, {**args, "paginationOpts": {"numItems": PAGE, "cursor": cursor}})
            rows.extend(result["page"])
            if result["isDone"]:
                return rows
            cursor = result["continueCursor"]

    def show(self, value: Any, table: Callable[[Any], Sequence[Sequence[str]]] | None = None) -> None:
        if self.as_json or table is None:
            click.echo(json.dumps(value, indent=2, sort_keys=True))
            return
        rows = table(value)
        if len(rows) <= 1:
            click.echo("(none)")
        else:
            print_table(rows)


def _ctx(**options: Any) -> Context:
    return Context(options["data_dir"], options["url"], options["database"], options["admin_key"],
                   options["token"], options["as_json"])


def _since(start: float | None, end: float | None) -> str:
    if start is None:
        return "-"
    seconds = max(0.0, ((end or start) - start) / 1000)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def _cost(value: Any) -> str:
    return f"${float(value):.4f}" if isinstance(value, int | float) else "-"


# -- corral workspaces ---------------------------------------------------------------------------

@click.group()
def workspaces() -> None:
    """Workspaces you belong to: list, create, remove.

    \b
    Examples:
      corral login                      # once: act as yourself
      corral workspaces create "Research"
      corral workspaces ls
      corral workspaces rm WORKSPACE_ID
    """


@workspaces.command("ls")
@person_options
def workspaces_ls(**options: Any) -> None:
    """List your workspaces with your role in each."""
    ctx = _ctx(**options)
    found = ctx.call("query", "corral/workspaces:list", {})
    ctx.show(found, lambda rows: [("ID", "NAME", "ROLE", "STATUS"),
                                  *[(w["_id"], w["name"], w.get("role", "-"), w.get("status", "active")) for w in rows]])


@workspaces.command("create")
@click.argument("name")
@person_options
def workspaces_create(name: str, **options: Any) -> None:
    """Create a workspace called NAME; you become its owner. Prints its id."""
    ctx = _ctx(**options)
    workspace_id = ctx.call("mutation", "corral/workspaces:create", {"name": name})
    ctx.show({"_id": workspace_id, "name": name}, lambda w: [("ID", "NAME"), (w["_id"], w["name"])])


@workspaces.command("rm")
@click.argument("workspace_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@person_options
def workspaces_rm(workspace_id: str, yes: bool, **options: Any) -> None:
    """Remove a workspace and everything in it (owner only): runs, their sandboxes, artifacts, members."""
    ctx = _ctx(**options)
    if not yes and not ctx.as_json:
        click.confirm(f"Remove workspace {workspace_id} with all its runs, sandboxes and artifacts?", abort=True)
    ctx.call("mutation", "corral/workspaces:remove", {"workspace_id": workspace_id})
    ctx.show({"_id": workspace_id, "removed": True}, lambda w: [("ID", "REMOVED"), (w["_id"], "being removed")])


@workspaces.group("keys")
def workspace_keys() -> None:
    """A workspace's API keys for the official e2b SDK: each sees only the workspace's sandboxes.

    \b
    Examples:
      eval "$(corral workspaces keys create WORKSPACE_ID --name ci --e2b-env)"
      corral workspaces keys ls WORKSPACE_ID
      corral workspaces keys revoke WORKSPACE_ID KEY_ID
    """


@workspace_keys.command("create")
@click.argument("workspace_id")
@click.option("--name", required=True, help="What the key is for; unique among the workspace's active keys.")
@click.option("--e2b-env", "e2b_env", is_flag=True,
              help="Print `export E2B_API_URL=… E2B_SANDBOX_URL=… E2B_API_KEY=…` lines for the e2b SDK instead.")
@person_options
def workspace_keys_create(workspace_id: str, name: str, e2b_env: bool, **options: Any) -> None:
    """Create a key of the workspace (owner or admin); it is printed only this once."""
    ctx = _ctx(**options)
    made = ctx.call("action", "corral/workspace_keys:create_api_key", {"workspace_id": workspace_id, "name": name})
    if e2b_env:
        node = ctx.deployment.target.url
        click.echo(f"export E2B_API_URL={node}/e2b")
        click.echo(f"export E2B_SANDBOX_URL={node}/envd")
        click.echo(f"export E2B_API_KEY={made['key']}")
        return
    ctx.show(made, lambda k: [("ID", "NAME", "KEY"), (k["id"], k["name"], k["key"])])


@workspace_keys.command("ls")
@click.argument("workspace_id")
@person_options
def workspace_keys_ls(workspace_id: str, **options: Any) -> None:
    """List the workspace's keys (owner or admin); the keys themselves are never shown again."""
    ctx = _ctx(**options)
    found = ctx.call("query", "corral/workspace_keys:list_api_keys", {"workspace_id": workspace_id})
    ctx.show(found, lambda rows: [("ID", "NAME", "HINT", "CREATED", "REVOKED"),
                                  *[(k["id"], k["name"], k["hint"], format_time(k["created"]), format_time(k["revoked"]))
                                    for k in rows]])


@workspace_keys.command("revoke")
@click.argument("workspace_id")
@click.argument("key_id")
@person_options
def workspace_keys_revoke(workspace_id: str, key_id: str, **options: Any) -> None:
    """Revoke a key of the workspace (owner or admin): the E2B API refuses it from its next call."""
    ctx = _ctx(**options)
    revoked = ctx.call("mutation", "corral/workspace_keys:revoke_api_key", {"workspace_id": workspace_id, "key_id": key_id})
    ctx.show(revoked, lambda k: [("ID", "NAME", "REVOKED"), (k["id"], k["name"], format_time(k["revoked"]))])


# -- corral members ------------------------------------------------------------------------------

ROLES = click.Choice(["admin", "member"])


@click.group()
def members() -> None:
    """A workspace's members: list, add (by user id or email), remove, change role.

    \b
    Examples:
      corral members ls WORKSPACE_ID
      corral members add WORKSPACE_ID ada@example.com --role admin
      corral members role WORKSPACE_ID USER_ID member
      corral members rm WORKSPACE_ID USER_ID
    """


@members.command("ls")
@click.argument("workspace_id")
@person_options
def members_ls(workspace_id: str, **options: Any) -> None:
    """List a workspace's members and pending invitations."""
    ctx = _ctx(**options)
    found = ctx.call("query", "corral/workspace_members:list_members", {"workspace_id": workspace_id})
    ctx.show(found, lambda rows: [("USER", "NAME", "EMAIL", "ROLE"),
                                  *[(m.get("user_id", "-"), (m.get("profile") or {}).get("name") or m.get("name") or "-",
                                     (m.get("profile") or {}).get("email") or m.get("email") or "-", m["role"])
                                    for m in _member_rows(rows)]])


def _member_rows(found: Any) -> list[dict[str, Any]]:
    if isinstance(found, dict):  # {members, invitations}
        return [*found.get("members", []), *({**i, "user_id": "(invited)"} for i in found.get("invitations", []))]
    return list(found)


@members.command("add")
@click.argument("workspace_id")
@click.argument("user")
@click.option("--role", type=ROLES, default="member", show_default=True)
@person_options
def members_add(workspace_id: str, user: str, role: str, **options: Any) -> None:
    """Add USER (a user id, or an email: someone who has never signed in is invited) to a workspace."""
    ctx = _ctx(**options)
    args = {"workspace_id": workspace_id, "role": role, **({"email": user} if "@" in user and "|" not in user else {"user_id": user})}
    result = ctx.call("mutation", "corral/workspace_members:add_member", args)
    ctx.show({"workspace_id": workspace_id, "user": user, "role": role, "result": result},
             lambda r: [("USER", "ROLE"), (r["user"], r["role"])])


@members.command("rm")
@click.argument("workspace_id")
@click.argument("user_id")
@person_options
def members_rm(workspace_id: str, user_id: str, **options: Any) -> None:
    """Remove a member from a workspace."""
    ctx = _ctx(**options)
    ctx.call("mutation", "corral/workspace_members:remove_member", {"workspace_id": workspace_id, "user_id": user_id})
    ctx.show({"workspace_id": workspace_id, "user_id": user_id, "removed": True},
             lambda r: [("USER", "REMOVED"), (r["user_id"], "yes")])


@members.command("role")
@click.argument("workspace_id")
@click.argument("user_id")
@click.argument("new_role", type=ROLES)
@person_options
def members_role(workspace_id: str, user_id: str, new_role: str, **options: Any) -> None:
    """Change a member's role to admin or member (only the owner grants or takes admin)."""
    ctx = _ctx(**options)
    ctx.call("mutation", "corral/workspace_members:update_role",
             {"workspace_id": workspace_id, "user_id": user_id, "new_role": new_role})
    ctx.show({"user_id": user_id, "role": new_role}, lambda r: [("USER", "ROLE"), (r["user_id"], r["role"])])


# -- corral runs ---------------------------------------------------------------------------------

STATUSES = click.Choice(["booting", "running", "succeeded", "failed", "canceled"])


def _run_rows(runs: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [("ID", "STATUS", "SANDBOX", "STARTED", "DURATION", "COST"),
            *[(r["_id"], r["status"], r.get("sandbox_id") or "-", format_time(r.get("_creationTime")),
               _since(r.get("_creationTime"), r.get("ended_at") or r.get("updated_at")), _cost(r.get("cost")))
              for r in runs]]


@click.group()
def runs() -> None:
    """Sandbox runs: list, show, start, cancel.

    \b
    Examples:
      corral runs start WORKSPACE_ID --thread THREAD_ID
      corral runs ls WORKSPACE_ID --status running
      corral runs show RUN_ID
      corral runs cancel RUN_ID
    """


@runs.command("ls")
@click.argument("workspace_id")
@click.option("--status", type=STATUSES, default=None, help="Only runs in this state.")
@click.option("--thread", "thread_id", default=None, help="Only runs of this thread.")
@person_options
def runs_ls(workspace_id: str, status: str | None, thread_id: str | None, **options: Any) -> None:
    """List a workspace's runs, newest first."""
    ctx = _ctx(**options)
    if thread_id:
        found = ctx.all_pages("corral/sandbox_runs:list_by_thread", {"thread_id": thread_id})
    else:
        found = ctx.all_pages("corral/sandbox_runs:list_by_workspace",
                              {"workspace_id": workspace_id, **({"status": status} if status else {})})
    ctx.show(found, _run_rows)


@runs.command("show")
@click.argument("run_id")
@person_options
def runs_show(run_id: str, **options: Any) -> None:
    """Show a run: its state history, sandbox, limits and cost."""
    ctx = _ctx(**options)
    found = ctx.call("query", "corral/sandbox_runs:get", {"sandbox_run_id": run_id})
    if found is None:
        raise click.ClickException(f"no run {run_id} in your workspaces")

    def table(run: dict[str, Any]) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = [("FIELD", "VALUE")]
        for field in ("_id", "status", "workspace_id", "thread_id", "sandbox_id", "cost"):
            rows.append((field, str(run.get(field) if run.get(field) is not None else "-")))
        if run.get("error"):
            rows.append(("error", f"{run['error'].get('code')}: {run['error'].get('message')}"))
        for step in run.get("history") or []:
            rows.append(("history", f"{format_time(step.get('at'))} {step.get('status')} {step.get('reason') or ''}".rstrip()))
        return rows

    ctx.show(found, table)


@runs.command("start")
@click.argument("workspace_id")
@click.option("--thread", "thread_id", default=None, help="The thread the run belongs to. Default: a new thread.")
@click.option("--template", default=None, help="The sandbox template. Default: base.")
@click.option("--max-duration", "max_duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds the run may last. Default: the setting for its kind.")
@click.option("--idle-timeout", "idle_timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds without activity before it is ended. Default: the setting for its kind.")
@person_options
def runs_start(workspace_id: str, thread_id: str | None, template: str | None, max_duration: float | None,
               idle_timeout: float | None, **options: Any) -> None:
    """Start a run: a sandbox for the workspace, ended by its limits or `corral runs cancel`."""
    ctx = _ctx(**options)
    if thread_id is None:
        thread_id = ctx.call("mutation", "corral/threads:create", {"workspace_id": workspace_id, "title": "CLI run"})
    args: dict[str, Any] = {"workspace_id": workspace_id, "thread_id": thread_id}
    if template:
        args["template"] = template
    if max_duration is not None:
        args["max_duration_ms"] = max_duration * 1000
    if idle_timeout is not None:
        args["idle_timeout_ms"] = idle_timeout * 1000
    run_id = ctx.call("action", "corral/sandbox_runs:start", args)
    found = ctx.call("query", "corral/sandbox_runs:get", {"sandbox_run_id": run_id})
    ctx.show(found, lambda run: _run_rows([run]))


@runs.command("cancel")
@click.argument("run_id")
@person_options
def runs_cancel(run_id: str, **options: Any) -> None:
    """Cancel a run and kill its sandbox."""
    ctx = _ctx(**options)
    ctx.call("mutation", "corral/sandbox_runs:cancel", {"sandbox_run_id": run_id})
    found = ctx.call("query", "corral/sandbox_runs:get", {"sandbox_run_id": run_id})
    ctx.show(found, lambda run: _run_rows([run]))


# -- corral artifacts ----------------------------------------------------------------------------

def _artifact_rows(found: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [("ID", "TYPE", "TITLE", "SIZE", "REVIEW", "RUN"),
            *[(a["_id"], a["type"], a["title"], str(a.get("size", "-")), a["review_state"], a["sandbox_run_id"]) for a in found]]


@click.group()
def artifacts() -> None:
    """Artifacts captured from runs, and their review: list, show, approve, reject, download.

    \b
    Examples:
      corral artifacts ls --pending WORKSPACE_ID
      corral artifacts ls --run RUN_ID
      corral artifacts capture RUN_ID /home/user/report.csv
      corral artifacts approve ARTIFACT_ID --comment "looks right"
      corral artifacts download ARTIFACT_ID -o report.csv
    """


@artifacts.command("ls")
@click.option("--run", "run_id", default=None, help="The artifacts of this run.")
@click.option("--pending", "workspace_id", default=None, metavar="WORKSPACE_ID",
              help="The artifacts awaiting review in this workspace.")
@person_options
def artifacts_ls(run_id: str | None, workspace_id: str | None, **options: Any) -> None:
    """List a run's artifacts (--run) or a workspace's pending ones (--pending)."""
    if (run_id is None) == (workspace_id is None):
        raise click.UsageError("pass exactly one of --run RUN_ID or --pending WORKSPACE_ID")
    ctx = _ctx(**options)
    if run_id:
        found = ctx.all_pages("corral/artifacts:list_by_run", {"sandbox_run_id": run_id})
    else:
        found = ctx.all_pages("corral/artifacts:list_pending", {"workspace_id": workspace_id})
    ctx.show(found, _artifact_rows)


@artifacts.command("capture")
@click.argument("run_id")
@click.argument("path")
@click.option("--title", default=None, help="Default: the file's name.")
@click.option("--type", "kind", type=click.Choice(["file", "image", "code", "log", "other"]), default=None,
              help="Default: inferred from the file.")
@person_options
def artifacts_capture(run_id: str, path: str, title: str | None, kind: str | None, **options: Any) -> None:
    """Copy a file out of a run's sandbox into an artifact that waits for review."""
    ctx = _ctx(**options)
    args: dict[str, Any] = {"sandbox_run_id": run_id, "path": path}
    if title:
        args["title"] = title
    if kind:
        args["type"] = kind
    artifact_id = ctx.call("action", "corral/artifacts:capture", args)
    ctx.show(_artifact(ctx, artifact_id), lambda a: _artifact_rows([a]))


def _artifact(ctx: Context, artifact_id: str) -> dict[str, Any]:
    found = ctx.call("query", "corral/artifacts:get", {"artifact_id": artifact_id})
    if found is None:
        raise click.ClickException(f"no artifact {artifact_id} in your workspaces")
    return dict(found)


@artifacts.command("show")
@click.argument("artifact_id")
@person_options
def artifacts_show(artifact_id: str, **options: Any) -> None:
    """Show an artifact: where it came from, its review, and its text preview."""
    ctx = _ctx(**options)
    found = _artifact(ctx, artifact_id)

    def table(a: dict[str, Any]) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = [("FIELD", "VALUE")]
        for field in ("_id", "type", "title", "content_type", "size", "sandbox_path", "review_state",
                      "reviewed_by", "review_comment"):
            if a.get(field) is not None:
                rows.append((field, str(a[field])))
        if a.get("preview_text"):
            rows.append(("preview", a["preview_text"][:400].replace("\n", "⏎ ")))
        return rows

    ctx.show(found, table)


def _review(artifact_id: str, state: str, comment: str | None, options: dict[str, Any]) -> None:
    ctx = _ctx(**options)
    args: dict[str, Any] = {"artifact_id": artifact_id, "review_state": state}
    if comment:
        args["comment"] = comment
    ctx.call("mutation", "corral/artifacts:update_review_state", args)
    ctx.show(_artifact(ctx, artifact_id), lambda a: _artifact_rows([a]))


@artifacts.command("approve")
@click.argument("artifact_id")
@click.option("--comment", default=None, help="Why (recorded with your decision).")
@person_options
def artifacts_approve(artifact_id: str, comment: str | None, **options: Any) -> None:
    """Approve an artifact (owner or admin)."""
    _review(artifact_id, "approved", comment, options)


@artifacts.command("reject")
@click.argument("artifact_id")
@click.option("--comment", default=None, help="Why (recorded with your decision).")
@person_options
def artifacts_reject(artifact_id: str, comment: str | None, **options: Any) -> None:
    """Reject an artifact (owner or admin)."""
    _review(artifact_id, "rejected", comment, options)


@artifacts.command("download")
@click.argument("artifact_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it. Default: its file name, in the current directory; - for standard output.")
@person_options
def artifacts_download(artifact_id: str, output: Path | None, **options: Any) -> None:
    """Download an artifact's bytes (members only), through a short-lived signed URL."""
    import httpx

    ctx = _ctx(**options)
    link = ctx.call("action", "corral/artifacts:download_url", {"artifact_id": artifact_id})
    target = None if str(output) == "-" else output or Path(Path(link.get("title") or artifact_id).name)
    size = 0
    try:
        with httpx.stream("GET", link["url"], timeout=120) as response:
            if response.status_code != 200:
                response.read()
                raise click.ClickException(f"the download of {artifact_id} was refused (HTTP {response.status_code}): "
                                           f"{response.text[:200]}")
            sink = sys.stdout.buffer if target is None else target.open("wb")
            try:
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    size += len(chunk)
            finally:
                if target is not None:
                    sink.close()
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot download {artifact_id}: {exc}") from None
    if target is not None:
        ctx.show({"path": str(target), "size": size, "content_type": link.get("content_type")},
                 lambda r: [("PATH", "SIZE", "TYPE"), (r["path"], str(r["size"]), str(r["content_type"]))])
