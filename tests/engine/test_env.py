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


# A long value is a secret whatever its name; a short one when its name says so (…KEY, …PASSWORD, …PIN).
SECRETS = {"long": ("API_KEY", SECRET), "short": ("DB_PASSWORD", "Zq9#")}


@pytest.mark.parametrize("case", list(SECRETS))
def test_secrets_never_reach_logs_errors_or_the_database(live_node_factory, tmp_path, case):
    name, secret = SECRETS[case]
    node = live_node_factory(functions=SERVICES, env={f"CORRAL_ENV_{name}": secret})

    def post(route: str, body: dict) -> dict:
        response = httpx.post(node.url + route, content=orjson.dumps(body), headers={"content-type": "application/json"}, timeout=30)
        return response.json()  # type: ignore[no-any-return]

    failed = post("/api/action", {"path": "settings_reader:leak", "args": {"name": name}})
    assert failed["status"] == "error"
    assert secret not in failed["errorMessage"] and f"[secret {name}]" in failed["errorMessage"]
    job_id = post("/api/mutation", {"path": "settings_reader:schedule_leak", "args": {"name": name}})["value"]
    deadline = time.monotonic() + 15
    while True:
        job = post("/api/query", {"path": "jobs:job", "args": {"job_id": job_id}})["value"]
        if job["state"]["kind"] == "failed" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert job["state"]["kind"] == "failed"
    assert secret not in job["state"]["error"] and f"[secret {name}]" in job["state"]["error"]
    node.stop()
    log = (node.data_dir.parent / f"node-{node.url.rsplit(':', 1)[1]}.log").read_text()
    assert "function.uncaught" in log and f"[secret {name}]" in log
    assert secret not in log.replace(f"[secret {name}]", "")
    for file in Path(node.data_dir).glob("corral.sqlite3*"):
        assert secret.encode() not in file.read_bytes(), f"the secret is in {file.name}"


def test_short_values_are_masked_when_their_name_says_secret_and_left_alone_otherwise(monkeypatch):
    from corral.engine import env
    from corral.engine.env import is_secret_name, redact, remember_secrets

    # The masking is process-wide: this test's short secrets must not mask other tests' text.
    monkeypatch.setattr(env, "_secrets", list(env._secrets))
    monkeypatch.setattr(env, "_masking", env._masking)
    remember_secrets({"ADMIN_PIN": "4821", "SMTP_PW": "x9", "VERBOSE": "1", "REGION": "eu"})
    assert redact("pin 4821 and pw x9, verbose 1 in eu") == "pin [secret ADMIN_PIN] and pw [secret SMTP_PW], verbose 1 in eu"
    assert all(map(is_secret_name, ["OPENAI_API_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "CLIENT_SECRET", "PW", "STRIPE_KEY"]))
    assert not any(map(is_secret_name, ["MODEL", "REGION", "DEBUG", "PORT", "POWER_LEVEL", "SPINNER", "KEYBOARD", "AUTH_MODE", "PASSAGE"]))
