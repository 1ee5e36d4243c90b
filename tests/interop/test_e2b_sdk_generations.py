"""Older releases of the official e2b SDK, one per generation of E2B's API, each in its own venv:

- 2.50.0: `POST /sandboxes` and `POST /sandboxes/{id}/connect` (2.6–2.50);
- 2.5.0: `POST /sandboxes`, connect as `POST …/timeout`, then `POST …/resume` (2.0–2.5).

`make install` creates the venvs (scripts/e2b-sdk-venvs); a missing one is created here from
PyPI. Each runs e2b_core_scenario.py against a live node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT
from tests.sandbox_leftovers import kill_sandboxes_under

from .conftest import start_sandbox_node
from .e2b_target import E2bTarget

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "e2b_core_scenario.py"
CACHE = Path(os.environ.get("CORRAL_E2B_SDK_CACHE", ROOT / ".cache" / "e2b-sdk"))
SCENARIO_TIMEOUT = 120


def sdk_python(version: str) -> Path:
    venv = CACHE / version
    if not (venv / ".installed").exists():
        done = subprocess.run([str(ROOT / "scripts" / "e2b-sdk-venvs"), str(CACHE)], capture_output=True, text=True,
                              env={**os.environ, "CORRAL_E2B_SDK_VERSIONS": version, "PYTHON": sys.executable},
                              timeout=600)
        if done.returncode != 0:
            message = f"could not install e2b=={version} into {venv}: {done.stderr[-2000:]}"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def host_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2bTarget]:
    node, target = start_sandbox_node(tmp_path_factory.mktemp("e2b-generations"), "local")
    yield target
    node.stop()
    kill_sandboxes_under(node.data_dir)


@pytest.mark.parametrize("version", ["2.50.0", "2.5.0"])
def test_core_scenario(version: str, host_node: E2bTarget) -> None:
    python = sdk_python(version)
    env = {**os.environ, **host_node.env()}
    env.pop("E2B_DEBUG", None)
    env.pop("E2B_DOMAIN", None)
    try:
        done = subprocess.run([str(python), str(SCENARIO)], capture_output=True, text=True, env=env,
                              timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"e2b {version} hung; its steps so far:\n{exc.stderr}", pytrace=False)
    assert done.returncode == 0, f"e2b {version} failed; its steps and error:\n{done.stderr}"
    assert '"ok": true' in done.stdout
    assert f'"sdk": "{".".join(version.split(".")[:2])}"' in done.stderr
