"""Processes and PTYs: spawn, own their pipes, fan their output out to followers, reap them.

A process's output keeps being read whether or not anyone follows it; a follower whose
connection is congested pauses the reading (the process then blocks on its pipe, as it would
on a slow terminal). The end event comes after the process is reaped and its pipes drained.
"""

from __future__ import annotations

import _signal as signal  # not the enum-building wrapper: a faster agent start
import contextlib
import errno
import fcntl
import os
import struct
import termios

from . import wire
from .errors import AgentError, bad_request
from .loop import READ, WRITE, Loop, log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .conn import Conn

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DRAIN_LIMIT = 4 * 1024 * 1024  # read at most this much after exit (grandchildren may keep writing)

SIGNALS = {
    "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT,
    "SIGHUP": signal.SIGHUP, "SIGQUIT": signal.SIGQUIT, "SIGUSR1": signal.SIGUSR1,
    "SIGUSR2": signal.SIGUSR2, "SIGSTOP": signal.SIGSTOP, "SIGCONT": signal.SIGCONT,
}

# How Go's os.ProcessState words a signal, which is what envd reports.
_SIGNAL_TEXT = {
    1: "hangup", 2: "interrupt", 3: "quit", 4: "illegal instruction", 5: "trace/breakpoint trap",
    6: "aborted", 7: "bus error", 8: "floating point exception", 9: "killed",
    10: "user defined signal 1", 11: "segmentation fault", 12: "user defined signal 2",
    13: "broken pipe", 14: "alarm clock", 15: "terminated",
}


def describe_status(status: int) -> tuple[int, bool, str]:
    """(exit_code, exited, status text) of a wait status, as envd reports them."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return code, True, f"exit status {code}"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        text = "signal: " + _SIGNAL_TEXT.get(sig, f"signal {sig}")
        if os.WCOREDUMP(status):
            text += " (core dumped)"
        return -sig, False, text
    return -1, False, f"wait status {status}"


def _take_terminal() -> None:
    """In the child of a PTY process: make the PTY (already on fd 0) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


class Follower:
    """One stream following one process."""

    def __init__(self, proc: Proc, conn: Conn, request_id: int) -> None:
        self.proc = proc
        self.conn = conn
        self.request_id = request_id

    def cancel(self) -> None:
        if self in self.proc.followers:
            self.proc.followers.remove(self)


