"""`ctx.env`: the node's variables and secrets, from `<data dir>/env` and CORRAL_ENV_* variables;
read-only, and never written to logs or to the database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pytest

from corral.engine.errors import ConfigError, FunctionError

from ..conftest import ROOT
from .served import ADMIN

SERVICES = ROOT / "tests" / "fixtures" / "services"
SECRET = "sk-live-4f9a1c7e2b8d"


def call(node, kind: str, path: str, args: dict | None = None):  # type: ignore[no-untyped-def]
    return asyncio.run(node.engine.call(kind, path, args or {}, ADMIN))[0]


def test_functions_read_variables_from_the_env_file_and_corral_env_variables(make_node, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "env").write_text(
        "# settings for functions\n"
        "MODEL=small\n"
        "export REGION = 'eu-west'\n"
        'GREETING="hello, world"\n'
        "\n"
        "API_KEY=from-the-file\n")
    (data / "env").chmod(0o600)
    monkeypatch.setenv("CORRAL_ENV_API_KEY", SECRET)
    node = make_node(functions=SERVICES, data_dir=data)
    assert call(node, "query", "settings_reader:value", {"name": "MODEL"}) == "small"
    assert call(node, "query", "settings_reader:value", {"name": "REGION"}) == "eu-west"
    assert call(node, "query", "settings_reader:value", {"name": "GREETING"}) == "hello, world"
    assert call(node, "query", "settings_reader:value", {"name": "API_KEY"}) == SECRET  # the variable wins over the file
    assert call(node, "query", "settings_reader:value", {"name": "NOPE"}) is None
    assert call(node, "action", "settings_reader:from_action", {"name": "MODEL"}) == "small"
    assert {"MODEL", "REGION", "GREETING", "API_KEY"} <= set(call(node, "query", "settings_reader:names"))


def test_env_is_read_only_and_shows_names_never_values(make_node, monkeypatch):
    monkeypatch.setenv("CORRAL_ENV_API_KEY", SECRET)
    node = make_node(functions=SERVICES)
    with pytest.raises(FunctionError, match="does not support item assignment"):
        call(node, "mutation", "settings_reader:overwrite", {"name": "API_KEY"})
    shown = call(node, "query", "settings_reader:shown")
    assert "API_KEY" in shown and SECRET not in shown


def test_a_missing_variable_says_how_to_set_it(make_node):
    node = make_node(functions=SERVICES)
    with pytest.raises(FunctionError) as err:
        call(node, "action", "settings_reader:from_action", {"name": "MISSING_ONE"})
    assert "CORRAL_ENV_MISSING_ONE" in err.value.message and "env" in err.value.message


def test_a_malformed_env_file_stops_the_node_naming_the_line_not_its_content(tmp_path):
    from corral.node import Node

    from ..conftest import make_settings

    data = tmp_path / "data"
    data.mkdir()
    (data / "env").write_text("GOOD=1\nthis line has sk-do-not-print in it\n")
    with pytest.raises(ConfigError) as err:
        Node(make_settings(data, functions=SERVICES))
    assert "line 2" in err.value.message and "sk-do-not-print" not in err.value.message


def test_secrets_never_reach_logs_errors_or_the_database(live_node_factory, tmp_path):
    node = live_node_factory(functions=SERVICES, env={"CORRAL_ENV_API_KEY": SECRET})

    def post(route: str, body: dict) -> dict:
        response = httpx.post(node.url + route, content=orjson.dumps(body), headers={"content-type": "application/json"}, timeout=30)
        return response.json()  # type: ignore[no-any-return]

    failed = post("/api/action", {"path": "settings_reader:leak", "args": {"name": "API_KEY"}})
    assert failed["status"] == "error"
    assert SECRET not in failed["errorMessage"] and "[secret API_KEY]" in failed["errorMessage"]
    job_id = post("/api/mutation", {"path": "settings_reader:schedule_leak", "args": {"name": "API_KEY"}})["value"]
    deadline = time.monotonic() + 15
    while True:
        job = post("/api/query", {"path": "jobs:job", "args": {"job_id": job_id}})["value"]
        if job["state"]["kind"] == "failed" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert job["state"]["kind"] == "failed"
    assert SECRET not in job["state"]["error"] and "[secret API_KEY]" in job["state"]["error"]
    node.stop()
    log = (node.data_dir.parent / f"node-{node.url.rsplit(':', 1)[1]}.log").read_text()
    assert "function.uncaught" in log and "[secret API_KEY]" in log
    assert SECRET not in log
    for file in Path(node.data_dir).glob("corral.sqlite3*"):
        assert SECRET.encode() not in file.read_bytes(), f"the secret is in {file.name}"
