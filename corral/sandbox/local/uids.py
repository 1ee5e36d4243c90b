"""Host uids of sandboxes, claimed host-wide: two sandboxes on one host never share a uid.

Every local provider on a host (a node's embedded runner, any number of `corral runner`s, each
with its own root) claims a sandbox's uid by creating `/run/corral/uids/<uid>` (O_EXCL, under a host-wide flock). The
file names its owner: the provider root and the sandbox id. A claim is released when its sandbox
is killed; one whose sandbox directory no longer exists (killed while its provider was down, or
a create that died half-way) is stale and is taken over by the next provider that wants the uid.
The claims live under /run, so a reboot clears them: adopting a sandbox claims its uid again.

    claims = UidClaims()
    uid = claims.claim(1_000_000, 100_000, root, "abc123")
    claims.release(uid, root, "abc123")
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..protocol import CapacityError

UID_DIR = Path("/run/corral/uids")


class UidClaims:
    def __init__(self, directory: Path = UID_DIR) -> None:
        self.directory = directory

    def _path(self, uid: int) -> Path:
        return self.directory / str(uid)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Host-wide: no two providers judge a claim stale and take it over at once."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def claim(self, base: int, count: int, root: Path, sandbox_id: str) -> int:
        """The lowest uid of base..base+count-1 that no sandbox on this host holds, now claimed for `sandbox_id`."""
        with self._locked():
            for uid in range(base, base + count):
                if self._try_claim(uid, root, sandbox_id):
                    return uid
        raise CapacityError(f"all {count} sandbox uids from {base} are in use on this host: kill a sandbox first, or "
                            "raise sandbox_uid_count")

    def reclaim(self, uid: int, root: Path, sandbox_id: str) -> bool:
        """Claim `uid` again for a sandbox that already has it (adopting, after a restart or a reboot).
        False when another live sandbox holds it."""
        with self._locked():
            if self.owner(uid) == (str(root), sandbox_id):
                return True
            return self._try_claim(uid, root, sandbox_id)

    def release(self, uid: int, root: Path, sandbox_id: str) -> None:
        """Drop the claim, if it is still this sandbox's."""
        with self._locked():
            if self.owner(uid) == (str(root), sandbox_id):
                with contextlib.suppress(FileNotFoundError):
                    self._path(uid).unlink()

    def owner(self, uid: int) -> tuple[str, str] | None:
        """(provider root, sandbox id) holding `uid`, or None."""
        try:
            data = json.loads(self._path(uid).read_text())
            return str(data["root"]), str(data["sandbox_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _try_claim(self, uid: int, root: Path, sandbox_id: str) -> bool:
        """Under the lock: create the claim file, taking over a stale one."""
        path = self._path(uid)
        if path.exists():
            if not self._stale(uid):
                return False
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps({"root": str(root), "sandbox_id": sandbox_id, "pid": os.getpid()}).encode())
        finally:
            os.close(fd)
        return True

    def _stale(self, uid: int) -> bool:
        """Is the claim on `uid` one nobody can come back to? Its sandbox's directory is gone."""
        owner = self.owner(uid)
        if owner is None:  # empty or torn (claims are written under the lock): its writer died
            return True
        root, sandbox_id = owner
        return not (Path(root) / "sandboxes" / sandbox_id).is_dir()
