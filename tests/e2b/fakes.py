"""A small in-process `SandboxFleet` over real host processes and a directory per sandbox.

For testing the E2B protocol layer alone (no isolation, no engine): every sandbox path maps
into its own directory, processes run on the host, pause stops their process groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import secrets
import shutil
import signal as signals
import stat as stat_module
import struct
import termios
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from corral.fleet import CreateRequest, InvalidAccessToken, ListQuery, Page, SandboxRecord
from corral.sandbox.protocol import (
    HOME,
    Data,
    DiskFull,
    End,
    EntryInfo,
    FileExists,
    FileNotFound,
    InvalidPath,
    Limits,
    Metrics,
    PermissionDenied,
    ProcessConfig,
    ProcessEvent,
    ProcessInfo,
    ProcessNotFound,
    PtySize,
    SandboxNotFound,
    SandboxStateError,
    Start,
    TemplateNotFound,
    WatchEvent,
)

TEMPLATES = ("base",)


class FakeProcess:
    def __init__(self, proc: asyncio.subprocess.Process | None, pid: int, config: ProcessConfig, tag: str | None,
                 master: int | None) -> None:
        self.proc = proc
        self.pid = pid
        self.config = config
        self.tag = tag
        self.master = master
        self.listeners: list[asyncio.Queue[ProcessEvent]] = []
        self.end: End | None = None
        self.stdin = proc.stdin if proc is not None else None

    def publish(self, event: ProcessEvent) -> None:
        for queue in list(self.listeners):
            queue.put_nowait(event)

    async def follow(self, queue: asyncio.Queue[ProcessEvent]) -> AsyncIterator[ProcessEvent]:
        try:
            yield Start(self.pid)
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, End):
                    return
        finally:
            with contextlib.suppress(ValueError):
                self.listeners.remove(queue)


class FakeProcesses:
    def __init__(self, sandbox: FakeSandbox) -> None:
        self.sandbox = sandbox
        self.running: dict[int, FakeProcess] = {}

    async def start(self, config: ProcessConfig, *, pty: PtySize | None = None, tag: str | None = None,
                    stdin: bool = False) -> AsyncIterator[ProcessEvent]:
        cwd = self.sandbox.real(config.cwd or HOME)
        if not cwd.is_dir():
            raise FileNotFound(f"the working directory {config.cwd} does not exist")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.sandbox.real(HOME)),
               "USER": config.user, **self.sandbox.envs, **config.envs}
        master = None
        if pty is not None:
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", pty.rows, pty.cols, 0, 0))
            proc = await asyncio.create_subprocess_exec(config.cmd, *config.args, stdin=slave, stdout=slave, stderr=slave,
                                                        cwd=cwd, env=env, start_new_session=True)
            os.close(slave)
        else:
            proc = await asyncio.create_subprocess_exec(
                config.cmd, *config.args, cwd=cwd, env=env, start_new_session=True,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        process = FakeProcess(proc, proc.pid, config, tag, master)
        queue: asyncio.Queue[ProcessEvent] = asyncio.Queue()
        process.listeners.append(queue)
        self.running[proc.pid] = process
        self.sandbox.tasks.add(asyncio.create_task(self._run(process)))
        return process.follow(queue)

    async def _run(self, process: FakeProcess) -> None:
        proc = process.proc
        assert proc is not None
        readers = []
        if process.master is not None:
            readers.append(self._pty(process))
        else:
            assert proc.stdout is not None and proc.stderr is not None
            readers += [self._pipe(process, proc.stdout, "stdout"), self._pipe(process, proc.stderr, "stderr")]
        await asyncio.gather(*readers)
        code = await proc.wait()
        if process.master is not None:
            os.close(process.master)
        status = f"exit status {code}" if code >= 0 else f"signal: {signals.Signals(-code).name.lower()[3:]}"
        end = End(exit_code=code, exited=code >= 0, status=status)
        process.end = end
        self.running.pop(process.pid, None)
        process.publish(end)

    async def _pipe(self, process: FakeProcess, stream: asyncio.StreamReader, name: str) -> None:
        while chunk := await stream.read(65536):
            process.publish(Data(name, chunk))  # type: ignore[arg-type]

    async def _pty(self, process: FakeProcess) -> None:
        loop = asyncio.get_running_loop()
        assert process.master is not None
        while True:
            try:
                chunk = await loop.run_in_executor(None, os.read, process.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            process.publish(Data("pty", chunk))

    def _get(self, pid: int) -> FakeProcess:
        process = self.running.get(pid)
        if process is None:
            raise ProcessNotFound(f"no running process has the pid {pid}")
        return process

    def connect(self, *, pid: int | None = None, tag: str | None = None) -> AsyncIterator[ProcessEvent]:
        async def follow() -> AsyncIterator[ProcessEvent]:
            found = next((p for p in self.running.values() if (pid is not None and p.pid == pid) or (tag and p.tag == tag)), None)
            if found is None:
                raise ProcessNotFound(f"no running process has the {'pid ' + str(pid) if pid is not None else 'tag ' + repr(tag)}")
            queue: asyncio.Queue[ProcessEvent] = asyncio.Queue()
            found.listeners.append(queue)
            async for event in found.follow(queue):
                yield event

        return follow()

    async def list(self) -> list[ProcessInfo]:
        return [ProcessInfo(p.pid, p.config, p.tag) for p in self.running.values()]

    async def send_input(self, pid: int, data: bytes, *, pty: bool = False) -> None:
        process = self._get(pid)
        if pty:
            if process.master is None:
                raise ProcessNotFound(f"process {pid} has no PTY")
            os.write(process.master, data)
            return
        if process.stdin is None:
            raise InvalidPath(f"process {pid} was started without stdin")
        process.stdin.write(data)
        await process.stdin.drain()

    async def close_stdin(self, pid: int) -> None:
        process = self._get(pid)
        if process.stdin is not None:
            process.stdin.close()

    async def signal(self, pid: int, signal: str) -> None:
        self._get(pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, getattr(signals, signal))

    async def resize(self, pid: int, size: PtySize) -> None:
        process = self._get(pid)
        if process.master is not None:
            fcntl.ioctl(process.master, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


class WatchIterator:
    """Polls a directory; `ready` resolves once the first snapshot is taken."""

    def __init__(self, root: Path, recursive: bool, interval: float = 0.05) -> None:
        self.root = root
        self.recursive = recursive
        self.interval = interval
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gen = self._run()

    def __aiter__(self) -> WatchIterator:
        return self

    async def __anext__(self) -> WatchEvent:
        return await anext(self.gen)

    async def aclose(self) -> None:
        await self.gen.aclose()

    def _snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        paths: Iterable[Path] = self.root.rglob("*") if self.recursive else self.root.iterdir()
        for path in paths:
            with contextlib.suppress(OSError):
                out[str(path.relative_to(self.root))] = path.stat().st_mtime_ns
        return out

    async def _run(self) -> AsyncIterator[WatchEvent]:
        try:
            if not self.root.is_dir():
                raise FileNotFound(f"cannot watch {self.root.name}: no such directory")
            before = self._snapshot()
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
                self.ready.exception()
            raise
        self.ready.set_result(None)
        while True:
            await asyncio.sleep(self.interval)
            after = self._snapshot()
            for name in sorted(after.keys() - before.keys()):
                yield WatchEvent(name, "create")
            for name in sorted(k for k in after.keys() & before.keys() if after[k] != before[k]):
                yield WatchEvent(name, "write")
            for name in sorted(before.keys() - after.keys()):
                yield WatchEvent(name, "remove")
            before = after


def _metadata(real: Path) -> dict[str, str] | None:
    try:
        found = {n[len("user.e2b."):]: os.getxattr(real, n).decode() for n in os.listxattr(real) if n.startswith("user.e2b.")}
    except OSError:
        return None
    return found or None


class FakeFiles:
    def __init__(self, sandbox: FakeSandbox) -> None:
        self.sandbox = sandbox

    def _entry(self, real: Path) -> EntryInfo:
        info = real.lstat()
        kind = "symlink" if stat_module.S_ISLNK(info.st_mode) else "dir" if stat_module.S_ISDIR(info.st_mode) else "file"
        return EntryInfo(name=real.name, type=kind, path=self.sandbox.inside(real), size=info.st_size,  # type: ignore[arg-type]
                         mode=stat_module.S_IMODE(info.st_mode), permissions=stat_module.filemode(info.st_mode),
                         owner="user", group="user", modified_time=info.st_mtime,
                         symlink_target=os.readlink(real) if kind == "symlink" else None,
                         metadata=None if kind == "symlink" else _metadata(real))

    def read(self, path: str, *, user: str = "user") -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            real = self.sandbox.real(path)
            if not real.exists():
                raise FileNotFound(f"{path} does not exist")
            if real.is_dir():
                raise InvalidPath(f"{path} is a directory")
            with real.open("rb") as fh:
                while chunk := fh.read(65536):
                    yield chunk

        return chunks()

    async def write(self, path: str, chunks: AsyncIterator[bytes], *, user: str = "user",
                    metadata: dict[str, str] | None = None) -> EntryInfo:
        real = self.sandbox.real(path)
        if real.is_dir():
            raise InvalidPath(f"{path} is a directory")
        real.parent.mkdir(parents=True, exist_ok=True)
        temp = real.with_name(real.name + ".part-" + secrets.token_hex(4))
        try:
            written = 0
            with temp.open("wb") as fh:
                async for chunk in chunks:
                    written += len(chunk)
                    if written > self.sandbox.disk_bytes:
                        raise DiskFull(f"the sandbox's disk of {self.sandbox.disk_bytes} bytes is full")
                    fh.write(chunk)
            for key, value in (metadata or {}).items():
                os.setxattr(temp, "user.e2b." + key.lower(), value.encode())
            temp.replace(real)
        finally:
            temp.unlink(missing_ok=True)
        return self._entry(real)

    async def stat(self, path: str, *, user: str = "user") -> EntryInfo:
        real = self.sandbox.real(path)
        if not real.exists() and not real.is_symlink():
            raise FileNotFound(f"{path} does not exist")
        return self._entry(real)

    async def list(self, path: str, *, depth: int = 1, user: str = "user") -> list[EntryInfo]:
        real = self.sandbox.real(path)
        if not real.is_dir():
            raise FileNotFound(f"{path} is not a directory") if not real.exists() else InvalidPath(f"{path} is not a directory")
        out: list[EntryInfo] = []

        def walk(directory: Path, level: int) -> None:
            for child in sorted(directory.iterdir()):
                out.append(self._entry(child))
                if level < depth and child.is_dir() and not child.is_symlink():
                    walk(child, level + 1)

        walk(real, 1)
        return out

    async def make_dir(self, path: str, *, user: str = "user") -> EntryInfo:
        real = self.sandbox.real(path)
        if real.exists():
            raise FileExists(f"{path} already exists")
        real.mkdir(parents=True)
        return self._entry(real)

    async def rename(self, source: str, destination: str, *, user: str = "user") -> EntryInfo:
        src, dst = self.sandbox.real(source), self.sandbox.real(destination)
        if not src.exists():
            raise FileNotFound(f"{source} does not exist")
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
        return self._entry(dst)

    async def remove(self, path: str, *, user: str = "user") -> None:
        real = self.sandbox.real(path)
        if real == self.sandbox.root:
            raise PermissionDenied("the root directory cannot be removed")
        if real.is_dir() and not real.is_symlink():
            shutil.rmtree(real)
        elif real.exists() or real.is_symlink():
            real.unlink()
        else:
            raise FileNotFound(f"{path} does not exist")

    def watch(self, path: str, *, recursive: bool = False, user: str = "user") -> AsyncIterator[WatchEvent]:
        return WatchIterator(self.sandbox.real(path), recursive)


class FakeSandbox:
    def __init__(self, sandbox_id: str, root: Path, envs: dict[str, str], disk_bytes: int) -> None:
        self._id = sandbox_id
        self.root = root
        self.envs = envs
        self.disk_bytes = disk_bytes
        self.tasks: set[asyncio.Task[None]] = set()
        self._processes = FakeProcesses(self)
        self._files = FakeFiles(self)
        self.paused = False
        (root / HOME.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)

    def real(self, path: str) -> Path:
        """A sandbox path on the host: resolved inside the sandbox's root, whatever `..` it holds."""
        if "\x00" in path:
            raise InvalidPath("a path cannot hold a NUL byte")
        absolute = path if path.startswith("/") else f"{HOME}/{path}"
        return self.root / os.path.normpath("/" + absolute).lstrip("/")

    def inside(self, real: Path) -> str:
        return "/" + str(real.relative_to(self.root))

    @property
    def sandbox_id(self) -> str:
        return self._id

    @property
    def processes(self) -> FakeProcesses:
        return self._processes

    @property
    def files(self) -> FakeFiles:
        return self._files

    def _signal_all(self, sig: int) -> None:
        for pid in list(self._processes.running):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)

    async def pause(self) -> None:
        self._signal_all(signals.SIGSTOP)
        self.paused = True

    async def resume(self) -> None:
        self._signal_all(signals.SIGCONT)
        self.paused = False

    async def kill(self) -> None:
        self._signal_all(signals.SIGCONT)
        self._signal_all(signals.SIGKILL)
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
        shutil.rmtree(self.root, ignore_errors=True)


