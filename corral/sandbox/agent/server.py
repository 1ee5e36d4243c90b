"""The agent: accept connections on a Unix socket and serve requests until told to stop.

Ops (header fields besides ``id`` and ``op``; results in ``ok``; streams send ``ev`` frames):
  ping                                    -> {pid, boot_time, version, processes}
  start   cmd args envs cwd pty{cols,rows} tag stdin  -> ev start{pid}, data{stream}+bytes, end{...}
  connect pid | tag                       -> the same stream, from now on
  list                                    -> [{pid, tag, cmd, args, envs, cwd}]
  input   pid pty + bytes | close_stdin pid | signal pid signal | resize pid cols rows
  read    path                            -> ev data+bytes ..., then {size}
  write   path (+bytes), then data+bytes (same id) ..., then eof (same id) -> entry
  stat path | ls path depth | mkdir path | rename src dst | remove path
  watch   path recursive                  -> ev start, then ev fs{name, type} until cancelled
  cancel  (same id as the stream)         -> ends that stream
"""

from __future__ import annotations

# _signal and _socket, not their enum-building wrappers: they cost a tenth of the agent's start.
import _signal as signal
import _socket as socket
import contextlib
import os
import time

from . import files, wire
from .conn import Conn
from .errors import AgentError, bad_request
from .loop import READ, Loop, log, log_exception
from .procs import ProcTable
from .streams import ReadStream, WatchStream
from .watch import Watcher

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Unary = Callable[[dict[str, Any], bytes], Any]
    Streaming = Callable[[Conn, int, dict[str, Any], bytes], None]

PR_SET_CHILD_SUBREAPER = 36


