"""The fleet on the `local` provider (bubblewrap): the default, isolated, and re-adopted after a
restart. Fails under CI=true when bubblewrap is missing, rather than testing the host provider."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from corral.engine.clock import Clock

from ..conftest import require_tool
from ..engine.served import wait_until
from .harness import OWNER, create, fleet_node, fleet_of, held_state, on_loop, record, run, state


@pytest.fixture(autouse=True)
def _bubblewrap() -> None:
    require_tool("bubblewrap", shutil.which("bwrap") is not None, "apt-get install bubblewrap")
    require_tool("root", os.geteuid() == 0, "the local provider mounts disks and writes cgroups: run as root")


def test_local_is_the_default_and_isolates(short_dir: Path):
    with fleet_node(short_dir / "data", sandbox_provider=None) as node:
        assert fleet_of(node).settings.sandbox_provider == "local" and fleet_of(node).unavailable is None
        made = create(node)
        code, out = run(node, made.sandbox_id, "readlink /proc/self/ns/pid; id -u; test -e /etc/shadow || echo no-shadow")
        host_pid_ns = os.readlink("/proc/self/ns/pid").encode()
        pid_ns, uid, shadow = out.split(b"\n")[:3]
        assert code == 0 and pid_ns != host_pid_ns and uid == b"1000" and shadow == b"no-shadow"
        on_loop(node, fleet_of(node).kill(OWNER, made.sandbox_id))
        assert held_state(node, made.sandbox_id) is None
        assert not (short_dir / "data" / "local" / "sandboxes" / made.sandbox_id).exists()


def test_a_timeout_pauses_a_local_sandbox_with_its_memory_and_connect_resumes_it(short_dir: Path):
    with fleet_node(short_dir / "data", sandbox_provider="local") as node:
        made = create(node, timeout=60, on_timeout="pause")
        run(node, made.sandbox_id, "sh -c 'n=0; while true; do n=$((n+1)); echo $n > /tmp/count; sleep 0.05; done' &")
        # the loop runs in the background: it has counted once before the pause, so its count is there after
        wait_until(lambda: run(node, made.sandbox_id, "test -s /tmp/count")[0] == 0, what="the loop counting")
        node.clock.advance(61)
        wait_until(lambda: held_state(node, made.sandbox_id) == "paused", what="the runner pausing it")
        assert state(node, made.sandbox_id) == "paused" and record(node, made.sandbox_id)["memory_kept"] is True
        _, resumed = on_loop(node, fleet_of(node).connect(OWNER, made.sandbox_id, 60))
        assert resumed
        # the loop truncates, then writes: a read between the two finds the file empty, so read again
        wait_until(lambda: int(run(node, made.sandbox_id, "cat /tmp/count")[1] or 0) > 0,
                   what="the count the loop kept through the pause")
        on_loop(node, fleet_of(node).kill(OWNER, made.sandbox_id))


def test_a_node_restart_re_adopts_local_sandboxes(short_dir: Path):
    clock = Clock()
    with fleet_node(short_dir / "data", sandbox_provider="local", clock=clock) as first:
        running = create(first, timeout=3600)
        paused = create(first, timeout=3600)
        run(first, running.sandbox_id, "echo kept > /tmp/mark")
        on_loop(first, fleet_of(first).pause(OWNER, paused.sandbox_id))
    with fleet_node(short_dir / "data", sandbox_provider="local", clock=clock) as second:
        assert run(second, running.sandbox_id, "cat /tmp/mark") == (0, b"kept\n")
        assert held_state(second, paused.sandbox_id) == "paused"
        on_loop(second, fleet_of(second).connect(OWNER, paused.sandbox_id, 60))
        assert run(second, paused.sandbox_id, "echo awake") == (0, b"awake\n")
        for made in (running, paused):
            on_loop(second, fleet_of(second).kill(OWNER, made.sandbox_id))


def test_after_a_machine_reboot_a_paused_sandbox_resumes_from_its_files_and_says_so(short_dir: Path, monkeypatch):
    from corral.runner import providers
    from corral.sandbox.local import LocalProvider

    clock = Clock()
    with fleet_node(short_dir / "data", sandbox_provider="local", clock=clock) as first:
        made = create(first, timeout=3600)
        run(first, made.sandbox_id, "echo on-disk > /home/user/file; "
                                    "sh -c 'while true; do sleep 0.05; done' > /dev/null 2>&1 &")
        on_loop(first, fleet_of(first).pause(OWNER, made.sandbox_id))
        assert record(first, made.sandbox_id)["memory_kept"] is True
    # The host "reboots": the boot id the provider sees changes, as after a real one.
    monkeypatch.setattr(providers, "_local", lambda root, **kw: LocalProvider(root, boot_id=lambda: "after-a-reboot", **kw))
    with fleet_node(short_dir / "data", sandbox_provider="local", clock=clock) as second:
        wait_until(lambda: record(second, made.sandbox_id)["memory_kept"] is False,
                   what="the sandboxes table saying the memory was lost")
        assert state(second, made.sandbox_id) == "paused"
        on_loop(second, fleet_of(second).connect(OWNER, made.sandbox_id, 60))
        assert state(second, made.sandbox_id) == "running" and record(second, made.sandbox_id)["memory_kept"] is False
        assert run(second, made.sandbox_id, "cat /home/user/file") == (0, b"on-disk\n")
        code, out = run(second, made.sandbox_id, "ps -eo args | grep -c '[s]leep 0.05' || true")
        assert out.strip() == b"0", out  # the loop died with the memory
        on_loop(second, fleet_of(second).kill(OWNER, made.sandbox_id))
