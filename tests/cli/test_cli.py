"""The `corral` command, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import CHAT, free_port

CORRAL = [sys.executable, "-m", "corral"]


def corral(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", [[], ["serve"], ["up"], ["admin-key"], ["run"]])
def test_every_command_has_complete_help(command):
    result = corral(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    assert "Example" in result.stdout or "Quick start" in result.stdout
    if command == ["serve"]:
        for flag in ("--host", "--port", "--data-dir", "--database", "--functions"):
            assert flag in result.stdout


def test_admin_key_prints_only_the_key(chat_node):
    result = corral("admin-key", "--data-dir", str(chat_node.data_dir))
    assert result.returncode == 0
    assert result.stdout == chat_node.admin_key + "\n"
    response = httpx.post(chat_node.url + "/api/function", json={"path": "messages:list", "args": {}},
                          headers={"Authorization": f"Convex {result.stdout.strip()}"})
    assert response.json() == {"status": "success", "value": []}


def test_admin_key_without_a_node_explains_what_to_do(tmp_path):
    result = corral("admin-key", "--data-dir", str(tmp_path / "empty"))
    assert result.returncode != 0
    assert "start a node there first" in result.stderr


def test_run_goes_through_the_running_node(chat_node):
    sent = corral("run", "messages:send", '{"author": "cli", "body": "hi"}', "--data-dir", str(chat_node.data_dir))
    assert sent.returncode == 0, sent.stderr
    listed = corral("run", "messages:list", "--data-dir", str(chat_node.data_dir))
    assert [m["body"] for m in json.loads(listed.stdout)] == ["hi"]


def test_run_opens_the_store_directly_when_no_node_runs(live_node_factory):
    node = live_node_factory(functions=CHAT)
    assert corral("run", "messages:send", '{"author": "a", "body": "kept"}', "--data-dir", str(node.data_dir)).returncode == 0
    node.stop()
    listed = corral("run", "messages:list", "--data-dir", str(node.data_dir), "--functions", str(CHAT))
    assert listed.returncode == 0, listed.stderr
    assert [m["body"] for m in json.loads(listed.stdout)] == ["kept"]
    without_functions = corral("run", "messages:list", "--data-dir", str(node.data_dir))
    assert without_functions.returncode != 0 and "pass --functions" in without_functions.stderr


def test_run_with_no_node_and_no_data_says_what_to_do(tmp_path):
    result = corral("run", "messages:list", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode != 0
    assert "no node is running" in result.stderr and "corral serve" in result.stderr
    assert not (tmp_path / "nothing").exists()


def test_run_shows_convex_error_data(live_node):
    result = corral("run", "misc:fail_action", "--data-dir", str(live_node.data_dir))
    assert result.returncode != 0
    assert '{"why": "because"}' in result.stderr


def test_admin_key_from_the_database_without_a_node(chat_node, tmp_path):
    sqlite = chat_node.data_dir / "corral.sqlite3"
    result = corral("admin-key", "--database", f"sqlite://{sqlite}", "--data-dir", str(tmp_path / "elsewhere"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == chat_node.admin_key


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "messages:list", "not json"], "ARGS must be a JSON object"),
        (["run", "messages:list", "[1]"], "ARGS must be a JSON object"),
        (["serve", "--port", "99999"], "99999"),
        (["serve", "--functions", "/definitely/not/here"], "does not exist"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_flags_and_arguments_are_explained(args, expected, tmp_path):
    result = corral(*args)
    assert result.returncode != 0
    assert expected in result.stderr


def test_a_path_without_a_function_name_says_how_paths_look(chat_node):
    through_node = corral("run", "--data-dir", str(chat_node.data_dir), "messages")
    chat_node.stop()
    direct = corral("run", "--data-dir", str(chat_node.data_dir), "messages")  # opens the store itself
    for result in (through_node, direct):
        assert result.returncode != 0
        assert "(a function path is module:function, e.g. messages:list)" in result.stderr, result.stderr


def test_serve_refuses_a_schema_that_does_not_load_with_a_report(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "schema.py").write_text("from corral import Table\nclass W(Table, name='corral_workspaces'):\n    x: str\n")
    result = corral("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"), "--functions", str(app))
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "'corral_workspaces'" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_records_its_url_and_removes_it_on_exit(tmp_path):
    port = free_port()
    data = tmp_path / "d"
    proc = subprocess.Popen([*CORRAL, "serve", "--port", str(port), "--data-dir", str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}" in line
        node_file = data / "node.json"
        for _ in range(100):
            if node_file.exists():
                break
            import time

            time.sleep(0.05)
        assert json.loads(node_file.read_text())["url"] == f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert not (data / "node.json").exists()


def test_a_second_node_on_a_taken_port_says_so(chat_node, tmp_path):
    port = chat_node.url.rsplit(":", 1)[1]
    result = corral("serve", "--port", port, "--data-dir", str(tmp_path / "other"), timeout=30)
    assert result.returncode != 0
    assert f"could not listen on 127.0.0.1:{port}: address in use" in result.stderr
    assert not (tmp_path / "other").exists()  # refused before it opened anything


def test_a_second_node_on_the_same_data_dir_is_refused_and_the_first_goes_on(chat_node):
    node_file = chat_node.data_dir / "node.json"
    before = node_file.read_text()
    result = corral("serve", "--port", str(free_port()), "--data-dir", str(chat_node.data_dir), timeout=30)
    assert result.returncode == 2
    assert f"another node (pid {chat_node.process.pid}) is serving the data directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert node_file.read_text() == before
    assert corral("run", "--data-dir", str(chat_node.data_dir), "messages:list").returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_a_node_cleanly(tmp_path, signum):
    data = tmp_path / "d"
    proc = subprocess.Popen([*CORRAL, "serve", "--port", str(free_port()), "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "Corral is running at" in proc.stdout.readline()  # type: ignore[union-attr]
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Aborted" not in err and "Traceback" not in err
    assert not (data / "node.json").exists()


def test_commands_open_a_postgres_store_directly_beside_a_node_serving_it(tmp_path, postgres_url):
    data = tmp_path / "d"
    proc = subprocess.Popen([*CORRAL, "serve", "--port", str(free_port()), "--data-dir", str(data), "--database", postgres_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "Corral is running at" in proc.stdout.readline()  # type: ignore[union-attr]
        direct = corral("run", "--data-dir", str(data), "--database", postgres_url, "corral/sandboxes:list")
        assert direct.returncode == 0, direct.stderr  # documented: --database opens the database itself
        second = corral("serve", "--port", str(free_port()), "--data-dir", str(data), "--database", postgres_url)
        assert second.returncode == 2 and "another node" in second.stderr  # but a second node is refused
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_database_that_cannot_be_opened_is_explained(tmp_path):
    result = corral("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
                    "--database", "postgresql://postgres:hunter2@127.0.0.1:1/corral", timeout=30)
    assert result.returncode == 2
    assert "cannot open the PostgreSQL database postgresql://postgres@127.0.0.1:1/corral: connection failed" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    at_sign = corral("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
                     "--database", "postgresql://postgres:hun@ter2@127.0.0.1:1/corral", timeout=30)
    assert at_sign.returncode == 2 and "write an '@' in the password as %40" in at_sign.stderr
    assert "ter2" not in at_sign.stderr


def test_a_postgres_database_that_does_not_exist_says_how_to_create_it(tmp_path, postgres_url):
    missing = postgres_url.split("?")[0].rsplit("/", 1)[0] + "/corral_no_such_database"
    result = corral("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"), "--database", missing, timeout=30)
    assert result.returncode == 2
    assert 'database "corral_no_such_database" does not exist; create it first (createdb' in result.stderr


def test_up_uses_the_xdg_data_home(tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "CORRAL_PORT": str(free_port())}
    proc = subprocess.Popen([*CORRAL, "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        assert "Corral is running at http://127.0.0.1:" in proc.stdout.readline()  # type: ignore[union-attr]
        key = Path(env["XDG_DATA_HOME"]) / "corral" / "admin_key"
        for _ in range(100):
            if key.exists():
                break
            import time

            time.sleep(0.05)
        assert key.exists()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_overlapping_plane_prefixes_are_refused():
    from corral.engine.errors import ConfigError
    from corral.node import PLANES, check_prefixes

    check_prefixes(PLANES)
    with pytest.raises(ConfigError, match="overlap"):
        check_prefixes([*PLANES, ("/api/sync/", "something else")])
    with pytest.raises(ConfigError, match="start and end with"):
        check_prefixes([("/api", "no slash")])


def test_serve_prints_an_absolute_data_dir_so_its_hints_work_from_anywhere(tmp_path):
    """The banner's data directory, admin-key and e2b hints work from any working directory."""
    port = free_port()
    proc = subprocess.Popen([*CORRAL, "serve", "--port", str(port), "--data-dir", "./data"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(6)]  # type: ignore[union-attr]
        data = (tmp_path / "data").absolute()
        assert lines[1].split()[0] == "console:" and "/#login=" in lines[1]
        assert lines[2].split()[-2:] == ["--data-dir", f"{data})"]  # another sign-in link, from anywhere
        assert lines[3].split() == ["data:", str(data)]
        hint = lines[4].split("admin key:", 1)[1].split()
        assert hint[-2:] == ["--data-dir", str(data)]
        shown = corral("admin-key", "--data-dir", hint[-1])  # from this test's working directory, not tmp_path
        assert shown.returncode == 0 and shown.stdout.startswith("corral-admin-")
        e2b = lines[5].split("e2b SDK:", 1)[1].strip()
        assert e2b.startswith('eval "$(') and e2b.endswith(')"')
        exported = subprocess.run(["bash", "-c", f"{e2b} && echo $E2B_API_URL $E2B_SANDBOX_URL"],
                                  capture_output=True, text=True, timeout=60)
        assert exported.stdout.split() == [f"http://127.0.0.1:{port}/e2b", f"http://127.0.0.1:{port}/envd"], exported.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_run_hides_sandbox_tokens_and_runner_secrets(live_node):
    """`corral run` of an internal function that returns a sandbox or a runner document never prints
    its access token or secret."""
    import secrets

    headers = {"Authorization": f"Convex {live_node.admin_key}"}
    secret = secrets.token_hex(16)
    key = httpx.post(live_node.url + "/api/auth/api_keys", json={"name": "r1", "kind": "runner"}, headers=headers).json()["key"]
    registered = httpx.post(live_node.url + "/api/mutation", headers={"Authorization": f"Bearer {key}"},
                            json={"path": "corral/runners:register", "args": {"name": "far-away", "url": "http://127.0.0.1:9",
                                                                        "secret": secret, "capacity": 0, "labels": []}})
    assert registered.json()["status"] == "success", registered.text
    shown = corral("run", "corral/runners:get", '{"name": "far-away"}', "--data-dir", str(live_node.data_dir))
    assert shown.returncode == 0, shown.stderr
    assert secret not in shown.stdout and json.loads(shown.stdout)["secret"] == "<hidden>"
