"""`corral e2b env`, `corral template` and `corral runner`, as a user runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveNode, free_port
from tests.sandbox.rootfs import bash_rootfs, busybox_rootfs

CORRAL = [sys.executable, "-m", "corral"]


def corral(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CORRAL_ADMIN_KEY", "CORRAL_RUNNER_KEY")}
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})


@pytest.mark.parametrize("command", [["runner"], ["template"], ["template", "add"], ["template", "list"],
                                     ["template", "remove"], ["sandbox"], ["sandbox", "list"], ["sandbox", "kill"],
                                     ["e2b"], ["e2b", "env"]])
def test_every_sandbox_command_has_help_with_an_example(command: list[str]) -> None:
    result = corral(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "Example" in result.stdout


def test_e2b_env_prints_export_lines_for_a_new_key(live_node: LiveNode) -> None:
    result = corral("e2b", "env", "--data-dir", str(live_node.data_dir), "--name", "my-agent")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"export E2B_API_URL={live_node.url}/e2b", f"export E2B_SANDBOX_URL={live_node.url}/envd"]
    assert len(lines) == 3 and lines[2].startswith("export E2B_API_KEY=e2b_")
    shell = subprocess.run(["sh", "-c", f'eval "{result.stdout}"; printf "%s %s" "$E2B_API_URL" "$E2B_API_KEY"'],
                           capture_output=True, text=True, timeout=10)
    url, key = shell.stdout.split()
    assert url == f"{live_node.url}/e2b" and key == lines[2].split("=", 1)[1]
    answer = httpx.post(live_node.url + "/api/query", json={"path": "corral/sandboxes:list", "args": {}},
                        headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    assert answer == {"status": "success", "value": []}  # the key works, and it owns no sandbox yet
    again = corral("e2b", "env", "--data-dir", str(live_node.data_dir), "--name", "my-agent")
    assert again.returncode != 0 and "already named 'my-agent'" in again.stderr
    assert "omit --name" in again.stderr and "> .e2b.env" in again.stderr  # the habit that works twice
    unnamed = [corral("e2b", "env", "--data-dir", str(live_node.data_dir)) for _ in range(2)]
    assert all(r.returncode == 0 for r in unnamed) and unnamed[0].stdout != unnamed[1].stdout


def test_e2b_env_needs_a_running_node(tmp_path: Path) -> None:
    result = corral("e2b", "env", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode != 0 and "no node is running" in result.stderr and result.stdout == ""


def test_template_add_list_and_remove(tmp_path: Path) -> None:
    rootfs = bash_rootfs()
    try:
        data = tmp_path / "data"
        data.mkdir()
        (data / "corral.sqlite3").write_text("")  # a deployment's data directory
        added = corral("template", "add", "tiny", "--rootfs", str(rootfs), "--data-dir", str(data))
        assert added.returncode == 0, added.stderr
        assert "tiny" in added.stdout and str(data) in added.stdout  # says where it went
        listed = corral("template", "list", "--data-dir", str(data))
        assert listed.returncode == 0, listed.stderr
        names = [line.split("\t")[0] for line in listed.stdout.splitlines()]
        assert names == ["base", "tiny"] and str(data) in listed.stderr
        bad = corral("template", "add", "Bad Name", "--rootfs", str(rootfs), "--data-dir", str(data))
        assert bad.returncode != 0 and "not allowed" in bad.stderr
        not_root = corral("template", "add", "empty", "--rootfs", str(tmp_path / "data"), "--data-dir", str(data))
        assert not_root.returncode != 0 and "root filesystem" in not_root.stderr
        removed = corral("template", "remove", "tiny", "--data-dir", str(data))
        assert removed.returncode == 0, removed.stderr
        listed = corral("template", "list", "--data-dir", str(data))
        assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["base"]
        again = corral("template", "remove", "tiny", "--data-dir", str(data))
        assert again.returncode != 0 and "no template 'tiny'" in again.stderr and "base" in again.stderr
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def test_template_add_refuses_a_root_without_bash_and_says_how_to_make_one(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    rootfs = busybox_rootfs(busybox)
    try:
        data = tmp_path / "data"
        data.mkdir()
        (data / "corral.sqlite3").write_text("")
        refused = corral("template", "add", "tiny", "--rootfs", str(rootfs), "--data-dir", str(data))
        assert refused.returncode != 0
        assert "/bin/bash" in refused.stderr and "debootstrap" in refused.stderr and "docker export" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert [line.split("\t")[0] for line in corral("template", "list", "--data-dir", str(data)).stdout.splitlines()] == ["base"]
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def test_template_add_refuses_a_data_directory_no_node_or_runner_uses(tmp_path: Path) -> None:
    rootfs = bash_rootfs()
    try:
        nowhere = tmp_path / "nothing-here"
        refused = corral("template", "add", "tiny", "--rootfs", str(rootfs), env={"CORRAL_DATA_DIR": str(nowhere)})
        assert refused.returncode != 0
        assert str(nowhere) in refused.stderr and "--data-dir" in refused.stderr and "per runner" in refused.stderr
        assert not nowhere.exists()  # nothing written anywhere
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def test_runner_refuses_a_bad_listen_address() -> None:
    result = corral("runner", "--server", "http://127.0.0.1:1", "--key", "e2b_" + "0" * 40, "--listen", "nowhere")
    assert result.returncode != 0 and "HOST:PORT" in result.stderr


def test_runner_says_when_the_node_is_unreachable(tmp_path: Path) -> None:
    result = corral("runner", "--server", "http://127.0.0.1:1", "--key", "e2b_" + "0" * 40, "--listen", f"127.0.0.1:{free_port()}",
                    "--provider", "host", "--data-dir", str(tmp_path / "r"))
    assert result.returncode != 0 and "cannot reach http://127.0.0.1:1" in result.stderr


def test_template_add_then_a_sandbox_runs_on_that_root(short_dir: Path) -> None:
    """`corral template add` end to end: a bash root registered by the CLI, then a local sandbox on it
    running a command the way the E2B SDK does (`/bin/bash -l -c`)."""
    from tests.conftest import require_tool
    from tests.runner.harness import create, fleet_node, fleet_of, on_loop, run

    require_tool("bubblewrap", shutil.which("bwrap") is not None and os.geteuid() == 0, "root and bubblewrap")
    rootfs = bash_rootfs()  # under /tmp: sandboxes' uids must reach it
    try:
        data = short_dir / "data"
        data.mkdir(parents=True)
        (data / "corral.sqlite3").write_text("")
        added = corral("template", "add", "tiny", "--rootfs", str(rootfs), "--data-dir", str(data))
        assert added.returncode == 0, added.stderr
        (data / "corral.sqlite3").unlink()
        with fleet_node(data, sandbox_provider="local") as node:
            made = create(node, template="tiny", allow_internet=False)
            code, out = run(node, made.sandbox_id, "ls /bin; cat /etc/profile; id -u; "
                                                   "ls /usr/bin/python3 2>/dev/null || echo no-host-python; "
                                                   "cat /etc/shadow 2>/dev/null || echo no-shadow",
                            shell=("/bin/bash", "-l", "-c"))
            assert code == 0, out
            lines = out.decode().split()
            assert {"bash", "sh", "cat"} <= set(lines) and "python3" not in lines
            assert "# tiny" in out.decode() and "1000" in lines
            assert "no-host-python" in lines and "no-shadow" in lines
            assert node.call("query", "corral/sandboxes:lookup", {"sandbox_id": made.sandbox_id})["template"] == "tiny"
            on_loop(node, fleet_of(node).kill("api-key|owner1", made.sandbox_id))
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def test_runner_on_a_port_in_use_says_so_in_one_line_and_registers_nothing(live_node: LiveNode, tmp_path: Path) -> None:
    import socket

    key = corral("api-key", "create", "--name", "port-test", "--kind", "runner", "--url", live_node.url,
                 "--admin-key", live_node.admin_key)
    assert key.returncode == 0, key.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = corral("runner", "--server", live_node.url, "--key", key.stdout.strip(), "--listen", f"127.0.0.1:{port}",
                        "--provider", "host", "--name", "port-test", "--data-dir", str(tmp_path / "r"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"corral runner: could not listen on 127.0.0.1:{port}: address in use (is another runner there?)"]
    runners = corral("run", "corral/runners:list_all", "--data-dir", str(live_node.data_dir))
    assert runners.returncode == 0, runners.stderr
    assert "port-test" not in runners.stdout  # it did not register a runner nobody can reach


def test_admin_lists_and_kills_any_owners_sandboxes_and_revoke_says_what_a_key_still_runs(short_dir: Path) -> None:
    from tests.engine.served import wait_until
    from tests.runner.harness import api_key, create, fleet_node, held_state

    with fleet_node(short_dir / "node") as node:
        where = ["--url", node.url, "--admin-key", node.node.admin_key]
        _secret, key_id = api_key(node, "agent", "client")
        owner = f"api-key|{key_id}"
        first, second = create(node, owner=owner), create(node, owner=owner)
        other = create(node, owner="api-key|someone-else")
        listed = corral("sandbox", "list", *where)
        assert listed.returncode == 0, listed.stderr
        for made in (first, second, other):
            assert made.sandbox_id in listed.stdout
        assert owner in listed.stdout and "running" in listed.stdout

        revoked = corral("api-key", "revoke", "agent", *where)
        assert revoked.returncode == 0, revoked.stderr
        assert "still owns 2 running or paused sandboxes" in revoked.stdout
        assert f"corral sandbox kill {second.sandbox_id} {first.sandbox_id}" in revoked.stdout

        killed = corral("sandbox", "kill", first.sandbox_id, second.sandbox_id, *where)
        assert killed.returncode == 0, killed.stderr
        assert f"Killed sandbox {first.sandbox_id}" in killed.stdout
        wait_until(lambda: held_state(node, first.sandbox_id) is None and held_state(node, second.sandbox_id) is None,
                   what="the runner killing them")
        mine = corral("sandbox", "list", "--owner", owner, *where)
        assert first.sandbox_id not in mine.stdout and "No running or paused sandboxes" in mine.stderr
        assert first.sandbox_id in corral("sandbox", "list", "--all", "--owner", owner, *where).stdout
        again = corral("sandbox", "kill", first.sandbox_id, *where)
        assert again.returncode != 0 and "already killed" in again.stderr
        unknown = corral("sandbox", "kill", "inosuchsandbox00000", *where)
        assert unknown.returncode != 0 and "inosuchsandbox00000" in unknown.stderr
        assert "Traceback" not in unknown.stderr

        _secret, key_id = api_key(node, "agent-2", "client")
        create(node, owner=f"api-key|{key_id}")
        both = corral("api-key", "revoke", "agent-2", "--kill-sandboxes", *where)
        assert both.returncode == 0 and "Killed its 1 running or paused sandbox." in both.stdout
        assert corral("sandbox", "kill", other.sandbox_id, *where).returncode == 0
