"""Tiny template roots for tests: one with bash (what `corral template add` accepts), one with busybox only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

COMMANDS = ("bash", "cat", "ls", "id", "echo", "head")


def _copy_with_libs(binary: str, rootfs: Path) -> None:
    """Copy `binary` into rootfs/usr/bin and the libraries ldd names at the same paths under rootfs."""
    source = Path(shutil.which(binary) or binary).resolve()
    shutil.copy2(source, rootfs / "usr" / "bin" / Path(binary).name)
    listing = subprocess.run(["ldd", str(source)], capture_output=True, text=True, check=False).stdout
    for lib in re.findall(r"(/\S+\.so[^\s]*)", listing):
        target = rootfs / lib.lstrip("/")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(lib).resolve(), target)


def bash_rootfs() -> Path:
    """A usrmerge root (/bin -> usr/bin) with bash as /bin/bash and /bin/sh and a few commands; under /tmp,
    readable by the sandboxes' uids. The caller removes it."""
    rootfs = Path(tempfile.mkdtemp(prefix="crt", dir="/tmp"))
    os.chmod(rootfs, 0o755)
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "bin").symlink_to("usr/bin")
    for command in COMMANDS:
        _copy_with_libs(command, rootfs)
    (rootfs / "usr" / "bin" / "sh").symlink_to("bash")
    (rootfs / "etc" / "profile").write_text("# tiny\n")
    (rootfs / "etc" / "shadow").write_text("root:secret\n")
    for directory, _dirs, files in os.walk(rootfs):
        os.chmod(directory, 0o755)
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                os.chmod(path, 0o755)
    return rootfs


def busybox_rootfs(busybox: str) -> Path:
    """A root with a static busybox and its applets as links, but no bash."""
    rootfs = Path(tempfile.mkdtemp(prefix="crt", dir="/tmp"))
    os.chmod(rootfs, 0o755)
    (rootfs / "bin").mkdir()
    (rootfs / "etc").mkdir()
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "cat", "ls", "echo", "id"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    return rootfs
