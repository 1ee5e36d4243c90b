"""What every sandbox of a provider reads, on a tmpfs of the provider's own: the agent's code and each
template's generated /etc.

A bind mount shows in the sandbox's /proc/self/mountinfo with its root, the path of its source inside
that source's filesystem: bound from the checkout or the data directory, it would name them. Bound from
this tmpfs (`<runtime>/share`), it names only `/agent-<hash>` or `/templates/<name>/etc`. The agent is
copied under a name made of its code's hash, so a newer runner never changes the files a running
sandbox's agent has loaded, and compiled there with `/.corral/agent` as its path (its tracebacks name
no host path either).
"""

from __future__ import annotations

import compileall
import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from . import disk

SHARE = "share"
SIZE_MB = 64  # the base /etc is ~2 MB; each registered template adds its own
NAME = "corral-share"  # the mount's source in the sandbox's mountinfo
AGENT_MOUNT = "/.corral/agent"


def ensure(runtime: Path) -> Path:
    """The provider's share, mounted (once per runtime directory; providers on it share it)."""
    share = runtime / SHARE
    share.mkdir(mode=0o711, exist_ok=True)
    if not disk.is_mounted(share):
        disk.mount_tmpfs(share, SIZE_MB, NAME)
    return share


def release(runtime: Path) -> None:
    """Unmount the share (lazily: the binds of running sandboxes keep what they hold)."""
    disk.unmount(runtime / SHARE)


def install_agent(share: Path, source: Path) -> Path:
    """The agent's code from `source`, copied into the share and compiled; its directory there."""
    digest = hashlib.sha256()
    files = sorted(p for p in source.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    target = share / f"agent-{digest.hexdigest()[:16]}"
    if (target / "__main__.py").exists():
        return target
    staging = share / f".{target.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o755)
    for path in files:
        dest = staging / path.relative_to(source)
        dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        os.chmod(dest, 0o644)
    compileall.compile_dir(str(staging), ddir=AGENT_MOUNT, quiet=1)
    try:
        os.rename(staging, target)
    except OSError:  # another provider on this runtime directory installed the same code first
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "__main__.py").exists():
            raise
    with contextlib.suppress(OSError):
        os.chmod(target, 0o755)
    return target
