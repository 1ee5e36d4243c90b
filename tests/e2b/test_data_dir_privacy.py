"""Another user of the node's host reading its data directory: the database holds every sandbox's envd
access token, so the directory, the SQLite file (with its -wal and -shm) and the keys are the node's user's alone."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from ..conftest import require_tool

OUTSIDER = 65534  # nobody


def _as_outsider(*argv: str) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    require_tool("setpriv", setpriv is not None, "util-linux runs a command as another user")
    require_tool("root", os.geteuid() == 0, "only root can run a command as another user")
    assert setpriv is not None
    return subprocess.run([setpriv, "--reuid", str(OUTSIDER), "--regid", str(OUTSIDER), "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30)


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_an_outsider_cannot_read_the_data_directory_made_before_the_rule(tmp_path: Path, make_node: Any) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # as an older Corral left it: world-listable, a world-readable database and key
    with sqlite3.connect(data / "corral.sqlite3") as old:
        old.execute("CREATE TABLE leftover (secret TEXT)")
        old.execute("INSERT INTO leftover VALUES ('envd-token-of-an-old-sandbox')")
    os.chmod(data / "corral.sqlite3", 0o644)
    (data / "admin_key").write_text("old-admin-key\n")
    os.chmod(data / "admin_key", 0o644)
    tmp_path.chmod(0o755)  # the outsider can reach the directory: only its own mode keeps them out

    node = make_node(data_dir=data)
    database = data / "corral.sqlite3"
    assert _mode(data) == 0o700
    assert _mode(database) == 0o600
    assert _mode(data / "admin_key") == 0o600
    assert (data / "admin_key").read_text().strip() == node.admin_key
    node.engine.store.set_meta_if_absent("written", "1")  # the WAL and its index exist while the node runs
    for side in ("-wal", "-shm"):
        path = data / f"corral.sqlite3{side}"
        if path.exists():
            assert _mode(path) == 0o600, path

    for attempt in (["ls", str(data)], ["cat", str(database)], ["cat", str(data / "admin_key")],
                    ["cat", f"{database}-wal"]):
        result = _as_outsider(*attempt)
        assert result.returncode != 0, (attempt, result.stdout)
        assert "Permission denied" in result.stderr, (attempt, result.stderr)


def test_a_new_data_directory_is_private_from_its_first_moment(tmp_path: Path, make_node: Any) -> None:
    node = make_node(data_dir=tmp_path / "fresh" / "data")
    data = Path(node.settings.data_dir)
    assert _mode(data) == 0o700
    assert _mode(data / "corral.sqlite3") == 0o600
    assert _mode(data / "admin_key") == 0o600
