"""The console's runs page: time to first live data with 1,000 runs in a workspace, against the
server-rendered operator page (`/operator`, the console before this issue) in the same run.

One node (`python -m corral serve`, SQLite) whose workspace holds 1,000 runs (`--quick`: 200),
created through `corral/sandbox_runs:create` as its owner. Debian's Chromium (/usr/bin/chromium,
through playwright), signed in once, opens `#/w/<id>` in a fresh page: the figure is from
navigation start to the first run row on screen (the page loads its files, opens the socket,
authenticates, subscribes to the first 50 runs and draws them). The baseline opens `/operator` (with the admin key)
and waits for its load event. Each is the median of 7 rounds after a warm-up one.

    python -m bench.console_page [--quick] [--json]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from .common import NodeProcess, emit_json, fmt, log, parse_args, print_table

CHROMIUM = Path("/usr/bin/chromium")
ROUNDS = 7


def _sign_in(url: str, admin_key: str) -> dict[str, Any]:
    link = httpx.post(url + "/api/auth/login_links", json={"subject": "bench", "name": "Bench"},
                      headers={"Authorization": f"Convex {admin_key}"}, timeout=30).json()["url"]
    session = httpx.post(url + "/api/auth/session", json={"ticket": link.split("#login=", 1)[1]}, timeout=30)
    return dict(session.json())


def _call(url: str, token: str, kind: str, path: str, args: dict[str, Any]) -> Any:
    response = httpx.post(f"{url}/api/{kind}", json={"path": path, "args": args, "format": "json"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=60)
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["value"]


def main() -> None:
    args = parse_args(__doc__ or "")
    runs = 200 if args.quick else 1000
    from playwright.sync_api import sync_playwright

    node = NodeProcess.corral()
    node.start()
    try:
        url = f"http://127.0.0.1:{node.port}"
        assert node.dir is not None
        admin_key = (node.dir / "data" / "admin_key").read_text().strip()
        session = _sign_in(url, admin_key)
        token = session["token"]
        workspace = _call(url, token, "mutation", "corral/workspaces:create", {"name": "Bench"})
        thread = _call(url, token, "mutation", "corral/threads:create", {"workspace_id": workspace})
        log(f"creating {runs} runs")
        for _ in range(runs):
            _call(url, token, "mutation", "corral/sandbox_runs:create", {"workspace_id": workspace, "thread_id": thread})
        live: list[float] = []
        rendered: list[float] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(f"localStorage.setItem('corral.session', JSON.stringify({json.dumps(session)}))")
            for round_ in range(ROUNDS + 1):
                page = context.new_page()
                started = time.perf_counter()
                page.goto(f"{url}/#/w/{workspace}")
                page.locator("table.runs tr[data-run]").first.wait_for(timeout=60_000)
                took = time.perf_counter() - started
                page.close()
                page = context.new_page()
                page.set_extra_http_headers({"Authorization": f"Convex {admin_key}"})  # /operator: operators only
                started = time.perf_counter()
                page.goto(f"{url}/operator", wait_until="load")
                took_operator = time.perf_counter() - started
                page.close()
                if round_:
                    live.append(took)
                    rendered.append(took_operator)
            browser.close()
    finally:
        node.stop()
    live_ms, rendered_ms = statistics.median(live) * 1000, statistics.median(rendered) * 1000
    print_table(f"Console: time to first data, {runs} runs in a workspace (median of {ROUNDS})",
                ["page", "ms"], [["runs page, live (first 50 runs drawn)", fmt(live_ms)],
                                 ["/operator, server-rendered (load event)", fmt(rendered_ms)]])
    if args.json:
        emit_json("console_page", {"runs": runs, "runs_page_first_live_data_ms": live_ms,
                                   "operator_page_load_ms": rendered_ms})


if __name__ == "__main__":
    main()
