"""Live nodes with sandboxes, for the official e2b SDK (test_e2b_sdk.py, test_e2b_sdk_generations.py)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveNode, require_tool, start_live_node
from tests.sandbox_leftovers import kill_sandboxes_under

from .e2b_target import E2bTarget


def corral_cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "corral", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"corral {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


def _provider_ready(provider: str) -> None:
    if provider == "local":
        require_tool("bubblewrap", shutil.which("bwrap") is not None, "apt-get install bubblewrap")
        try:
            present = hasattr(importlib.import_module("corral.sandbox.local"), "LocalProvider")
        except ImportError:
            present = False
        require_tool("the local sandbox provider", present, "corral.sandbox.local.LocalProvider is not built")


def start_sandbox_node(base: Path, provider: str) -> tuple[LiveNode, E2bTarget]:
    """A node whose embedded runner uses `provider`, with two client keys and a revoked one."""
    _provider_ready(provider)
    node = start_live_node(base / "data", functions=None, env={
        "CORRAL_SANDBOX_PROVIDER": provider,
        "CORRAL_MAX_UPLOAD_BYTES": str(64 << 20),
    })
    try:
        data_dir = str(node.data_dir)
        key = corral_cli("api-key", "create", "--data-dir", data_dir, "--name", "sdk").splitlines()[0]
        other = corral_cli("api-key", "create", "--data-dir", data_dir, "--name", "other").splitlines()[0]
        revoked = corral_cli("api-key", "create", "--data-dir", data_dir, "--name", "old").splitlines()[0]
        corral_cli("api-key", "revoke", "old", "--data-dir", data_dir)
    except BaseException:
        node.stop()
        kill_sandboxes_under(node.data_dir)
        raise
    return node, E2bTarget(node.url, key, other, revoked, real_users=provider == "local",
                            isolated=provider != "host")


@pytest.fixture(scope="module", params=["host", "local"])
def e2b_node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2bTarget]:
    """One node per module and provider: the sandbox tests share it (each makes its own sandboxes)."""
    node, target = start_sandbox_node(tmp_path_factory.mktemp(f"e2b-{request.param}"), request.param)
    yield target
    node.stop()
    kill_sandboxes_under(node.data_dir)


@pytest.fixture
def e2b_env(e2b_node: E2bTarget, monkeypatch: pytest.MonkeyPatch) -> E2bTarget:
    """The SDK pointed at the node through its environment variables, as a user would."""
    for key, value in e2b_node.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return e2b_node
