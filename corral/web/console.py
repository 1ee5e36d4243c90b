"""The console: the live app at `/` (static files under `/console/`), and the operator's page.

The app is plain files in `static/` (package data): `index.html`, `app.js`, `app.css` and
`sync.js`, Corral's sync-protocol client; nothing is built or fetched at run time (docs/console.md).
Its operator page (`/#/operator`) reads `corral/operator:sandboxes` and `:runners` live.

`/operator` is the server-rendered page (how to connect, sandboxes, runners, tables, functions)
for the same people: a request with the admin key (`Authorization: Convex <admin key>`) or an
operator's token (`Bearer`); a browser without either is sent to `/#/operator`, anyone else is
refused. It never shows a sandbox's access token or a runner's secret (docs/sandboxes.md#the-console).
"""

from __future__ import annotations

import asyncio
import html
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from corral.engine.auth import Authenticator, Caller
from corral.engine.errors import CorralError
from corral.engine.runtime import Engine

TEMPLATE = (Path(__file__).parent / "templates" / "console.html").read_text(encoding="utf-8")
STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".html": "text/html; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
# The app's pages read the session from localStorage: no framing, no inline scripts, no other origins.
APP_HEADERS = {"content-security-policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' blob: data:; "
                                          "frame-ancestors 'none'",
               "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-cache"}
esc = html.escape


def _row(*cells: str, css: str = "") -> str:
    attr = f' class="{css}"' if css else ""
    return f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _when(ms: Any, now: float) -> str:
    """A time (ms since the epoch) as UTC, with how long ago or ahead it is."""
    if not isinstance(ms, int | float):
        return "—"
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000.0))
    delta = ms / 1000.0 - now
    span = abs(delta)
    text = f"{span:.0f} s" if span < 120 else f"{span / 60:.0f} min" if span < 7200 else f"{span / 3600:.1f} h"
    rel = f"in {text}" if delta > 0 else f"{text} ago"
    return f'<span title="{at} UTC">{rel}</span>'


def _last_write(ts: int) -> str:
    """When the newest commit happened (a commit timestamp is nanoseconds since the epoch)."""
    if ts <= 0:
        return "no writes yet"
    return f'<span title="commit timestamp {ts}">last write</span> {_when(ts / 1e6, time.time())}'


def _owner_hint(owner: Any) -> str:
    """Whose sandbox: the API key's id, or the user's subject, shortened."""
    text = str(owner or "")
    return f'<code title="{esc(text)}">{esc(text if len(text) <= 32 else text[:14] + "…" + text[-14:])}</code>'


