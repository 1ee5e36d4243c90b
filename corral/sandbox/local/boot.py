"""Booting a sandbox on this host and taking it apart: its disk, cgroups, processes and network.

Everything here is synchronous and runs on a worker thread of the provider. A sandbox's host
directory (`<root>/sandboxes/<id>/`) holds `state.json` and `disk.img` (its writable disk); its runtime directory
(`<runtime>/<id>/`, which bubblewrap, running as the sandbox's uid, must be able to reach)
holds `agent.sock` (bound here by root, in a directory only root may write; the agent inherits it)
and `disk/`, where the image is mounted, with `sandbox.log` at its top (bound at /.corral/log, where
the agent reopens it): bubblewrap, the agent and slirp4netns hold that log open as their stdout and
stderr, and a process of the sandbox can take those descriptors (pidfd_getfd or ptrace, same uid),
so the log must be charged to the sandbox's disk, not the host's. Booting from existing files is how a paused sandbox comes back after its memory
was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket as socketlib
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog

from ..agent_client import AGENT_DIR, agent_argv, agent_env
from ..protocol import SandboxError, SandboxSpec
from . import disk, network
from .bwrap import HOST_USR_MOUNT, LOG_MOUNT, bwrap_argv, root_wrapper
from .cgroups import CgroupLimits, Cgroups
from .templates import Template

log = structlog.get_logger("corral.sandbox.local")

NS_GET_USERNS = 0xB701
SLIRP_ATTEMPTS = 3  # slirp4netns starts on a sandbox's namespaces; a transient setns race gets another try
SLIRP_READY_TIMEOUT = 10.0  # seconds slirp4netns has to bring the network up
SOCKET = "agent.sock"
LOG = "sandbox.log"
HOST_PYTHON = "/usr/bin/python3"
HOST_LOADER = "/lib64/ld-linux-x86-64.so.2"


class BootError(SandboxError):
    """The sandbox could not be started; the message carries what bubblewrap or slirp4netns said."""


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the host programs the provider runs."""

    bwrap: str
    setpriv: str
    slirp4netns: str | None
    nsenter: str
    nft: str | None
    unshare: str
    mount: str

    @classmethod
    def find(cls) -> Tools:
        def need(name: str, package: str) -> str:
            path = shutil.which(name, path="/usr/bin:/usr/sbin:/bin:/sbin")
            if path is None:
                raise SandboxError(f"{name} is not installed: apt-get install {package} "
                                   "(or run scripts/install-system-packages)")
            return path

        def maybe(name: str) -> str | None:
            return shutil.which(name, path="/usr/bin:/usr/sbin:/bin:/sbin")

        return cls(bwrap=need("bwrap", "bubblewrap"), setpriv=need("setpriv", "util-linux"),
                   slirp4netns=maybe("slirp4netns"), nsenter=need("nsenter", "util-linux"),
                   nft=maybe("nft"), unshare=need("unshare", "util-linux"), mount=need("mount", "mount"))


@dataclass(frozen=True)
class SandboxPaths:
    dir: Path  # persistent: state, disk image, log
    runtime: Path  # searchable by the sandbox's uid: the disk's mount point, the agent's socket

    @property
    def state(self) -> Path:
        return self.dir / "state.json"

    @property
    def socket(self) -> Path:
        """The agent's socket: bound by the runner (root) in the sandbox's runtime directory, which only
        root may write, and never in the sandbox's view; the agent inherits it already bound (see `boot`)."""
        return self.runtime / SOCKET

    @property
    def legacy_socket(self) -> Path:
        """Where sandboxes booted before the runner bound their socket itself had it (still adopted)."""
        return self.runtime / "run" / SOCKET

    @property
    def image(self) -> Path:
        return self.dir / "disk.img"

    @property
    def disk(self) -> Path:
        return self.runtime / "disk"

    @property
    def log(self) -> Path:
        """Bubblewrap's, the agent's and slirp4netns's complaints: on the sandbox's own disk (see the module's doc)."""
        return self.disk / LOG


@dataclass(frozen=True)
class Booted:
    process: subprocess.Popen[bytes]
    slirp_pid: int | None


