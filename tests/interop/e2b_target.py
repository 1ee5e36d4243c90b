"""What an E2B interop test talks to: a server speaking E2B's API, and keys for it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class E2bTarget:
    url: str  # the node's root URL
    api_key: str  # a client key that works
    other_key: str  # another working key: a different owner
    revoked_key: str  # a key that was revoked
    real_users: bool  # whether sandbox users are real (whoami answers the user asked for)
    isolated: bool = True  # whether absolute paths are the sandbox's own (False for the host provider)

    @property
    def api_url(self) -> str:
        return self.url + "/e2b"

    @property
    def sandbox_url(self) -> str:
        return self.url + "/envd"

    def env(self, api_key: str | None = None) -> dict[str, str]:
        return {"E2B_API_URL": self.api_url, "E2B_SANDBOX_URL": self.sandbox_url,
                "E2B_API_KEY": api_key or self.api_key}

    @contextmanager
    def environment(self, api_key: str | None = None) -> Iterator[None]:
        saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DEBUG", "E2B_DOMAIN")}
        os.environ.update(self.env(api_key))
        os.environ.pop("E2B_DEBUG", None)
        os.environ.pop("E2B_DOMAIN", None)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
