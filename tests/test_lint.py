"""The code stays clean: ruff, mypy and the import-linter contracts that keep the layers apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        [str(BIN / "ruff"), "check", "corral", "tests", "bench", "examples"],
        [str(BIN / "lint-imports")],
        [str(BIN / "mypy")],
    ],
    ids=["ruff", "import-contracts", "mypy"],
)
def test_lint(command):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