class FakeFleet:
    def __init__(self, base: Path, clock: Any = time.time, disk_bytes: int = 64 << 20) -> None:
        self.base = base
        self.clock = clock
        self.disk_bytes = disk_bytes
        self.records: dict[str, SandboxRecord] = {}
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.touched: list[str] = []
        self.access_token_calls = 0

    def _record(self, owner: str, sandbox_id: str) -> SandboxRecord:
        record = self.records.get(sandbox_id)
        if record is None or record.owner != owner:
            raise SandboxNotFound(f"sandbox {sandbox_id} not found")
        self._expire(record)
        return self.records[sandbox_id]

    def _expire(self, record: SandboxRecord) -> None:
        if record.state == "running" and record.end_at <= self.clock():
            sandbox = self.sandboxes.pop(record.sandbox_id, None)
            if sandbox is not None:
                sandbox._signal_all(signals.SIGKILL)
            self.records[record.sandbox_id] = dataclasses.replace(record, state="killed", ended_at=self.clock())

    async def create(self, owner: str, request: CreateRequest) -> SandboxRecord:
        if request.template not in TEMPLATES:
            raise TemplateNotFound(f"template {request.template!r} not found; known templates: {', '.join(TEMPLATES)}")
        sandbox_id = secrets.token_hex(10)
        root = self.base / sandbox_id
        root.mkdir(parents=True)
        self.sandboxes[sandbox_id] = FakeSandbox(sandbox_id, root, request.envs, self.disk_bytes)
        now = self.clock()
        record = SandboxRecord(sandbox_id=sandbox_id, owner=owner, template=request.template, state="running",
                               runner="fake", started_at=now, end_at=now + request.timeout, on_timeout=request.on_timeout,
                               auto_resume=request.auto_resume, metadata=dict(request.metadata), limits=Limits(),
                               allow_internet=request.allow_internet,
                               access_token=secrets.token_hex(16) if request.secure else "",
                               last_activity=now)
        self.records[sandbox_id] = record
        return record

    async def get(self, owner: str, sandbox_id: str) -> SandboxRecord:
        return self._record(owner, sandbox_id)

    async def list(self, owner: str, query: ListQuery) -> Page:
        for record in list(self.records.values()):
            self._expire(record)
        found = [r for r in self.records.values() if r.owner == owner and r.state in query.states
                 and all(r.metadata.get(k) == v for k, v in query.metadata.items())
                 and (query.template is None or r.template == query.template)
                 and (query.started_after is None or r.started_at >= query.started_after)]
        found.sort(key=lambda r: (r.started_at, r.sandbox_id), reverse=query.order == "desc")
        offset = int(query.next_token) if query.next_token else 0
        page = found[offset:offset + query.limit]
        more = offset + query.limit < len(found)
        return Page(page, str(offset + query.limit) if more else None)

    async def kill(self, owner: str, sandbox_id: str) -> None:
        record = self._record(owner, sandbox_id)
        if record.state == "killed":
            raise SandboxNotFound(f"sandbox {sandbox_id} not found")
        self.records[sandbox_id] = dataclasses.replace(record, state="killed", ended_at=self.clock())  # recorded first, as the engine does
        sandbox = self.sandboxes.pop(sandbox_id, None)
        if sandbox is not None:
            await sandbox.kill()

    async def pause(self, owner: str, sandbox_id: str) -> None:
        record = self._record(owner, sandbox_id)
        if record.state != "running":
            raise SandboxStateError(f"sandbox {sandbox_id} is {record.state}, not running")
        await self.sandboxes[sandbox_id].pause()
        self.records[sandbox_id] = dataclasses.replace(record, state="paused", paused_at=self.clock())

    async def connect(self, owner: str, sandbox_id: str, timeout: float) -> tuple[SandboxRecord, bool]:
        record = self._record(owner, sandbox_id)
        if record.state not in ("running", "paused"):
            raise SandboxNotFound(f"sandbox {sandbox_id} not found")
        resumed = record.state == "paused"
        if resumed:
            await self.sandboxes[sandbox_id].resume()
        end_at = max(record.end_at if not resumed else 0.0, self.clock() + timeout)
        record = dataclasses.replace(record, state="running", end_at=end_at, paused_at=None)
        self.records[sandbox_id] = record
        return record, resumed

    async def set_timeout(self, owner: str, sandbox_id: str, timeout: float) -> None:
        record = self._record(owner, sandbox_id)
        self.records[sandbox_id] = dataclasses.replace(record, end_at=self.clock() + timeout)

    async def metrics(self, owner: str, sandbox_id: str, start: float | None, end: float | None) -> list[Metrics]:
        self._record(owner, sandbox_id)
        return [Metrics(timestamp=self.clock(), cpu_count=2, cpu_used_pct=1.5, mem_used=1 << 20, mem_total=512 << 20,
                        mem_cache=0, disk_used=0, disk_total=1 << 30)]

    async def data_plane(self, sandbox_id: str, access_token: str | None) -> FakeSandbox:
        record = self.records.get(sandbox_id)
        if record is not None:
            self._expire(record)
            record = self.records[sandbox_id]
        if record is None or record.state != "running":
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running")
        if record.access_token and access_token != record.access_token:
            raise InvalidAccessToken("wrong access token")
        return self.sandboxes[sandbox_id]

    async def is_running(self, sandbox_id: str) -> bool:
        record = self.records.get(sandbox_id)
        if record is not None:
            self._expire(record)
        return sandbox_id in self.records and self.records[sandbox_id].state == "running"

    async def touch(self, sandbox_id: str) -> None:
        self.touched.append(sandbox_id)

    def seen(self, sandbox_id: str) -> None:
        self.touched.append(sandbox_id)

    async def access_tokens(self) -> list[tuple[str, str]]:
        self.access_token_calls += 1
        return [(r.sandbox_id, r.access_token) for r in self.records.values()
                if r.state in ("running", "paused") and r.access_token]

    async def close(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            await sandbox.kill()
        self.sandboxes.clear()
