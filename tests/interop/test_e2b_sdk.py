"""The official `e2b` SDK (PyPI, newest release) against Corral's E2B API, sync and async.

Every test takes `e2b` (an E2bTarget): a live node in its own process here; tests/e2b reruns
these same tests against the protocol layer over a fake fleet. The environment variables the
SDK reads are set for each test, as a user would set them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    PtySize,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxQuery,
    SandboxState,
    TimeoutException,
)
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType

from .e2b_target import E2bTarget


def eventually(check: Callable[[], Any], what: str, within: float = 20.0) -> Any:
    """Poll until `check()` is truthy (a condition a user waits for, not a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within:g} s")
        time.sleep(0.05)


def still_serves(sbx: Sandbox) -> None:
    """The node and another sandbox are unaffected by whatever was just refused."""
    assert sbx.commands.run("echo unaffected").stdout == "unaffected\n"


@pytest.fixture
def sandboxes(e2b_env: E2bTarget) -> Iterator[Callable[..., Sandbox]]:
    """Factory: sandboxes tagged with this test's id, killed afterwards."""
    made: list[Sandbox] = []
    test_id = uuid.uuid4().hex

    def create(**kwargs: Any) -> Sandbox:
        metadata = {"sandbox_test_id": test_id, **kwargs.pop("metadata", {})}
        sandbox = Sandbox.create(metadata=metadata, **kwargs)
        made.append(sandbox)
        return sandbox

    create.test_id = test_id  # type: ignore[attr-defined]
    yield create
    for sandbox in made:
        with contextlib.suppress(Exception):  # already gone
            sandbox.kill()


# -- create, info, envs -----------------------------------------------------------------------------

