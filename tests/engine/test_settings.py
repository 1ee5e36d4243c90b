"""Settings from the environment and corral.toml: a bad value stops the node with a message naming it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from corral.engine.errors import ConfigError
from corral.engine.settings import ABOVE_ZERO, Settings


def test_environment_and_file_override_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text("sandbox_metrics_interval = 2.5\nrunner_labels = \"gpu\"\n")
    settings = Settings.load(environ={"CORRAL_CONFIG": str(config), "CORRAL_SANDBOX_METRICS_KEPT": "12"})
    assert (settings.sandbox_metrics_interval, settings.sandbox_metrics_kept, settings.runner_labels) == (2.5, 12, "gpu")


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("CORRAL_SANDBOX_METRICS_INTERVAL", "0", "'sandbox_metrics_interval' has the bad value 0.0: it must be a number above 0"),
    ("CORRAL_RUNNER_HEARTBEAT_INTERVAL", "-1", "it must be a number above 0"),
    ("CORRAL_SANDBOX_METRICS_KEPT", "0", "'sandbox_metrics_kept' has the bad value 0: it must be a number above 0"),
    ("CORRAL_SANDBOX_IDLE_TIMEOUT", "-5", "'sandbox_idle_timeout' has the bad value -5.0: it must be a number 0 or more"),
    ("CORRAL_PORT", "http", "'port' has the bad value 'http'"),
    ("CORRAL_RUNNER_LEASE", "nan", "'runner_lease' has the bad value nan: it must be a number above 0"),
    ("CORRAL_SQLITE_READERS", "0", "'sqlite_readers' has the bad value 0: it must be a number above 0"),
])
def test_a_bad_value_is_refused_with_its_name(variable: str, value: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.load(environ={"CORRAL_CONFIG": str(tmp_path / "none.toml"), variable: value})
    assert words in str(raised.value)


def test_zero_is_allowed_where_it_means_never_or_no_throttling(tmp_path: Path) -> None:
    settings = Settings.load(environ={"CORRAL_CONFIG": str(tmp_path / "none.toml"), "CORRAL_SANDBOX_IDLE_TIMEOUT": "0",
                                      "CORRAL_SANDBOX_TOUCH_INTERVAL": "0", "CORRAL_AUTH_CLOCK_LEEWAY": "0"})
    assert (settings.sandbox_idle_timeout, settings.sandbox_touch_interval, settings.auth_clock_leeway) == (0, 0, 0)


def test_an_unknown_setting_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text("bogus = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'bogus'; known: .*sandbox_metrics_interval"):
        Settings.load(environ={"CORRAL_CONFIG": str(config)})


def test_every_setting_that_must_be_above_zero_exists() -> None:
    assert {f.name for f in fields(Settings)} >= ABOVE_ZERO
