"""The examples `corral e2b env --help` shows run as written, against a node."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx

from tests.conftest import LiveNode

CORRAL = [sys.executable, "-m", "corral"]


def test_the_help_examples_run(live_node_factory, short_dir) -> None:  # type: ignore[no-untyped-def]
    node: LiveNode = live_node_factory(data_dir=short_dir / "d", env={"CORRAL_SANDBOX_PROVIDER": "host"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "CORRAL_ADMIN_KEY"))}
    helps = [subprocess.run([*CORRAL, *command, "--help"], capture_output=True, text=True, timeout=60, env=env).stdout
             for command in (["e2b"], ["e2b", "env"])]
    examples = [line.strip() for text in helps for line in text.splitlines() if line.strip().startswith("python -c")]
    assert examples and all("Sandbox.create()" in e and "Sandbox()" not in e for e in examples)
    corral = " ".join([sys.executable, "-m", "corral"])
    script = "\n".join(["set -e", f'eval "$({corral} e2b env --data-dir {node.data_dir})"',
                        *(re.sub(r"^python ", f"{sys.executable} ", e) for e in examples),
                        'printf "%s\\n" "$E2B_API_KEY"'])
    ran = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120, env=env)
    try:
        assert ran.returncode == 0, ran.stderr
        assert [line for line in ran.stdout.splitlines()[:-1] if line] == ["hi"] * len(examples)
    finally:
        key = ran.stdout.splitlines()[-1] if ran.stdout else ""
        if key.startswith("e2b_"):
            api = node.url + "/e2b"
            for sandbox in httpx.get(api + "/v2/sandboxes", headers={"X-API-KEY": key}, timeout=30).json():
                httpx.delete(f"{api}/sandboxes/{sandbox['sandboxID']}", headers={"X-API-KEY": key}, timeout=30)
