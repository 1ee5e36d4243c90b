"""One node per data directory: its SQLite file, keys, node.json and sandboxes are that node's alone.

A second node on the same directory would overwrite node.json, re-register the first node's runner
under its own URL and adopt its sandboxes. The lock is an flock on `<data dir>/node.lock`, which
the kernel drops when the holder exits, however it exits; the file names the holder's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .engine.errors import ConfigError

LOCK_FILE = "node.lock"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def secure_data_dir(data_dir: Path) -> None:
    """Make (or tighten) the data directory so that only the node's user can read it: 0700.

    It holds the SQLite database (with every sandbox's envd access token), the admin key and the
    sandboxes' state; a directory made before this rule (0755) is tightened at start as well.
    """
    data_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    st = os.stat(data_dir)
    if st.st_uid == os.geteuid() and st.st_mode & 0o777 != PRIVATE_DIR:
        os.chmod(data_dir, PRIVATE_DIR)


def write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner alone, never for a moment by others (a key, a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), PRIVATE_FILE)  # an older file keeps its mode through O_CREAT
        f.write(text)


class DataDirLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def take(cls, data_dir: Path) -> DataDirLock:
        """Hold the directory, or raise ConfigError naming the node that does."""
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"another node (pid {holder}) is serving the data directory {data_dir}: stop it first, "
                              "or give this node its own --data-dir (CORRAL_DATA_DIR)") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the only descriptor drops the flock