class Host:
    """The host side of every sandbox of one provider: paths, tools, cgroups."""

    def __init__(self, root: Path, runtime: Path, cgroups: Cgroups, tools: Tools,
                 agent_python: str = HOST_PYTHON) -> None:
        self.root = root
        self.runtime = runtime
        self.cgroups = cgroups
        self.tools = tools
        self.agent_python = agent_python
        self.agent_dir = Path(AGENT_DIR)  # the provider points it at its copy in the share (share.py)
        self.images = root / "images"
        self.tun_node = root / "net" / "tun"
        # Per sandbox, the processes this provider started for it (bubblewrap's wrapper, slirp4netns):
        # `stop` waits for each once the cgroup is killed, so none is left a zombie until the next create.
        self._children: dict[str, list[subprocess.Popen[bytes]]] = {}

    def paths(self, sandbox_id: str) -> SandboxPaths:
        runtime = self.runtime / sandbox_id
        legacy = self.root / "rt" / sandbox_id
        if legacy != runtime and legacy.is_dir() and disk.is_mounted(legacy / "disk"):
            # Booted while the data directory was searchable (an older Corral left it 0755): it runs
            # from there until it is next booted (`retire_legacy_runtime`).
            runtime = legacy
        return SandboxPaths(self.root / "sandboxes" / sandbox_id, runtime)

    def retire_legacy_runtime(self, paths: SandboxPaths) -> bool:
        """Move a stopped sandbox off a runtime directory under the (now private) root; True if it was there."""
        if paths.runtime == self.runtime / paths.runtime.name:
            return False
        disk.unmount(paths.disk)
        shutil.rmtree(paths.runtime, ignore_errors=True)
        return True

    # -- disk --------------------------------------------------------------------------------

    def prepare_disk(self, paths: SandboxPaths, spec: SandboxSpec, template: Template, host_uid: int) -> None:
        """Create (first boot) and mount the sandbox's disk, with its home and /tmp."""
        fresh = not paths.image.exists()
        if fresh:
            disk.copy_sparse(disk.pristine_image(self.images, spec.limits.disk_mb), paths.image)
        paths.runtime.mkdir(mode=0o711, exist_ok=True)
        paths.disk.mkdir(mode=0o700, exist_ok=True)
        if not disk.is_mounted(paths.disk):
            disk.mount_image(paths.image, paths.disk)
            os.chown(paths.disk, host_uid, host_uid)  # only the sandbox's uid (and root) may enter
            os.chmod(paths.disk, 0o700)
        home, tmp = paths.disk / "home", paths.disk / "tmp"
        if not home.exists():
            home.mkdir(mode=0o755)
            skel = template.etc / "skel"
            if skel.is_dir():
                shutil.copytree(skel, home, symlinks=True, dirs_exist_ok=True)
            for dirpath, dirnames, filenames in os.walk(home):
                for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                    os.lchown(name, host_uid, host_uid)
        if not tmp.exists():
            tmp.mkdir()
            os.chmod(tmp, 0o1777)
            os.chown(tmp, host_uid, host_uid)

    # -- boot --------------------------------------------------------------------------------

    def agent_command(self, template: Template, listen_fd: int) -> list[str]:
        agent = "/.corral/agent"
        extra = ["--log", LOG_MOUNT]
        if template.is_base:
            return agent_argv(self.agent_python, agent, listen_fd=listen_fd, extra=extra)
        # The template may hold no Python (or another libc): run the host's, with the host's loader.
        python = HOST_USR_MOUNT + self.agent_python.removeprefix("/usr")
        loader = HOST_USR_MOUNT + str(Path(HOST_LOADER).resolve()).removeprefix("/usr")
        libs = ":".join(HOST_USR_MOUNT + d for d in ("/lib/x86_64-linux-gnu", "/lib64", "/lib"))
        return [loader, "--library-path", libs, *agent_argv(python, agent, listen_fd=listen_fd, extra=extra)]

    def bind_socket(self, paths: SandboxPaths) -> socketlib.socket:
        """The agent's socket, bound (not listening) at `paths.socket` by root, for the agent to inherit.

        Only root can write the directory it is in, so the sandbox cannot swap it for a link, and it is
        bound through /proc/self/fd so that its address (getsockname in the sandbox) names no host path.
        The agent calls listen(): the kernel then records the agent's credentials as the listener's,
        which the runner checks at each connect.
        """
        directory = os.open(paths.runtime, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(SOCKET, dir_fd=directory)
            sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
            try:
                sock.bind(f"/proc/self/fd/{directory}/{SOCKET}")
                os.chmod(SOCKET, 0o600, dir_fd=directory, follow_symlinks=False)
            except BaseException:
                sock.close()
                raise
            return sock
        finally:
            os.close(directory)

    def boot(self, spec: SandboxSpec, template: Template, host_uid: int) -> Booted:
        """Start the sandbox's processes on its prepared disk; returns once they run (not once the agent listens)."""
        paths = self.paths(spec.sandbox_id)
        legacy_run = paths.runtime / "run"  # an old layout's socket directory, owned by the sandbox's uid
        if legacy_run.is_symlink():
            legacy_run.unlink()
        else:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(legacy_run)
        with _open_log(paths) as log_file:
            st = os.fstat(log_file.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # never chown a file linked from elsewhere
                raise BootError(f"the sandbox's log {paths.log} is not a plain file of its own: remove it")
            os.fchown(log_file.fileno(), host_uid, host_uid)  # the agent reopens it inside, at LOG_MOUNT
        listener = self.bind_socket(paths)
        name = spec.sandbox_id
        self.cgroups.create(name, CgroupLimits(memory_bytes=spec.limits.memory_mb * 1024 * 1024,
                                               pids=spec.limits.pids, cpu_count=spec.limits.cpu_count))
        join = self.cgroups.join_files(name)
        info_r = info_w = block_r = block_w = -1
        opened: list[int] = [listener.detach()]
        internet = spec.allow_internet
        try:
            if internet:
                info_r, info_w = os.pipe2(os.O_CLOEXEC)
                block_r, block_w = os.pipe2(os.O_CLOEXEC)
            argv = bwrap_argv(bwrap=self.tools.bwrap, template=template,
                              home=paths.disk / "home", tmp=paths.disk / "tmp", log=paths.log,
                              agent_dir=self.agent_dir, command=self.agent_command(template, opened[0]),
                              info_fd=info_w if internet else None, block_fd=block_r if internet else None)
            # bubblewrap reads its options from a pipe: the host paths stay out of the sandbox's /proc/1/cmdline
            args_r, args_w = os.pipe2(os.O_CLOEXEC)
            opened.append(args_r)
            split = argv.index("--")
            os.write(args_w, b"".join(a.encode() + b"\0" for a in argv[1:split]))
            os.close(args_w)
            command = root_wrapper(join_files=join, host_uid=host_uid, setpriv=self.tools.setpriv,
                                   argv=[argv[0], "--args", str(args_r), *argv[split:]])
            keep = (opened[0], args_r, info_w, block_r) if internet else (opened[0], args_r)
            with _open_log(paths) as log:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           pass_fds=keep, env=agent_env(spec.envs), cwd="/",
                                           start_new_session=True)
            self._children.setdefault(name, []).append(process)
            slirp_pid = None
            if internet:
                os.close(info_w)
                os.close(block_r)
                info_w = block_r = -1
                child = self._child_pid(info_r, process, paths)
                slirp_pid = self._start_network(name, child, join, host_uid, paths)
                os.write(block_w, b"1")  # the firewall is in place: let the agent start
            return Booted(process, slirp_pid)
        finally:
            for fd in (info_r, info_w, block_r, block_w, *opened):
                if fd >= 0:
                    os.close(fd)

    def reap_when_done(self, sandbox_id: str, loop: asyncio.AbstractEventLoop) -> None:
        """Reap each process started for the sandbox as soon as it ends, whenever that is (the sandbox
        ending itself, slirp4netns dying), not at the next create: a pidfd per child in `loop`."""
        for child in self._children.get(sandbox_id, []):
            if child.returncode is not None:
                continue
            try:
                pidfd = os.pidfd_open(child.pid)
            except OSError:  # already gone (reaped by a wait) or no pidfd here: stop() waits for it
                continue

            def done(child: subprocess.Popen[bytes] = child, pidfd: int = pidfd) -> None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
                child.poll()

            loop.add_reader(pidfd, done)

    def _child_pid(self, info_r: int, process: subprocess.Popen[bytes], paths: SandboxPaths) -> int:
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([info_r], [], [], 0.1)
            if ready:
                chunk = os.read(info_r, 4096)
                if not chunk:
                    break
                data += chunk
            elif process.poll() is not None:
                break
        try:
            return int(json.loads(data)["child-pid"])
        except (ValueError, KeyError):
            raise BootError(f"bubblewrap did not start: {self.log_tail(paths)}") from None

    def _start_network(self, name: str, child_pid: int, join: list[Path], host_uid: int,
                       paths: SandboxPaths) -> int:
        if self.tools.slirp4netns is None or self.tools.nft is None:
            raise SandboxError("internet access needs slirp4netns and nftables: apt-get install slirp4netns "
                               "nftables (or run scripts/install-system-packages)")
        self.tun_node.parent.mkdir(mode=0o700, exist_ok=True)
        network.ensure_tun_node(self.tun_node)
        netns = os.open(f"/proc/{child_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        userns = fcntl.ioctl(netns, NS_GET_USERNS)  # the namespace's owner, not the sandbox's nested one
        try:
            slirp = None
            for attempt in range(1, SLIRP_ATTEMPTS + 1):
                slirp = self._start_slirp(name, join, host_uid, userns, netns, paths)
                if slirp is not None:
                    break
                # A transient race of the kernel's namespace setup (setns: EPERM, about one in a
                # thousand) clears by itself: the next try starts a fresh slirp4netns.
                log.warning("sandbox.network_retry", sandbox=name, attempt=attempt)
            if slirp is None:
                raise BootError(f"slirp4netns did not configure the network ({SLIRP_ATTEMPTS} tries): {self.log_tail(paths)}")
            rules = network.ruleset(network.host_addresses() + network.host_networks())
            result = subprocess.run(network.nft_argv(netns_fd=netns, nsenter=self.tools.nsenter, nft=self.tools.nft),
                                    input=rules.encode(), capture_output=True, pass_fds=(netns,), cwd="/")
            if result.returncode != 0:
                raise BootError(f"could not install the sandbox's firewall: {result.stderr.decode().strip()}")
            return slirp.pid
        finally:
            for fd in (netns, userns):
                os.close(fd)

    def _start_slirp(self, name: str, join: list[Path], host_uid: int, userns: int, netns: int,
                     paths: SandboxPaths) -> subprocess.Popen[bytes] | None:
        """slirp4netns on the sandbox's namespaces, once it says the network is up; None if it did not."""
        assert self.tools.slirp4netns is not None
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            argv = network.slirp_argv(tun_node=self.tun_node, join_files=join, host_uid=host_uid,
                                      userns_fd=userns, netns_fd=netns, ready_fd=ready_w,
                                      slirp=self.tools.slirp4netns, setpriv=self.tools.setpriv,
                                      unshare=self.tools.unshare, mount=self.tools.mount,
                                      nsenter=self.tools.nsenter)
            with _open_log(paths) as out:
                slirp = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         pass_fds=(userns, netns, ready_w), cwd="/", start_new_session=True)
            self._children.setdefault(name, []).append(slirp)
            os.close(ready_w)
            ready_w = -1
            ready, _, _ = select.select([ready_r], [], [], SLIRP_READY_TIMEOUT)
            if ready and os.read(ready_r, 1) == b"1":
                return slirp
            slirp.kill()
            slirp.wait()
            return None
        finally:
            for fd in (ready_r, ready_w):
                if fd >= 0:
                    os.close(fd)

    def log_tail(self, paths: SandboxPaths, limit: int = 2000) -> str:
        try:  # only its end: the sandbox may have grown it (up to its disk's size)
            fd = os.open(paths.log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return "(no output)"
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, 4 * limit, max(size - 4 * limit, 0))
        except OSError:
            data = b""
        finally:
            os.close(fd)
        return data.decode(errors="replace").strip()[-limit:] or "(no output)"

    # -- teardown ----------------------------------------------------------------------------

    def stop(self, sandbox_id: str, process: subprocess.Popen[bytes] | None = None,
             bwrap_pid: int | None = None) -> None:
        """Kill every process of the sandbox and remove its cgroups; its files stay.

        The sandbox's init goes first: the kernel then kills its whole PID namespace and bubblewrap
        reaps it, so nothing is left a zombie for the host's init to collect; the cgroup kill then
        takes whatever remains (slirp4netns, a process caught mid-fork).
        """
        name = sandbox_id
        members = self.cgroups.pids(name)
        outer = process.pid if process is not None else bwrap_pid
        if outer is not None and outer in members:
            for pid in members:
                if _parent_of(pid) == outer:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if self.cgroups.frozen(name):
                self.cgroups.thaw(name)
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
            else:
                deadline = time.monotonic() + 5
                while outer in self.cgroups.pids(name) and time.monotonic() < deadline:
                    time.sleep(0.001)
        if self.cgroups.exists(name):
            self.cgroups.kill(name)
        for child in {*self._children.pop(name, []), *([process] if process is not None else [])}:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)  # reaped now: no zombie slirp4netns or wrapper until the next create
        self.cgroups.remove(name)

    def destroy(self, sandbox_id: str, process: subprocess.Popen[bytes] | None = None,
                bwrap_pid: int | None = None) -> None:
        """Remove every trace of the sandbox: processes, cgroups, mount, directory."""
        self.stop(sandbox_id, process, bwrap_pid)
        paths = self.paths(sandbox_id)
        disk.unmount(paths.disk)
        if paths.runtime != self.runtime / sandbox_id:  # a runtime directory of the older layout (see `paths`)
            shutil.rmtree(self.runtime / sandbox_id, ignore_errors=True)
        for directory in (paths.runtime, paths.dir):
            shutil.rmtree(directory, ignore_errors=True)
            if directory.exists():
                raise SandboxError(f"could not remove {directory}")


def _open_log(paths: SandboxPaths) -> BinaryIO:
    """The sandbox's log for appending; never through a link (root opens it in the sandbox's directory)."""
    fd = os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 0o600)  # O_NONBLOCK: a FIFO planted there fails at once instead of hanging the runner
    return os.fdopen(fd, "ab")


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
