"""Finding the node a command should act on.

A serving node records its URL in `<data dir>/node.json`. Commands go through that node
with the admin key; only when no node answers do they open the store directly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Target:
    url: str | None
    admin_key: str | None
    database: str | None
    data_dir: Path


def read_admin_key(data_dir: Path) -> str | None:
    path = Path(data_dir) / "admin_key"
    return path.read_text().strip() if path.exists() else None


def running_node_url(data_dir: Path) -> str | None:
    path = Path(data_dir) / "node.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    url = info.get("url")
    if not isinstance(url, str):
        return None
    try:
        httpx.get(url + "/api/query_ts", timeout=2.0)
    except httpx.HTTPError:
        try:
            httpx.post(url + "/api/query_ts", timeout=2.0)
        except httpx.HTTPError:
            return None
    return url


def locate(data_dir: Path, url: str | None, database: str | None) -> Target:
    if url:
        return Target(url=url.rstrip("/"), admin_key=read_admin_key(data_dir), database=None, data_dir=data_dir)
    if database:
        return Target(url=None, admin_key=None, database=database, data_dir=data_dir)
    return Target(url=running_node_url(data_dir), admin_key=read_admin_key(data_dir), database=None, data_dir=data_dir)
