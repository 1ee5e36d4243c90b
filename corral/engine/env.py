"""`ctx.env`: the variables and secrets a node gives its functions.

They come from two places, read once when the node starts (the later wins):

1. the file `<data dir>/env`, one `NAME=value` per line (`#` comments, blank lines, an optional
   `export ` and optional quotes around the value are allowed);
2. environment variables `CORRAL_ENV_<NAME>`.

Values live only in the node's memory: Corral never writes them to the database, and secrets are
masked as `[secret NAME]` in the node's log lines and in the error messages it records or sends
(`redact`). A secret is the value of a variable whose name says it is one (`…KEY`, `…TOKEN`,
`…SECRET`, `…PASSWORD`…: see `is_secret_name`), whatever its length — a 4-digit PIN included — and
any value of `SECRET_MIN_LENGTH` characters or more, whatever its name. Shorter values of other
variables (`DEBUG=1`, `REGION=eu`) are not masked: they are too common in text to mask everywhere.
`repr(ctx.env)` shows names, never values.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from .errors import ConfigError

log = structlog.get_logger("corral.env")

ENV_PREFIX = "CORRAL_ENV_"
ENV_FILE = "env"
SECRET_MIN_LENGTH = 8  # values this long are masked whatever their name; shorter ones when the name says secret
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names whose values are secrets at any length: OPENAI_API_KEY, GITHUB_TOKEN, DB_PASSWORD, ADMIN_PIN…
_SECRET_WORDS = re.compile(r"(?:^|_)(?:API_?KEY|KEYS?|SECRETS?|TOKENS?|PASSWORD|PASSWD|PASSPHRASE|PASS|PWD|PW|PIN|OTP"
                           r"|CREDENTIALS?|CREDS|PRIVATE|SALT|SIGNATURE)(?:_|$)", re.IGNORECASE)
_SECRET_PARTS = re.compile(r"SECRET|TOKEN|PASSWORD|APIKEY", re.IGNORECASE)  # inside a word too: GHTOKEN, OPENAIAPIKEY

# Every secret any node in this process was configured with, longest first (so that a value that
# contains another is masked whole): the masking is process-wide because logging is.
_secrets: list[tuple[str, str]] = []
# All of them matched in one pass (a mask is never masked again), and each one's name.
_masking: tuple[re.Pattern[str], dict[str, str]] | None = None
_secrets_lock = threading.Lock()


def is_secret_name(name: str) -> bool:
    """Whether a variable's name marks its value as a secret, masked whatever its length."""
    return _SECRET_WORDS.search(name) is not None or _SECRET_PARTS.search(name) is not None


class MissingVariable(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class Env(Mapping[str, str]):
    """A read-only mapping of names to values: `ctx.env["OPENAI_API_KEY"]`, `ctx.env.get("MODEL", "small")`."""

    def __init__(self, values: Mapping[str, str] | None = None, *, source: str = "") -> None:
        self._values = dict(values or {})
        self._source = source

    def __getitem__(self, name: str) -> str:
        try:
            return self._values[name]
        except KeyError:
            where = f" or add `{name}=…` to {self._source}" if self._source else ""
            raise MissingVariable(f"the variable {name!r} is not set for functions: set {ENV_PREFIX}{name}{where}, then restart the node") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Env({', '.join(sorted(self._values))})"

    __str__ = __repr__

    @classmethod
    def load(cls, data_dir: Path | str, environ: Mapping[str, str] | None = None) -> Env:
        """The file `<data_dir>/env`, then `CORRAL_ENV_*` variables; refuses a malformed file."""
        path = Path(data_dir) / ENV_FILE
        values = read_env_file(path)
        for key, value in (os.environ if environ is None else environ).items():
            if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
                values[key[len(ENV_PREFIX):]] = value
        env = cls(values, source=str(path))
        remember_secrets(values)
        return env


def read_env_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines; a line that is neither that, a comment nor blank stops the node, naming it."""
    if not path.is_file():
        return {}
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("env.file_readable_by_others", path=str(path), hint=f"chmod 600 {path}")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            # The line is not echoed: it may hold a secret.
            raise ConfigError(f"{path}, line {number}: expected NAME=value with NAME made of letters, digits and '_'")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def remember_secrets(values: Mapping[str, str]) -> None:
    global _masking
    with _secrets_lock:
        known = dict(_secrets)
        for name, value in values.items():
            if value and (len(value) >= SECRET_MIN_LENGTH or is_secret_name(name)):
                known[value] = name
        _secrets[:] = sorted(known.items(), key=lambda item: -len(item[0]))
        if _secrets:
            _masking = re.compile("|".join(re.escape(value) for value, _name in _secrets)), dict(_secrets)


def redact(text: str) -> str:
    """`text` with every secret (see the module's docstring) masked as `[secret NAME]`."""
    masking = _masking
    if masking is None or not isinstance(text, str):
        return text
    pattern, names = masking
    return pattern.sub(lambda m: f"[secret {names[m.group(0)]}]", text)


def redact_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: masks secrets in every string of a log event, tracebacks included."""
    masking = _masking
    if masking is None:
        return event
    if event.get("exc_info"):
        event = structlog.processors.format_exc_info(_logger, _method, event)  # as text, so it can be masked
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
        elif isinstance(value, (list, tuple, dict, set, BaseException)):
            text = repr(value)
            event[key] = redact(text) if masking[0].search(text) else value
    return event
