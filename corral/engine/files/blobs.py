"""Where file bytes live: a content-addressed blob store.

A blob is named by the sha256 of its bytes, so the same file stored twice is kept once.
Bytes arrive in a `StagedBlob` (written chunk by chunk and hashed on the way, never held
in memory whole), then `place` makes them the blob of their hash. Which blobs must
exist is decided by the database (`file_storage.py`); a store only keeps bytes.

`LocalBlobStore` keeps blobs as files under one directory:

    <root>/blobs/ab/abcdef…   the blob whose sha256 is abcdef…
    <root>/tmp/upload-…       bytes still arriving; removed when the upload ends either way

A store shared by several nodes (a network filesystem under `storage_dir`, or an object
store) implements the same protocol. `place` and `delete` are called inside a database
transaction that holds the blob's row, so they must be quick and idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Protocol

from ..clock import Clock


class StagedBlob(Protocol):
    """Bytes on their way into a store: `write` chunks, `finish`, then `place` or `discard`."""

    size: int

    def write(self, data: bytes) -> None: ...

    def finish(self) -> str:
        """Flush to durable storage; returns the hex sha256 of everything written."""
        ...

    def discard(self) -> None:
        """Drop the staged bytes (idempotent; a placed blob stays)."""
        ...


class BlobStore(Protocol):
    def start(self) -> None:
        """Prepare the store (create directories, drop leftovers of interrupted uploads)."""
        ...

    def stage(self) -> StagedBlob: ...

    def place(self, staged: StagedBlob, sha256: str) -> None:
        """Make finished staged bytes the blob `sha256`; nothing to do if it already exists."""
        ...

    def open(self, sha256: str) -> BinaryIO | None:
        """The blob for reading, or None if it does not exist."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None:
        """Remove the blob; nothing to do if it does not exist."""
        ...


def _check_sha(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a hex sha256: {sha256!r}")
    return sha256


class LocalStagedBlob:
    """A temporary file in the store's `tmp/` directory, hashed as it is written."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", dir=directory)
        self.path = Path(name)
        self._fd: int | None = fd
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()  # writes run in worker threads; discard may come from another
        self.size = 0

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError("this staged blob is finished or discarded")
            view = memoryview(data)
            self._hash.update(view)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self.size += len(data)

    def finish(self) -> str:
        with self._lock:
            if self._fd is None:
                raise ValueError("this staged blob is finished or discarded")
            try:
                os.fsync(self._fd)  # a committed record must never name bytes a crash can lose
            finally:
                os.close(self._fd)
                self._fd = None
            return self._hash.hexdigest()

    def discard(self) -> None:
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class LocalBlobStore:
    """Blobs as files under `root`, sharded by the first two hex digits of their hash.

    `start` removes temporary files older than `stale_upload_age` seconds by the engine's
    `clock` (setting `storage_stale_upload_age`): they belong to no live upload."""

    def __init__(self, root: Path, clock: Clock | None = None, stale_upload_age: float = 86400.0) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self.clock = clock or Clock()
        self.stale_upload_age = stale_upload_age

    def start(self) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Only old leftovers: with a shared directory, other nodes may be receiving uploads now.
        horizon = self.clock.time() - self.stale_upload_age
        for leftover in self.tmp_dir.glob("upload-*"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < horizon:
                    leftover.unlink()

    def path(self, sha256: str) -> Path:
        _check_sha(sha256)
        return self.blob_dir / sha256[:2] / sha256

    def stage(self) -> LocalStagedBlob:
        return LocalStagedBlob(self.tmp_dir)

    def place(self, staged: StagedBlob, sha256: str) -> None:
        if not isinstance(staged, LocalStagedBlob):
            raise TypeError("LocalBlobStore places only blobs it staged")
        target = self.path(sha256)
        if target.exists():
            return
        target.parent.mkdir(exist_ok=True)
        # A hard link, not a rename: the staged file stays until the upload's transaction has
        # committed, so a retried transaction can place it again.
        with contextlib.suppress(FileExistsError):
            os.link(staged.path, target)

    def open(self, sha256: str) -> BinaryIO | None:
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            return None

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    def files(self) -> list[Path]:
        """Every file the store holds, blobs and temporary (for tests and diagnostics)."""
        return sorted(p for p in self.root.rglob("*") if p.is_file())