def test_create_with_metadata_and_envs(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes(metadata={"purpose": "interop"}, envs={"GREETING": "hello"}, timeout=120)
    assert sbx.sandbox_id.isalnum() and sbx.sandbox_id == sbx.sandbox_id.lower()
    info = sbx.get_info()
    assert info.metadata["purpose"] == "interop"
    assert info.state.value == "running"
    assert info.template_id == "base"
    assert (info.end_at - info.started_at).total_seconds() == pytest.approx(120, abs=2)
    assert sbx.commands.run("echo $GREETING").stdout.strip() == "hello"
    assert sbx.is_running()


# -- commands ---------------------------------------------------------------------------------------

def test_foreground_cwd_envs_and_exit_codes(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    result = sbx.commands.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 0)
    sbx.files.make_dir("work")
    work = sbx.files.get_info("work").path
    assert sbx.commands.run("pwd", cwd=work).stdout.strip().endswith("/work")
    assert sbx.commands.run("echo $A-$B", envs={"A": "1", "B": "two"}).stdout.strip() == "1-two"
    with pytest.raises(CommandExitException) as caught:
        sbx.commands.run("echo partial; exit 3")
    assert caught.value.exit_code == 3
    assert caught.value.stdout == "partial\n"
    streamed: list[str] = []
    sbx.commands.run("for i in 1 2 3; do echo line$i; done", on_stdout=streamed.append)
    assert "".join(streamed) == "line1\nline2\nline3\n"


def test_user(e2b_env: E2bTarget, sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    assert sbx.commands.run("test -d \"$HOME\" && test -w \"$HOME\" && echo ok").stdout == "ok\n"
    if e2b_env.real_users:
        assert sbx.commands.run("echo $HOME").stdout.strip() == "/home/user"
        assert sbx.commands.run("whoami").stdout.strip() == "user"
        # Corral has one user inside a sandbox (docs/sandboxes.md): `root` runs as that user.
        assert sbx.commands.run("whoami", user="root").exit_code == 0


def test_background_stdin_and_kill(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    handle = sbx.commands.run("cat", background=True, stdin=True)
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    sbx.commands.send_stdin(handle.pid, "to cat\n")
    sbx.commands.stream_input(handle.pid, ["streamed ", b"in order\n"])  # a client-streaming call
    sbx.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "to cat\nstreamed in order\n"

    sleeper = sbx.commands.run("sleep 600", background=True)
    assert sbx.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException) as caught:
        sleeper.wait()
    assert caught.value.exit_code != 0
    assert sbx.commands.kill(sleeper.pid) is False  # gone: not found

    ticker = sbx.commands.run("for i in 1 2 3 4 5; do echo $i; sleep 0.2; done", background=True)
    again = sbx.commands.connect(ticker.pid)
    assert again.wait().stdout.strip().split()[-1] == "5"


def test_command_from_another_sandbox_object(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes(envs={"FROM_CREATE": "seen"})
    handle = sbx.commands.run("read line; echo got-$line-$FROM_CREATE", background=True, stdin=True)
    listed = {p.pid: p for p in sbx.commands.list()}
    assert handle.pid in listed and "read line" in " ".join([listed[handle.pid].cmd, *listed[handle.pid].args])
    elsewhere = Sandbox.connect(sbx.sandbox_id)  # a second SDK object, as another process would make
    joined = elsewhere.commands.connect(handle.pid)
    elsewhere.commands.send_stdin(handle.pid, "x\n")
    assert joined.wait().stdout == "got-x-seen\n"
    assert handle.wait().stdout == "got-x-seen\n"
    assert handle.pid not in [p.pid for p in elsewhere.commands.list()]
    with pytest.raises(NotFoundException):
        elsewhere.commands.connect(handle.pid)  # ended: nothing to connect to


def test_command_timeout(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=1)
    assert sbx.commands.run("echo still fine").stdout == "still fine\n"


def test_pty(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    output = bytearray()
    terminal = sbx.pty.create(PtySize(rows=24, cols=80), timeout=30)
    sbx.pty.resize(terminal.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(terminal.pid, b"stty size; echo pty-$((40+2))\nexit\n")
    result = terminal.wait(on_pty=output.extend)
    text = output.decode(errors="replace")
    assert "pty-42" in text
    assert "30 100" in text
    assert result.exit_code == 0


def test_pty_kill(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    terminal = sbx.pty.create(PtySize(rows=24, cols=80))
    assert terminal.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.pty.kill(terminal.pid) is True
    with pytest.raises(CommandExitException) as caught:
        terminal.wait()
    assert caught.value.exit_code != 0
    assert terminal.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.pty.kill(terminal.pid) is False


# -- files ------------------------------------------------------------------------------------------

def test_files(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    info = sbx.files.write("dir/a.txt", "alpha")
    assert info.path.endswith("/dir/a.txt") and info.name == "a.txt"
    assert sbx.files.read("dir/a.txt") == "alpha"
    assert sbx.files.read(sbx.files.get_info("dir/a.txt").path, format="bytes") == bytearray(b"alpha")
    assert b"".join(sbx.files.read("dir/a.txt", format="stream")) == b"alpha"
    sbx.files.write_files([{"path": "dir/b.bin", "data": bytes(range(256)) * 1000},
                           {"path": "dir/sub/c.txt", "data": "gamma"}])
    assert sbx.files.read("dir/b.bin", format="bytes") == bytearray(bytes(range(256)) * 1000)
    assert sbx.files.exists("dir/a.txt")
    assert not sbx.files.exists("dir/missing")
    names = {(e.name, e.type) for e in sbx.files.list("dir")}
    assert names == {("a.txt", FileType.FILE), ("b.bin", FileType.FILE), ("sub", FileType.DIR)}
    deep = {e.path for e in sbx.files.list("dir", depth=2)}
    assert any(p.endswith("/dir/sub/c.txt") for p in deep)
    entry = sbx.files.get_info("dir/b.bin")
    assert entry.size == 256_000 and entry.type == FileType.FILE
    moved = sbx.files.rename("dir/a.txt", "dir/renamed.txt")
    assert moved.path.endswith("/dir/renamed.txt")
    assert not sbx.files.exists("dir/a.txt")
    assert sbx.files.make_dir("new/deeper") is True
    assert sbx.files.make_dir("new/deeper") is False
    sbx.files.remove("dir")
    assert not sbx.files.exists("dir/renamed.txt")
    with pytest.raises(NotFoundException):
        sbx.files.read("dir/renamed.txt")
    # Streamed uploads go as application/octet-stream.
    sbx.files.write("streamed.txt", iter([b"one ", b"two"]))
    assert sbx.files.read("streamed.txt") == "one two"


def test_file_metadata(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    tags = {"author": "ada", "purpose": "upload"}
    assert sbx.files.write("meta.txt", "m", metadata=tags).metadata == tags  # multipart
    assert sbx.files.get_info("meta.txt").metadata == tags
    assert sbx.files.write("meta-octet.txt", "m", metadata=tags, use_octet_stream=True).metadata == tags
    assert sbx.files.get_info("meta-octet.txt").metadata == tags
    both = sbx.files.write_files([{"path": "m/1.txt", "data": "1"}, {"path": "m/2.txt", "data": "2"}],
                                 metadata={"batch": "yes"})
    assert [w.metadata for w in both] == [{"batch": "yes"}] * 2
    assert {e.name: e.metadata for e in sbx.files.list("m")} == {"1.txt": {"batch": "yes"}, "2.txt": {"batch": "yes"}}
    assert sbx.files.rename("meta.txt", "meta-moved.txt").metadata == tags
    assert sbx.files.write("meta-moved.txt", "again").metadata is None  # an overwrite keeps no stale metadata
    assert sbx.files.get_info("meta-moved.txt").metadata is None
    assert sbx.files.get_info("m").metadata is None
    with pytest.raises(InvalidArgumentException):
        sbx.files.write("bad-meta.txt", "x", metadata={"bad key": "v"})
    assert not sbx.files.exists("bad-meta.txt")


def test_watch(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    sbx.files.make_dir("watched")
    handle = sbx.files.watch_dir("watched")
    sbx.files.write("watched/new.txt", "x")
    events = eventually(lambda: [e for e in handle.get_new_events() if e.name == "new.txt"], "a watch event")
    assert FilesystemEventType.CREATE in {e.type for e in events} or FilesystemEventType.WRITE in {e.type for e in events}
    handle.stop()
    sbx.files.write("watched/after-stop.txt", "y")
    with pytest.raises(SandboxException):
        handle.get_new_events()  # a stopped watch is gone
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir("not-there")


def test_upload_and_download_urls(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    upload = sbx.upload_url("uploaded.txt")
    response = httpx.post(upload, files={"file": ("uploaded.txt", b"via url")})
    assert response.status_code == 200, response.text
    download = sbx.download_url("uploaded.txt")
    assert httpx.get(download).content == b"via url"
    expiring = sbx.download_url("uploaded.txt", use_signature_expiration=60)
    assert httpx.get(expiring).content == b"via url"
    expired = sbx.download_url("uploaded.txt", use_signature_expiration=-10)
    refused = httpx.get(expired)
    assert refused.status_code == 401 and refused.json()["message"] == "signature is already expired"
    forged = download.replace("uploaded.txt", "other.txt")
    assert httpx.get(forged).status_code == 401


# -- lifecycle --------------------------------------------------------------------------------------

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > $HOME/count; date +%s.%N >> $HOME/ticks; sleep 0.05; done"


def _count(sbx: Sandbox) -> int:
    return int(sbx.files.read("count").strip() or 0)


def test_pause_then_connect_keeps_memory(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes(timeout=300)
    counter = sbx.commands.run(COUNTER, background=True)
    eventually(lambda: sbx.files.exists("count") and _count(sbx) > 3, "the counter counting")
    sbx.pause()
    frozen_from = time.time()  # wall clock, as `date` in the sandbox reads it
    assert not sbx.is_running()
    assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"
    with pytest.raises(SandboxException):
        sbx.files.read("count")
    time.sleep(1.0)  # a running counter would tick ~20 times meanwhile
    frozen_until = time.time()
    resumed = Sandbox.connect(sbx.sandbox_id)
    at_resume = _count(resumed)
    assert counter.pid in [p.pid for p in resumed.commands.list()]
    # Each tick is stamped when it happens: none falls in the pause, however long the calls around it took.
    during = [t for t in map(float, resumed.files.read("ticks").split()) if frozen_from < t < frozen_until]
    assert not during, f"the counter kept counting while the sandbox was paused: {during}"
    eventually(lambda: _count(resumed) > at_resume, "the counter going on from where it stopped")
    assert resumed.get_info().state.value == "running"
    assert Sandbox.pause(sbx.sandbox_id) is True
    assert Sandbox.pause(sbx.sandbox_id) is False  # already paused: 409


def test_set_timeout_and_expiry(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes(timeout=300)
    sbx.set_timeout(600)
    assert (sbx.get_info().end_at - sbx.get_info().started_at).total_seconds() > 550
    sbx.set_timeout(1)
    eventually(lambda: not sbx.is_running(), "the sandbox expiring")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id)


def test_set_timeout_zero_expires_now(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes(timeout=300)
    other = sandboxes(timeout=300)
    sbx.set_timeout(0)
    assert not sbx.is_running()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    still_serves(other)


def test_connect_never_shortens_the_timeout(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes(timeout=300)
    end_at = sbx.get_info().end_at
    Sandbox.connect(sbx.sandbox_id, timeout=10)
    assert abs((Sandbox.get_info(sbx.sandbox_id).end_at - end_at).total_seconds()) < 2
    Sandbox.connect(sbx.sandbox_id, timeout=900)
    assert (Sandbox.get_info(sbx.sandbox_id).end_at - end_at).total_seconds() > 500


def test_metrics(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    metrics = sbx.get_metrics()
    assert metrics, "a running sandbox has a metrics sample"
    sample = metrics[-1]
    assert sample.cpu_count >= 1 and sample.cpu_used_pct >= 0
    assert 0 < sample.mem_used <= sample.mem_total and 0 <= sample.disk_used <= sample.disk_total


def test_list_filters_and_pagination(sandboxes: Callable[..., Sandbox]) -> None:
    made = [sandboxes(metadata={"n": str(i)}) for i in range(3)]
    test_id = sandboxes.test_id  # type: ignore[attr-defined]
    query = SandboxQuery(metadata={"sandbox_test_id": test_id})
    paginator = Sandbox.list(query=query, limit=2)
    first = paginator.next_items()
    assert len(first) == 2 and paginator.has_next
    second = paginator.next_items()
    assert len(second) == 1 and not paginator.has_next
    assert {s.sandbox_id for s in first + second} == {s.sandbox_id for s in made}
    newest_first = [s.started_at for s in first + second]
    assert newest_first == sorted(newest_first, reverse=True)
    only_n1 = Sandbox.list(query=SandboxQuery(metadata={"sandbox_test_id": test_id, "n": "1"})).next_items()
    assert [s.sandbox_id for s in only_n1] == [made[1].sandbox_id]
    made[0].pause()
    paused = Sandbox.list(query=SandboxQuery(metadata={"sandbox_test_id": test_id}, state=[SandboxState.PAUSED])).next_items()
    assert [s.sandbox_id for s in paused] == [made[0].sandbox_id]
    running = Sandbox.list(query=SandboxQuery(metadata={"sandbox_test_id": test_id}, state=[SandboxState.RUNNING])).next_items()
    assert {s.sandbox_id for s in running} == {made[1].sandbox_id, made[2].sandbox_id}
    oldest_first = Sandbox.list(query=query, order="asc").next_items()
    assert [s.sandbox_id for s in oldest_first] == [s.sandbox_id for s in made]
    exact = Sandbox.list(query=query, limit=3)  # a page that holds all: no next token
    assert len(exact.next_items()) == 3 and not exact.has_next
    with pytest.raises(Exception, match="No more items"):
        exact.next_items()
    by_one = Sandbox.list(query=query, limit=1, order="asc")
    walked: list[str] = []
    while by_one.has_next:
        walked += [s.sandbox_id for s in by_one.next_items()]
    assert walked == [s.sandbox_id for s in made]
    nothing = Sandbox.list(query=SandboxQuery(metadata={"sandbox_test_id": "no-such-test"}))
    assert nothing.next_items() == [] and not nothing.has_next


def test_kill_then_every_call_fails(sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    other = sandboxes()
    sleeper = sbx.commands.run("sleep 600", background=True)
    assert sbx.kill() is True
    with pytest.raises(SandboxException, match="sandbox was killed or reached its end of life"):
        sleeper.wait()  # killed during the run: the SDK's health check says so
    assert sbx.kill() is False
    assert not sbx.is_running()
    with pytest.raises(SandboxException, match="was killed or reached its (timeout|end of life)"):
        sbx.commands.run("echo no")
    with pytest.raises(SandboxException):
        sbx.files.write("x", "no")
    with pytest.raises(SandboxException):
        sbx.files.read("x")
    with pytest.raises(NotFoundException):
        sbx.get_info()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        sbx.set_timeout(30)
    assert other.commands.run("echo unaffected").stdout == "unaffected\n"


def test_another_key_sees_nothing(e2b_env: E2bTarget, sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id, api_key=e2b_env.other_key)
    assert Sandbox.kill(sbx.sandbox_id, api_key=e2b_env.other_key) is False
    listed = Sandbox.list(query=SandboxQuery(metadata={"sandbox_test_id": sandboxes.test_id}),  # type: ignore[attr-defined]
                          api_key=e2b_env.other_key).next_items()
    assert listed == []
    with pytest.raises(SandboxNotFoundException):
        Sandbox.set_timeout(sbx.sandbox_id, 5, api_key=e2b_env.other_key)
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id, api_key=e2b_env.other_key)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.pause(sbx.sandbox_id, api_key=e2b_env.other_key)
    assert sbx.is_running(), "another key's calls must not reach this sandbox"
    # The data plane, as E2B's: the sandbox's access token is what admits a call (whoever holds it);
    # another sandbox's token, or none, does not.
    other = Sandbox.create(api_key=e2b_env.other_key, metadata={"sandbox_test_id": sandboxes.test_id})  # type: ignore[attr-defined]
    try:
        envd = e2b_env.sandbox_url + "/process.Process/List"
        headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "Content-Type": "application/json"}
        borrowed = httpx.post(envd, content=b"{}", headers={**headers, "X-Access-Token": other._envd_access_token or ""})
        # Answered as an unknown sandbox would be: nobody without its token learns that it exists.
        assert borrowed.status_code == 502 and borrowed.json()["message"] == "The sandbox was not found"
        assert httpx.post(envd, content=b"{}", headers=headers).status_code == 502
        signed = other.download_url("x.txt").replace(e2b_env.url, "")
        assert httpx.get(e2b_env.url + signed, headers={"E2b-Sandbox-Id": sbx.sandbox_id}).status_code == 401
        still_serves(sbx)
        still_serves(other)
    finally:
        other.kill()


def test_wrong_and_revoked_api_keys(e2b_env: E2bTarget, sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException, match="revoked"):
        Sandbox.create(api_key=e2b_env.revoked_key)
    with pytest.raises(AuthenticationException, match="revoked"):
        Sandbox.kill(sbx.sandbox_id, api_key=e2b_env.revoked_key)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_" + "0" * 40).next_items()
    still_serves(sbx)


def test_bad_timeouts_and_template(sandboxes: Callable[..., Sandbox]) -> None:
    with pytest.raises(SandboxException, match="negative"):
        sandboxes(timeout=-5)
    with pytest.raises(SandboxException, match="maximum"):
        sandboxes(timeout=10**9)
    with pytest.raises(SandboxException, match="no-such-template"):
        Sandbox.create("no-such-template")
    sbx = sandboxes()
    with pytest.raises(SandboxException, match="negative"):
        sbx.set_timeout(-1)
    with pytest.raises(SandboxException, match="maximum"):
        sbx.set_timeout(10**9)
    with pytest.raises(SandboxException, match="maximum"):
        Sandbox.connect(sbx.sandbox_id, timeout=10**9)
    assert sbx.is_running()
    still_serves(sbx)


def test_invalid_paths(e2b_env: E2bTarget, sandboxes: Callable[..., Sandbox]) -> None:
    sbx = sandboxes()
    with pytest.raises(InvalidArgumentException, match="NUL"):
        sbx.files.get_info("a\x00b")
    if not e2b_env.isolated:
        return  # the host provider is no sandbox: an absolute path is a host path
    # `..` resolves inside the sandbox: never the host's files.
    with pytest.raises(NotFoundException):
        sbx.files.read("/../../../../etc/corral-no-such-file")
    sbx.files.write("/../../home/user/../user/inside.txt", "in")
    assert sbx.files.read("/home/user/inside.txt") == "in"
    with pytest.raises(NotFoundException):
        sbx.files.get_info("../../../../root/.corral-no-such-file")  # the Connect API resolves inside too
    url = sbx.download_url("/../../../../etc/corral-no-such-file")
    assert httpx.get(url).status_code == 404  # and /files through a signed URL
    still_serves(sbx)


# -- async ------------------------------------------------------------------------------------------

def test_async_sdk(e2b_env: E2bTarget) -> None:
    async def scenario() -> None:
        test_id = uuid.uuid4().hex
        sbx = await AsyncSandbox.create(metadata={"sandbox_test_id": test_id}, envs={"X": "async"})
        try:
            assert (await sbx.commands.run("echo $X")).stdout == "async\n"
            chunks: list[str] = []
            handle = await sbx.commands.run("echo a; sleep 0.2; echo b", background=True, on_stdout=chunks.append)
            assert (await handle.wait()).exit_code == 0
            assert "".join(chunks) == "a\nb\n"
            with pytest.raises(CommandExitException):
                await sbx.commands.run("exit 7")
            await sbx.files.write("async.txt", "async file")
            assert await sbx.files.read("async.txt") == "async file"
            assert [e.name for e in await sbx.files.list(".") if e.name == "async.txt"] == ["async.txt"]
            seen: list[Any] = []
            await sbx.files.make_dir("w")
            watch = await sbx.files.watch_dir("w", on_event=seen.append)
            await sbx.files.write("w/f.txt", "1")
            for _ in range(400):
                if any(e.name == "f.txt" for e in seen):
                    break
                await asyncio.sleep(0.05)
            await watch.stop()
            assert any(e.name == "f.txt" for e in seen)
            terminal = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=lambda data: None)
            await sbx.pty.send_stdin(terminal.pid, b"exit 0\n")
            assert (await terminal.wait()).exit_code == 0
            await sbx.pause()
            assert not await sbx.is_running()
            again = await AsyncSandbox.connect(sbx.sandbox_id)
            assert (await again.commands.run("echo back")).stdout == "back\n"
            listed = await AsyncSandbox.list(query=SandboxQuery(metadata={"sandbox_test_id": test_id})).next_items()
            assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
            metrics = await again.get_metrics()
            assert all(m.cpu_count >= 1 for m in metrics)
        finally:
            await sbx.kill()
        assert not await sbx.is_running()

    asyncio.run(scenario())
