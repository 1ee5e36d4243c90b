"""The browser harness: PyPI `playwright` driving Debian's Chromium (/usr/bin/chromium, installed by
scripts/install-system-packages; never `playwright install`).

Screenshots go to `test-output/console/<test>/` at the repository's root (ignored by git), each
at 1280×800 and at phone width (390×844), so a person can look at what the test saw.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, require_tool

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = ROOT / "test-output" / "console"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    require_tool("playwright", sync_playwright is not None, "pip install -e '.[test]'")
    require_tool("chromium", CHROMIUM.exists(), "apt-get install chromium (scripts/install-system-packages)")
    return sync_playwright


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_playwright = _playwright()
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Any:
    """shots(page, "name"): the page at 1280×800 and at 390×844, under test-output/console/<test>/."""
    folder = OUTPUT / re.sub(r"[^\w.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)

    def take(page: Any, name: str) -> list[Path]:
        size = page.viewport_size or DESKTOP
        made = []
        for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            page.wait_for_timeout(50)  # one frame for the layout to settle
            path = folder / f"{name}-{label}.png"
            page.screenshot(path=str(path), full_page=True)
            made.append(path)
        page.set_viewport_size(size)
        return made

    return take


def login_link(url: str, admin_key: str, subject: str | None = None, **profile: str) -> str:
    body: dict[str, str] = {**profile}
    if subject:
        body["subject"] = subject
    response = httpx.post(url + "/api/auth/login_links", json=body, headers={"Authorization": f"Convex {admin_key}"},
                          timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["url"])
