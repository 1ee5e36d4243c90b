"""Runners in their own processes (`corral runner`): registration with a runner key, the data plane
proxied through the node, leases, and reconciling when a runner comes back."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from corral.fleet import CreateRequest, SandboxUnavailable
from corral.sandbox.protocol import CapacityError, FileNotFound

from ..engine.served import wait_until
from .harness import (
    OWNER,
    api_key,
    create,
    fleet_node,
    fleet_of,
    on_loop,
    record,
    run,
    start_runner,
    state,
)


@pytest.fixture
def runners(short_dir: Path):  # type: ignore[no-untyped-def]
    started = []

    def factory(*args, **kwargs):  # type: ignore[no-untyped-def]
        runner = start_runner(*args, **kwargs)
        started.append(runner)
        return runner

    yield factory
    for runner in started:
        runner.stop()


def registered(node, name: str) -> dict | None:  # type: ignore[no-untyped-def,type-arg]
    return node.call("query", "corral/runners:get", {"name": name})  # type: ignore[no-any-return]


def test_a_remote_runner_registers_with_a_runner_key_and_hosts_sandboxes(short_dir, runners):
    with fleet_node(short_dir / "node", runner_embedded=False) as node:
        key, key_id = api_key(node, "builder-1", "runner")
        runner = runners(node.url, key, short_dir / "runner", name="builder-1", labels=("gpu",))
        doc = registered(node, "builder-1")
        assert doc["state"] == "up" and doc["key_id"] == key_id and doc["labels"] == ["gpu"]
        assert doc["url"] == f"http://127.0.0.1:{runner.port}"
        made = create(node, runner_labels=("gpu",), metadata={"job": "1"})
        assert made.runner == "builder-1"
        assert (runner.data_dir / "sandboxes" / made.sandbox_id).is_dir()  # on the runner's host, not the node's


def test_a_client_key_cannot_run_a_runner(short_dir, runners):
    with fleet_node(short_dir / "node", runner_embedded=False) as node:
        key, _ = api_key(node, "not-a-runner", "client")
        runner = runners(node.url, key, short_dir / "runner", wait=False)
        assert runner.process.wait(timeout=30) != 0
        assert "only a runner may call this" in runner.output()
        assert registered(node, "remote-1") is None


def test_the_data_plane_goes_through_the_node_to_the_remote_runner(short_dir, runners):
    with fleet_node(short_dir / "node", runner_embedded=False) as node:
        key, _ = api_key(node, "builder-1", "runner")
        runners(node.url, key, short_dir / "runner")
        made = create(node, envs={"GREETING": "hello from afar"})
        code, out = run(node, made.sandbox_id, 'echo "$GREETING"; echo oops >&2; exit 3')
        assert (code, out) == (3, b"hello from afar\n")
        fleet = fleet_of(node)

        async def files() -> tuple[bytes, list[str]]:
            sandbox = await fleet.data_plane(made.sandbox_id, made.access_token)

            async def chunks():  # type: ignore[no-untyped-def]
                yield b"line 1\n"
                yield b"line 2\n"

            await sandbox.files.write("notes/a.txt", chunks())
            body = b"".join([c async for c in sandbox.files.read("notes/a.txt")])
            listed = [e.name for e in await sandbox.files.list("notes")]
            with pytest.raises(FileNotFound):
                async for _ in sandbox.files.read("notes/missing.txt"):
                    pass
            return body, listed

        assert on_loop(node, files()) == (b"line 1\nline 2\n", ["a.txt"])
        on_loop(node, fleet.pause(OWNER, made.sandbox_id))
        assert state(node, made.sandbox_id) == "paused"
        resumed = on_loop(node, fleet.connect(OWNER, made.sandbox_id, 60))
        assert resumed[1] is True
        assert run(node, made.sandbox_id, "echo again") == (0, b"again\n")
        samples = on_loop(node, fleet.metrics(OWNER, made.sandbox_id, None, None))  # the runner's history
        assert samples and samples[0].cpu_count >= 1
        assert on_loop(node, fleet.metrics(OWNER, made.sandbox_id, samples[-1].timestamp + 1, None)) == []
        on_loop(node, fleet.kill(OWNER, made.sandbox_id))
        wait_until(lambda: record(node, made.sandbox_id)["live"] is False, what="the remote kill being confirmed")


def test_a_runner_that_stops_heartbeating_loses_its_sandboxes_until_it_comes_back(short_dir, runners):
    with fleet_node(short_dir / "node", runner_lease=30.0) as node:
        key, _ = api_key(node, "builder-1", "runner")
        runner = runners(node.url, key, short_dir / "runner", name="builder-1", labels=("remote",))
        away = create(node, runner_labels=("remote",))
        here = create(node)  # on the node's embedded runner
        assert (away.runner, here.runner) == ("builder-1", fleet_of(node).runner_name)
        runner.stop(signal.SIGKILL)
        node.clock.advance(31)
        wait_until(lambda: state(node, away.sandbox_id) == "lost", what="the sandbox being marked lost")
        assert registered(node, "builder-1")["state"] == "lost"
        with pytest.raises(SandboxUnavailable):
            run(node, away.sandbox_id, "true")
        with pytest.raises(SandboxUnavailable):
            on_loop(node, fleet_of(node).connect(OWNER, away.sandbox_id, 60))
        # the others are unaffected (the embedded runner heartbeats on the advanced clock)
        wait_until(lambda: state(node, here.sandbox_id) == "running", what="the embedded runner's sandbox running")
        assert run(node, here.sandbox_id, "echo fine") == (0, b"fine\n")
        with pytest.raises(CapacityError):
            create(node, runner_labels=("remote",))  # nowhere to place it
        runners(node.url, key, short_dir / "runner", name="builder-1", port=runner.port)  # comes back: reconciles
        wait_until(lambda: state(node, away.sandbox_id) == "running", what="the sandbox coming back")
        assert run(node, away.sandbox_id, "echo back") == (0, b"back\n")


def test_a_runner_that_comes_back_kills_what_the_engine_no_longer_knows(short_dir, runners):
    with fleet_node(short_dir / "node", runner_embedded=False) as node:
        key, _ = api_key(node, "builder-1", "runner")
        runner = runners(node.url, key, short_dir / "runner", name="builder-1")
        keep = create(node)
        drop = create(node)
        paused = create(node)
        run(node, paused.sandbox_id, "echo before > note")
        on_loop(node, fleet_of(node).pause(OWNER, paused.sandbox_id))
        runner.stop()  # a clean stop: its sandboxes outlive it, and it says it is leaving
        assert registered(node, "builder-1")["state"] == "stopped"  # not lost: no lease had to run out
        assert {state(node, s.sandbox_id) for s in (keep, drop, paused)} == {"lost"}
        with pytest.raises(SandboxUnavailable, match="on runner 'builder-1', which was stopped"):
            run(node, keep.sandbox_id, "true")
        on_loop(node, fleet_of(node).kill(OWNER, drop.sandbox_id))  # decided while the runner is away
        assert state(node, drop.sandbox_id) == "killed" and record(node, drop.sandbox_id)["live"] is True
        assert (runner.data_dir / "sandboxes" / drop.sandbox_id).is_dir()
        runners(node.url, key, short_dir / "runner", name="builder-1", port=runner.port)
        wait_until(lambda: not (runner.data_dir / "sandboxes" / drop.sandbox_id).exists(), what="the dropped sandbox killed")
        wait_until(lambda: record(node, drop.sandbox_id)["live"] is False, what="the kill confirmed")
        assert state(node, keep.sandbox_id) == "running"
        assert run(node, keep.sandbox_id, "echo kept") == (0, b"kept\n")
        # the paused one was re-adopted paused, and resumes with what it had
        assert state(node, paused.sandbox_id) == "paused" and record(node, paused.sandbox_id)["memory_kept"] is True
        on_loop(node, fleet_of(node).connect(OWNER, paused.sandbox_id, 60))
        assert run(node, paused.sandbox_id, "cat note") == (0, b"before\n")


def test_a_sandbox_whose_runner_is_gone_answers_unavailable_and_others_work(short_dir, runners):
    with fleet_node(short_dir / "node") as node:
        key, _ = api_key(node, "builder-1", "runner")
        runner = runners(node.url, key, short_dir / "runner", name="builder-1", labels=("remote",))
        away = create(node, runner_labels=("remote",))
        here = create(node)
        runner.stop(signal.SIGKILL)  # gone, and its lease has not run out yet
        with pytest.raises(SandboxUnavailable, match="not answering"):
            run(node, away.sandbox_id, "true")
        assert run(node, here.sandbox_id, "echo ok") == (0, b"ok\n")
        made = on_loop(node, fleet_of(node).create(OWNER, CreateRequest()))
        assert made.runner == fleet_of(node).runner_name


def test_a_sandbox_goes_only_to_a_runner_that_has_its_template(short_dir, runners):
    """The node's runner (local provider) has the template `tiny`, a remote runner (host provider) only `base`:
    `tiny` lands on the node's runner even though the remote one has more room; an unknown template is refused
    with the templates that exist and where they are registered; one added later is reported at the next heartbeat."""
    import os
    import shutil

    from corral.sandbox.local import templates
    from corral.sandbox.protocol import TemplateNotFound
    from tests.conftest import require_tool
    from tests.sandbox.rootfs import bash_rootfs

    require_tool("bubblewrap", shutil.which("bwrap") is not None and os.geteuid() == 0, "root and bubblewrap")
    rootfs = bash_rootfs()
    data = short_dir / "node"
    try:
        templates.add(data / "local", "tiny", rootfs)
        with fleet_node(data, sandbox_provider="local", runner_capacity=2) as node:
            fleet = fleet_of(node)
            key, _ = api_key(node, "builder-1", "runner")
            runners(node.url, key, short_dir / "runner", name="builder-1", capacity=50)
            assert registered(node, fleet.runner_name)["templates"] == ["base", "tiny"]
            assert registered(node, "builder-1")["templates"] == ["base"]
            made = []
            made.append(create(node, template="base"))
            assert made[-1].runner == "builder-1"  # the most room
            made.append(create(node, template="tiny"))
            assert made[-1].runner == fleet.runner_name
            assert run(node, made[-1].sandbox_id, "echo $0 on tiny", shell=("/bin/bash", "-l", "-c")) == (0, b"/bin/bash on tiny\n")
            with pytest.raises(TemplateNotFound) as refused:
                create(node, template="nope")
            message = str(refused.value)
            assert "'nope'" in message and f"tiny (on {fleet.runner_name})" in message
            assert "base (on builder-1, " in message and "registered per runner" in message and "--data-dir" in message
            templates.add(data / "local", "tiny2", rootfs)  # `corral template add` while the node runs
            on_loop(node, fleet.daemon.heartbeat())  # what the next heartbeat does
            made.append(create(node, template="tiny2"))
            assert made[-1].runner == fleet.runner_name
            for sandbox in made:
                on_loop(node, fleet.kill(OWNER, sandbox.sandbox_id))
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def test_the_runner_plane_refuses_garbage_with_a_clear_400(short_dir):
    """The node↔runner wire (/runner/v1): no secret is 401; malformed calls are 400s that say why; the
    runner goes on serving its sandboxes."""
    with fleet_node(short_dir / "node") as node:
        made = create(node)
        plane = node.url + "/runner/v1"
        assert httpx.post(plane + "/call", json={"op": "sandbox.info", "sandbox": made.sandbox_id}).status_code == 401
        server = fleet_of(node).server  # the node's embedded runner
        assert server is not None
        secret = server.secret
        auth = {"Authorization": f"Bearer {secret}"}
        for body in (b"not json", b"[1, 2]", b'{"op": 7}', b'{"op": "sandbox.info"}',
                     b'{"op": "nonsense.call", "sandbox": "x"}', b'{"op": "create", "args": {}}',
                     b'{"op": "converge", "args": {"state": "paused", "generation": 9}}', b'{"op": "metrics"}',
                     b'{"op": "metrics", "sandbox": "' + made.sandbox_id.encode() + b'", "args": {"start": "soon"}}',
                     b'{"op": "sandbox.info", "sandbox": "' + made.sandbox_id.encode() + b'", "args": {"bogus": 1}}'):
            answer = httpx.post(plane + "/call", content=body, headers=auth)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["error"]["message"]
        for path in ("/read", "/write"):
            assert httpx.post(plane + path, params={"path": "x"}, headers=auth).status_code == 400
        assert run(node, made.sandbox_id, "echo still here") == (0, b"still here\n")
