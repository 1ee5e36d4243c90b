"""The embedded runner's name: stable across restarts of its node, so the node re-adopts its sandboxes."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

NAME_FILE = "runner_name"


def hostname_label(fallback: str) -> str:
    """This host's name as a runner name's prefix: letters, digits, '-' and '.', at most 40 characters."""
    return "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())[:40] or fallback


def embedded_runner_name(data_dir: Path) -> str:
    path = Path(data_dir) / NAME_FILE
    try:
        name = path.read_text().strip()
    except OSError:
        name = ""
    if not name:
        name = f"{hostname_label('node')}-{secrets.token_hex(3)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name + "\n")
    return name