class Proc:
    def __init__(self, table: ProcTable, pid: int, config: dict[str, Any], tag: str | None,
                 outputs: dict[int, str], stdin_fd: int | None, pty_fd: int | None) -> None:
        self.table = table
        self.pid = pid
        self.config = config
        self.tag = tag
        self.outputs = outputs  # open output fds -> stream name
        self.stdin_fd = stdin_fd  # pipe to the process's stdin, None once closed
        self.pty_fd = pty_fd  # the PTY's master: output and input
        self.pending_input = bytearray()
        self.close_stdin_after = False
        self.followers: list[Follower] = []
        self.paused = False
        self.popen: Any = None  # kept so that subprocess never reaps it behind our back
        for fd in outputs:
            self._update(fd)

    # -- file descriptors ------------------------------------------------------------------

    def _update(self, fd: int) -> None:
        mask = 0
        if fd in self.outputs and not self.paused:
            mask |= READ
        if self.pending_input and fd == self._input_fd():
            mask |= WRITE
        self.table.loop.watch(fd, mask, lambda events: self._on_ready(fd, events))

    def _input_fd(self) -> int | None:
        return self.pty_fd if self.pty_fd is not None else self.stdin_fd

    def _on_ready(self, fd: int, events: int) -> None:
        if events & WRITE:
            self._write_input()
        if fd in self.outputs and events & ~WRITE:
            self._read(fd, wire.CHUNK)

    def _read(self, fd: int, size: int) -> int:
        """Read once; returns bytes read, 0 at end of file (the fd is then closed)."""
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            return -1
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the PTY's last slave closed
                log(f"reading output of process {self.pid}: {exc}")
            data = b""
        if not data:
            self._close_output(fd)
            return 0
        self._deliver(self.outputs[fd], data)
        return len(data)

    def _deliver(self, stream: str, data: bytes) -> None:
        for follower in self.followers:
            follower.conn.send({"id": follower.request_id, "ev": "data", "stream": stream}, data)
            if follower.conn.congested and not self.paused:
                self.paused = True
                self.table.paused.add(self)
                for fd in self.outputs:
                    self._update(fd)

    def resume_if_drained(self) -> bool:
        if any(f.conn.congested for f in self.followers):
            return False
        self.paused = False
        for fd in list(self.outputs):
            self._update(fd)
        return True

    def _close_output(self, fd: int) -> None:
        self.outputs.pop(fd, None)
        if fd == self.pty_fd:
            self.pty_fd = None
            self.pending_input.clear()
        self.table.loop.forget(fd)
        os.close(fd)

    # -- input -----------------------------------------------------------------------------

    def send_input(self, data: bytes, pty: bool) -> None:
        if pty and self.pty_fd is None and self.stdin_fd is not None:
            raise bad_request(f"process {self.pid} has no PTY; send its input as stdin")
        fd = self._input_fd()
        if fd is None:
            raise AgentError(wire.GENERIC, f"stdin of process {self.pid} is closed; start it with stdin enabled")
        if self.close_stdin_after:
            raise AgentError(wire.GENERIC, f"stdin of process {self.pid} is being closed")
        self.pending_input += data
        self._write_input()

    def close_stdin(self) -> None:
        if self.pty_fd is not None:
            raise bad_request(f"process {self.pid} runs in a PTY; send Ctrl-D (\\x04) to end its input")
        self.close_stdin_after = True
        self._write_input()

    def _write_input(self) -> None:
        fd = self._input_fd()
        if fd is None:
            self.pending_input.clear()
            return
        while self.pending_input:
            try:
                written = os.write(fd, self.pending_input)
            except BlockingIOError:
                break
            except OSError as exc:  # EPIPE: the process closed its stdin
                log(f"writing input of process {self.pid}: {exc}")
                self.pending_input.clear()
                break
            del self.pending_input[:written]
        if self.close_stdin_after and not self.pending_input and self.stdin_fd is not None:
            self.table.loop.forget(self.stdin_fd)
            os.close(self.stdin_fd)
            self.stdin_fd = None
            return
        self._update(fd)

    def resize(self, cols: int, rows: int) -> None:
        if self.pty_fd is None:
            raise bad_request(f"process {self.pid} has no PTY to resize")
        _set_size(self.pty_fd, cols, rows)

    # -- the end ---------------------------------------------------------------------------

    def finish(self, status: int) -> None:
        budget = DRAIN_LIMIT
        for fd in list(self.outputs):
            while fd in self.outputs and budget > 0:
                got = self._read(fd, min(wire.CHUNK, budget))
                if got <= 0:
                    break
                budget -= got
        for fd in list(self.outputs):
            self._close_output(fd)
        if self.stdin_fd is not None:
            self.table.loop.forget(self.stdin_fd)
            os.close(self.stdin_fd)
            self.stdin_fd = None
        code, exited, text = describe_status(status)
        end = {"ev": "end", "exit_code": code, "exited": exited, "status": text, "error": None}
        for follower in self.followers:
            follower.conn.send({"id": follower.request_id, **end})
            follower.conn.end_stream(follower.request_id)
        self.followers.clear()
        if self.popen is not None:
            self.popen.returncode = code
        self.table.paused.discard(self)

    def info(self) -> dict[str, Any]:
        return {"pid": self.pid, "tag": self.tag, **self.config}


