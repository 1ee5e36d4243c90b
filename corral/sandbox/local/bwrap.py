"""The command line that boots a sandbox: a root shell joins the cgroups, drops to the sandbox's host
uid and execs bubblewrap, which builds the namespaces and the root view and execs the agent.

Joining the cgroups in a shell that then `exec`s keeps one pid from the join to the agent's
parent, so nothing the sandbox runs is ever outside its limits, and needs no Python
`preexec_fn` (unsafe in a threaded process). Bubblewrap runs unprivileged, as the sandbox's host
uid: every path it binds must be reachable by that uid, so the provider's directories are
searchable (mode 0711) but not listable, and a sandbox's own are owned by its uid.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from ..protocol import HOME
from .templates import Template

SANDBOX_UID = 1000
AGENT_MOUNT = "/.corral/agent"
LOG_MOUNT = "/.corral/log"  # the sandbox's log file (on its disk), where the agent writes
HOST_USR_MOUNT = "/.corral/host/usr"
SHM_BYTES = 64 * 1024 * 1024


def bwrap_argv(*, bwrap: str, template: Template, home: Path, tmp: Path, log: Path,
               agent_dir: Path | None, command: list[str], info_fd: int | None = None,
               block_fd: int | None = None) -> list[str]:
    argv = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
            "--unshare-cgroup", "--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--hostname", "sandbox", "--new-session", "--as-pid-1"]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    if block_fd is not None:
        argv += ["--block-fd", str(block_fd)]
    for entry in template.entries():
        source = template.rootfs / entry
        if source.is_symlink():
            argv += ["--symlink", os.readlink(source), "/" + entry]
        else:
            argv += ["--ro-bind", str(source), "/" + entry]
    argv += ["--ro-bind", str(template.etc), "/etc",
             "--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
             "--perms", "0755", "--dir", "/home",
             "--bind", str(home), HOME,
             "--bind", str(tmp), "/tmp",
             "--dir", "/var", "--symlink", "../tmp", "/var/tmp",
             "--bind", str(log), LOG_MOUNT,
             "--remount-ro", "/dev"]
    if agent_dir is not None:
        argv += ["--ro-bind", str(agent_dir), AGENT_MOUNT]
    if not template.is_base:  # the agent runs on the host's interpreter whatever the template holds
        argv += ["--ro-bind", "/usr", HOST_USR_MOUNT]
    argv += ["--remount-ro", "/", "--chdir", HOME, "--", *command]
    return argv


def root_wrapper(*, join_files: list[Path], host_uid: int, setpriv: str, argv: list[str]) -> list[str]:
    """`sh -c` as root: put itself in the sandbox's cgroups, then exec `argv` as `host_uid`."""
    joins = " && ".join(f"echo $$ > {shlex.quote(str(f))}" for f in join_files)
    script = f'{joins} && exec {shlex.quote(setpriv)} --reuid {host_uid} --regid {host_uid} --clear-groups "$@"'
    return ["/bin/sh", "-c", script, "corral-sandbox", *argv]