class Console:
    def __init__(self, engine: Engine, url: str, planes: list[tuple[str, str]], authenticator: Authenticator) -> None:
        self.engine = engine
        self.authenticator = authenticator
        self.url = url
        self.planes = planes

    def _counts(self) -> dict[str, int]:
        with self.engine.store.snapshot() as (conn, _ts):
            return {name: conn.count(name) for name in self.engine.schema.tables}

    async def _internal(self, path: str, args: dict[str, Any]) -> Any:
        if self.engine.registry.get(path) is None:
            return None
        return await self.engine.call_query(path, args, Caller.admin(), internal_ok=True)

    async def app(self, request: Request) -> Response:
        return _static("index.html")

    async def static(self, request: Request) -> Response:
        return _static(request.path_params["name"])

    async def page(self, request: Request) -> Response:
        try:
            caller = await self.authenticator.from_headers(request.headers)
        except CorralError as exc:
            return PlainTextResponse(f"/operator: {exc}", status_code=401)
        if caller.identity is None and not caller.is_admin:
            return RedirectResponse("/#/operator", status_code=303)  # a browser: the live page signs in
        if not caller.is_admin:
            found = await self.engine.call_query("corral/operator:me", {}, caller)
            if not found["operator"]:
                return PlainTextResponse("/operator is for the node's operators: the admin key, the node's local user, "
                                         "or someone granted the operator role (corral/operator:grant)", status_code=403)
        return await self._render()

    async def _render(self) -> HTMLResponse:
        engine = self.engine
        counts: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(None, self._counts)
        tables = "\n".join(
            _row(f"<code>{esc(t.name)}</code>", str(counts.get(t.name, 0)),
                 esc(", ".join(["by_creation_time", *t.indexes])), esc(t.module))
            for t in engine.schema.tables.values())
        functions = "\n".join(
            _row(f"<code>{esc(path)}</code>",
                 f'<span class="kind">{("" if spec.public else "internal ") + spec.kind}</span>',
                 esc(", ".join(spec.arg_names) or "—"))
            for path, spec in sorted(engine.registry.functions.items()))
        planes = "\n".join(_row(f"<code>{esc(prefix)}</code>", esc(what)) for prefix, what in self.planes)
        data_dir = esc(str(Path(engine.settings.data_dir).absolute()))
        sandboxes, runners = await self._sandboxes(), await self._runners()
        admin = f"admin key: corral admin-key --data-dir {data_dir}"
        e2b_env = f'eval "$(corral e2b env --data-dir {data_dir})"'
        body = TEMPLATE.format(node_url=esc(self.url), storage=esc(engine.store.dialect_name),
                               last_write=_last_write(engine.store.published_ts), admin_line=admin, e2b_env=e2b_env,
                               sandboxes=sandboxes, runners=runners,
                               table_rows=tables, function_rows=functions, plane_rows=planes)
        return HTMLResponse(body)

    async def _sandboxes(self) -> str:
        found = await self._internal("corral/sandboxes:overview", {})
        if found is None:
            return ""
        now = time.time()
        counts = found["counts"]
        summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("running", "paused", "lost"))
        killed_count = f"{counts['killed']}{'+' if found['killed_capped'] else ''}"
        head = ("<tr><th>sandbox</th><th>state</th><th>template</th><th>runner</th><th>owner</th>"
                "<th>started</th><th>ends</th><th>last activity</th></tr>")

        def row(s: dict[str, Any]) -> str:
            state = s["state"] + (f" ({s['paused_reason']})" if s["state"] == "paused" and s.get("paused_reason") else "")
            ends = _when(s["end_at"], now) if s["state"] == "running" else "—"
            if s["state"] == "running" and s.get("on_timeout") == "pause":
                ends += " (pauses)"
            return _row(f"<code>{esc(s['sandbox_id'])}</code>", f'<span class="state {esc(s["state"])}">{esc(state)}</span>',
                        esc(s["template"]), esc(s["runner"]), _owner_hint(s["owner"]), _when(s["started_at"], now),
                        ends, _when(s["last_activity"], now))

        listed = "\n".join(row(s) for s in found["sandboxes"])
        parts = [f'<p class="sub">{summary}, {killed_count} killed (kept until cleaned) · '
                 "<code>corral sandbox list</code> prints the same</p>"]
        parts.append(f"<table>{head}\n{listed}</table>" if listed else "<p>No running or paused sandbox.</p>")
        if found["more"]:
            parts.append(f"<p>… and {found['more']} more.</p>")
        if found["killed"]:
            killed = "\n".join(row(s) for s in found["killed"])
            parts.append(f"<details><summary>latest killed ({len(found['killed'])} of {killed_count})</summary>"
                         f"<table>{head}\n{killed}</table></details>")
        return "\n".join(parts)

    async def _runners(self) -> str:
        found = await self._internal("corral/runners:list_all", {})
        if found is None:
            return ""
        if not found:
            return "<p>No runner has registered.</p>"
        now = time.time()
        rows = "\n".join(
            _row(f"<code>{esc(r['name'])}</code>", f'<span class="state {esc(r["state"])}">{esc(r["state"])}</span>',
                 str(r["capacity"]), str(r["sandboxes"]), esc(", ".join(r.get("labels") or []) or "—"),
                 esc(", ".join(r.get("templates") or []) or "—"), _when(r["last_heartbeat"], now))
            for r in sorted(found, key=lambda r: (r["state"] != "up", r["name"])))
        return ("<table><tr><th>runner</th><th>state</th><th>capacity</th><th>sandboxes</th><th>labels</th>"
                f"<th>templates</th><th>last heartbeat</th></tr>\n{rows}</table>")


def _static(name: str) -> Response:
    path = STATIC / name
    kind = STATIC_TYPES.get(path.suffix)
    if "/" in name or name.startswith(".") or kind is None or not path.is_file():
        return Response(f"/console/{name} is not a file of the console", status_code=404, media_type="text/plain")
    return Response(path.read_bytes(), media_type=kind, headers=APP_HEADERS)
