"""The console at `/`: what this node serves, and how to reach it."""

from __future__ import annotations

import asyncio
import html
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from corral.engine.runtime import Engine

TEMPLATE = (Path(__file__).parent / "templates" / "console.html").read_text(encoding="utf-8")


def _row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


class Console:
    def __init__(self, engine: Engine, url: str, planes: list[tuple[str, str]]) -> None:
        self.engine = engine
        self.url = url
        self.planes = planes

    def _counts(self) -> dict[str, int]:
        with self.engine.store.snapshot() as (conn, _ts):
            return {name: conn.count(name) for name in self.engine.schema.tables}

    async def page(self, request: Request) -> HTMLResponse:
        engine = self.engine
        counts: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(None, self._counts)
        esc = html.escape
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
        body = TEMPLATE.format(node_url=esc(self.url), storage=esc(engine.store.dialect_name),
                               commit_ts=engine.store.published_ts, data_dir=esc(str(engine.settings.data_dir)),
                               table_rows=tables, function_rows=functions, plane_rows=planes)
        return HTMLResponse(body)