class ProcTable:
    def __init__(self, loop: Loop, home: str, user: str, envs: dict[str, str]) -> None:
        self.loop = loop
        self.home = home
        self.user = user
        self.envs = envs
        self.procs: dict[int, Proc] = {}
        self.paused: set[Proc] = set()

    def environment(self, envs: dict[str, str], pty: bool) -> dict[str, str]:
        env = {"HOME": self.home, "USER": self.user, "LOGNAME": self.user, "PATH": DEFAULT_PATH,
               "SHELL": "/bin/bash", "LANG": "C.UTF-8"}
        env.update(self.envs)
        env.update(envs)
        if pty:
            env.setdefault("TERM", "xterm-256color")
        return env

    def start(self, request: dict[str, Any]) -> Proc:
        cmd = request.get("cmd")
        args = request.get("args") or []
        envs = request.get("envs") or {}
        cwd = request.get("cwd") or self.home
        tag = request.get("tag")
        pty = request.get("pty")
        if not isinstance(cmd, str) or not cmd:
            raise bad_request("cmd must be a non-empty string")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise bad_request("args must be a list of strings")
        if not isinstance(envs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in envs.items()):
            raise bad_request("envs must map strings to strings")
        if not isinstance(cwd, str):
            raise bad_request("cwd must be a string")
        if tag is not None and not isinstance(tag, str):
            raise bad_request("tag must be a string")
        if pty is not None and not (isinstance(pty, dict) and _positive(pty.get("cols")) and _positive(pty.get("rows"))):
            raise bad_request("pty must be {cols, rows} with positive integers")
        cwd = os.path.join(self.home, cwd)  # a relative cwd is relative to the home
        if not os.path.isdir(cwd):
            raise AgentError("FileNotFound", f"working directory {cwd} does not exist")
        config = {"cmd": cmd, "args": args, "envs": envs, "cwd": cwd}
        env = self.environment(envs, pty is not None)
        import subprocess  # not at start: it costs milliseconds

        opened: list[int] = []
        try:
            if pty is not None:
                master, slave = os.openpty()
                opened += [master, slave]
                _set_size(slave, pty["cols"], pty["rows"])
                popen = subprocess.Popen([cmd, *args], stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                         env=env, start_new_session=True, preexec_fn=_take_terminal)
                os.close(slave)
                opened.remove(slave)
                _nonblocking(master)
                outputs = {master: "pty"}
                stdin_fd, pty_fd = None, master
            else:
                out_r, out_w = os.pipe()
                opened += [out_r, out_w]
                err_r, err_w = os.pipe()
                opened += [err_r, err_w]
                in_r = in_w = None
                if request.get("stdin"):
                    in_r, in_w = os.pipe()
                    opened += [in_r, in_w]
                popen = subprocess.Popen([cmd, *args], stdin=in_r if in_r is not None else subprocess.DEVNULL,
                                         stdout=out_w, stderr=err_w, cwd=cwd, env=env,
                                         start_new_session=True)
                for fd in (out_w, err_w, in_r):
                    if fd is not None:
                        os.close(fd)
                        opened.remove(fd)
                for fd in (out_r, err_r, in_w):
                    if fd is not None:
                        _nonblocking(fd)
                outputs = {out_r: "stdout", err_r: "stderr"}
                stdin_fd, pty_fd = in_w, None
        except OSError as exc:
            for fd in opened:
                os.close(fd)
            kind = {errno.ENOENT: "FileNotFound", errno.EACCES: "PermissionDenied"}.get(exc.errno or 0, wire.GENERIC)
            raise AgentError(kind, f"cannot start {cmd!r}: {exc.strerror or exc}") from None
        proc = Proc(self, popen.pid, config, tag, outputs, stdin_fd, pty_fd)
        proc.popen = popen
        self.procs[proc.pid] = proc
        return proc

    def find(self, pid: Any = None, tag: Any = None) -> Proc:
        if pid is not None:
            proc = self.procs.get(pid) if isinstance(pid, int) else None
            if proc is None:
                raise AgentError("ProcessNotFound", f"no running process with pid {pid}")
            return proc
        if isinstance(tag, str):
            for proc in reversed(list(self.procs.values())):
                if proc.tag == tag:
                    return proc
            raise AgentError("ProcessNotFound", f"no running process with tag {tag!r}")
        raise bad_request("give the process's pid or tag")

    def follow(self, proc: Proc, conn: Conn, request_id: int) -> None:
        follower = Follower(proc, conn, request_id)
        proc.followers.append(follower)
        conn.streams[request_id] = follower
        conn.send({"id": request_id, "ev": "start", "pid": proc.pid})

    def signal(self, proc: Proc, name: Any) -> None:
        sig = SIGNALS.get(name) if isinstance(name, str) else None
        if sig is None:
            raise bad_request(f"unknown signal {name!r}; use one of {', '.join(SIGNALS)}")
        try:
            os.killpg(proc.pid, sig)  # each process leads its own group: its children get it too
        except OSError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.procs.pop(pid, None)
            if proc is not None:  # else an orphan reparented to us (we are a subreaper)
                proc.finish(status)

    def resume_drained(self) -> None:
        for proc in list(self.paused):
            if proc.resume_if_drained():
                self.paused.discard(proc)

    def kill_all(self) -> None:
        for pid in list(self.procs):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