class Agent:
    def __init__(self, socket_path: str, home: str, user: str, envs: dict[str, str]) -> None:
        self.socket_path = socket_path
        self.home = home
        self.boot_time = time.time()
        self.loop = Loop()
        self.dirty: set[Conn] = set()
        self.reads: set[ReadStream] = set()
        self.procs = ProcTable(self.loop, home, user, envs)
        self.unary: dict[str, Unary] = {
            "ping": self._ping, "list": self._list, "input": self._input,
            "close_stdin": self._close_stdin, "signal": self._signal, "resize": self._resize,
            "stat": self._stat, "ls": self._ls, "mkdir": self._mkdir, "rename": self._rename,
            "remove": self._remove,
        }
        self.streaming: dict[str, Streaming] = {
            "start": self._start, "connect": self._connect, "read": self._read,
            "write": self._write, "watch": self._watch,
        }
        self.loop.after.append(self._after_turn)
        self.loop.busy = self._busy

    # -- plumbing ----------------------------------------------------------------------------

    def listen(self, fd: int | None = None) -> None:
        """Listen on the inherited, already bound socket `fd`; else bind under a temporary name and rename
        (the socket's path exists only once it listens)."""
        if fd is not None:
            os.set_inheritable(fd, False)  # the sandbox's processes must not inherit the agent's listener
            self.server = socket.socket(fileno=fd)
            self.server.listen(128)
            self.server.setblocking(False)
            self.loop.watch(self.server.fileno(), READ, self._accept)
            return
        staging = self.socket_path + ".new"
        for path in (staging, self.socket_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.server.bind(staging)
        finally:
            os.umask(old)
        self.server.listen(128)
        os.rename(staging, self.socket_path)
        self.server.setblocking(False)
        self.loop.watch(self.server.fileno(), READ, self._accept)

    def handle_signals(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.loop.watch(wake_r, READ, lambda _events: self._on_signals(wake_r))

    def become_subreaper(self) -> None:
        """Orphans of the sandbox's processes are reparented to us and reaped, not to the host."""
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError) as exc:
            log(f"cannot become a subreaper: {exc}")

    def _on_signals(self, fd: int) -> None:
        try:
            received = os.read(fd, 512)
        except BlockingIOError:
            received = b""
        if signal.SIGTERM in received or signal.SIGINT in received:
            log("stopping: killing every process")
            self.procs.kill_all()
            self.loop.running = False
        self.procs.reap()  # SIGCHLD, or a wakeup byte lost to a full pipe: reaping is cheap

    def _accept(self, _events: int) -> None:
        while True:
            try:
                fd, _addr = self.server._accept()  # type: ignore[attr-defined]  # _socket: (fd, address)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log(f"accept failed: {exc}")
                return
            Conn(self.loop, socket.socket(fileno=fd), self.dispatch, self.dirty)

    def _busy(self) -> bool:
        return any(not r.conn.congested for r in self.reads)

    def _after_turn(self) -> None:
        for read in list(self.reads):
            read.pump()
        while self.dirty:
            self.dirty.pop().flush()
        self.procs.resume_drained()

    def dispatch(self, conn: Conn, header: dict[str, Any], payload: bytes) -> None:
        request_id = header.get("id")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            conn.fail(None, wire.BAD_REQUEST, "every request needs an integer id")
            return
        op = header.get("op")
        try:
            if op in ("data", "eof"):
                self._upload_more(conn, request_id, op, payload)
            elif op == "cancel":
                stream = conn.streams.pop(request_id, None)
                if stream is not None:
                    stream.cancel()
                    conn.reply(request_id, None)
            elif request_id in conn.streams:
                raise bad_request(f"request id {request_id} is already in use on this connection")
            elif isinstance(op, str) and op in self.unary:
                conn.reply(request_id, self.unary[op](header, payload))
            elif isinstance(op, str) and op in self.streaming:
                self.streaming[op](conn, request_id, header, payload)
            else:
                raise bad_request(f"unknown op {op!r}")
        except AgentError as exc:
            conn.fail(request_id, exc.kind, exc.message)
        except Exception as exc:
            log_exception(f"op {op!r} failed")
            conn.fail(request_id, wire.GENERIC, f"the sandbox agent failed on {op!r}: {exc!r}")

    def _path(self, header: dict[str, Any], key: str = "path") -> str:
        return files.resolve(self.home, header.get(key))

    # -- processes -------------------------------------------------------------------------

    def _start(self, conn: Conn, request_id: int, header: dict[str, Any], _payload: bytes) -> None:
        self.procs.follow(self.procs.start(header), conn, request_id)

    def _connect(self, conn: Conn, request_id: int, header: dict[str, Any], _payload: bytes) -> None:
        self.procs.follow(self.procs.find(header.get("pid"), header.get("tag")), conn, request_id)

    def _list(self, _header: dict[str, Any], _payload: bytes) -> Any:
        return [proc.info() for proc in self.procs.procs.values()]

    def _input(self, header: dict[str, Any], payload: bytes) -> Any:
        self.procs.find(header.get("pid")).send_input(payload, bool(header.get("pty")))

    def _close_stdin(self, header: dict[str, Any], _payload: bytes) -> Any:
        self.procs.find(header.get("pid")).close_stdin()

    def _signal(self, header: dict[str, Any], _payload: bytes) -> Any:
        self.procs.signal(self.procs.find(header.get("pid")), header.get("signal"))

    def _resize(self, header: dict[str, Any], _payload: bytes) -> Any:
        cols, rows = header.get("cols"), header.get("rows")
        if not (isinstance(cols, int) and isinstance(rows, int) and 0 < cols < 65536 and 0 < rows < 65536):
            raise bad_request("cols and rows must be positive integers")
        self.procs.find(header.get("pid")).resize(cols, rows)

    def _ping(self, _header: dict[str, Any], _payload: bytes) -> Any:
        return {"pid": os.getpid(), "boot_time": self.boot_time, "version": wire.VERSION,
                "processes": len(self.procs.procs)}

    # -- files -----------------------------------------------------------------------------

    def _stat(self, header: dict[str, Any], _payload: bytes) -> Any:
        return files.stat_path(self._path(header))

    def _ls(self, header: dict[str, Any], _payload: bytes) -> Any:
        depth = header.get("depth", 1)
        if not isinstance(depth, int) or isinstance(depth, bool):
            raise bad_request("depth must be an integer")
        return files.list_dir(self._path(header), depth)

    def _mkdir(self, header: dict[str, Any], _payload: bytes) -> Any:
        return files.make_dir(self._path(header))

    def _rename(self, header: dict[str, Any], _payload: bytes) -> Any:
        return files.rename(self._path(header, "src"), self._path(header, "dst"))

    def _remove(self, header: dict[str, Any], _payload: bytes) -> Any:
        files.remove(self._path(header))

    def _read(self, conn: Conn, request_id: int, header: dict[str, Any], _payload: bytes) -> None:
        ReadStream(conn, request_id, files.open_read(self._path(header)), self.reads)

    def _write(self, conn: Conn, request_id: int, header: dict[str, Any], payload: bytes) -> None:
        metadata = header.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and k and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise bad_request("metadata must be an object of non-empty string keys and string values")
        conn.streams[request_id] = files.Upload(self._path(header), metadata)
        self._upload_more(conn, request_id, "data", payload)

    def _upload_more(self, conn: Conn, request_id: int, op: str, payload: bytes) -> None:
        upload = conn.streams.get(request_id)
        if not isinstance(upload, files.Upload):
            return  # its request already failed and was answered; the client is still sending
        try:
            if op == "data":
                upload.write(payload)
                return
            conn.streams.pop(request_id, None)
            conn.reply(request_id, upload.finish())
        except AgentError:
            conn.streams.pop(request_id, None)
            raise

    def _watch(self, conn: Conn, request_id: int, header: dict[str, Any], _payload: bytes) -> None:
        WatchStream(conn, request_id, Watcher(self._path(header), bool(header.get("recursive"))), self.loop)


def _ignore(_signum: int, _frame: Any) -> None:
    """Signals wake the loop through the wakeup fd; the handler itself does nothing."""


def _parse(argv: list[str]) -> dict[str, str]:
    options = {"--home": os.path.expanduser("~"), "--user": ""}
    it = iter(argv)
    for arg in it:
        if arg in ("--socket", "--listen-fd", "--log", "--home", "--user"):
            value = next(it, None)
            if value is None:
                raise SystemExit(f"corral-agent: {arg} needs a value")
            options[arg] = value
        else:
            raise SystemExit(f"corral-agent: unknown argument {arg!r}; usage: --socket PATH | --listen-fd FD "
                             "[--log FILE] [--home DIR] [--user NAME]")
    if ("--socket" in options) == ("--listen-fd" in options):
        raise SystemExit("corral-agent: one of --socket PATH or --listen-fd FD is required")
    return options


def _log_to(path: str) -> None:
    """Send stdout and stderr to `path`, opened here: the descriptors the agent inherited name the log by
    its host path, which no process of the sandbox may read (in /proc/1/fd)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv: list[str]) -> int:
    options = _parse(argv)
    if "--log" in options:
        _log_to(options["--log"])
    import json

    envs = json.loads(os.environ.pop("CORRAL_AGENT_ENVS", "") or "{}")
    user = options["--user"] or os.environ.get("USER") or str(os.getuid())
    listen_fd = options.get("--listen-fd")
    agent = Agent(options.get("--socket", ""), options["--home"], user, envs)
    agent.handle_signals()
    agent.listen(int(listen_fd) if listen_fd is not None else None)
    agent.become_subreaper()
    agent.loop.run()
    if listen_fd is None:
        with contextlib.suppress(OSError):
            os.unlink(agent.socket_path)
    return 0
