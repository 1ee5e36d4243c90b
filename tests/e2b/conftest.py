"""The E2B protocol layer served alone (uvicorn on a thread) over the fake fleet of fakes.py."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from corral.e2b import E2bApi, E2bOptions
from corral.engine.auth import Authenticator, Caller, MachineKey
from corral.engine.clock import Clock
from corral.engine.errors import Unauthenticated

from ..conftest import free_port
from ..interop.e2b_target import E2bTarget
from .fakes import FakeFleet


@dataclass
class Served:
    url: str
    api_key: str
    other_key: str
    revoked_key: str
    fleet: FakeFleet
    loop: asyncio.AbstractEventLoop
    api: E2bApi
    clock: Clock  # what the E2B planes and the fake fleet read as now: tests advance it

    @property
    def api_url(self) -> str:
        return self.url + "/e2b"

    @property
    def sandbox_url(self) -> str:
        return self.url + "/envd"

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


def _authenticator(keys: dict[str, str], revoked: set[str]) -> Authenticator:
    async def verify(secret: str) -> Caller:
        if secret in revoked:
            raise Unauthenticated("the API key 'old' was revoked; create a new one with `corral api-key create`")
        if secret not in keys:
            raise Unauthenticated("this API key is not one of this deployment's keys")
        return Caller.api_key(MachineKey(id=keys[secret], name=keys[secret], kind="client"))

    return Authenticator("corral-admin-test", verify_api_key=verify)


@pytest.fixture
def served_e2b(tmp_path: Path) -> Iterator[Served]:
    key, other, revoked = ("e2b_" + secrets.token_hex(20) for _ in range(3))
    clock = Clock()
    fleet = FakeFleet(tmp_path / "sandboxes", clock=clock.time, disk_bytes=4 << 20)
    api = E2bApi(fleet, _authenticator({key: "k1", other: "k2"}, {revoked}),
                 E2bOptions(max_timeout=3600, max_upload_bytes=2 << 20, max_message=1 << 20, keepalive_floor=0.05),
                 clock=clock.time)
    app = Starlette(routes=api.routes(), middleware=api.middleware())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    loops: list[asyncio.AbstractEventLoop] = []

    def serve() -> None:
        loop = asyncio.new_event_loop()
        loops.append(loop)
        loop.run_until_complete(server.serve())
        loop.run_until_complete(api.close())  # watchers a test left
        loop.run_until_complete(fleet.close())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/envd/health", timeout=1)
            break
        time.sleep(0.02)
    yield Served(url, key, other, revoked, fleet, loops[0], api, clock)
    server.should_exit = True
    thread.join(20)


@pytest.fixture
def sdk_env(served_e2b: Served, monkeypatch: pytest.MonkeyPatch) -> Served:
    """The official SDK pointed at the served layer through its environment variables."""
    monkeypatch.setenv("E2B_API_URL", served_e2b.api_url)
    monkeypatch.setenv("E2B_SANDBOX_URL", served_e2b.sandbox_url)
    monkeypatch.setenv("E2B_API_KEY", served_e2b.api_key)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return served_e2b


@pytest.fixture
def e2b_env(sdk_env: Served) -> E2bTarget:
    """The interop tests' target (tests/interop/test_e2b_sdk.py), served over the fake fleet."""
    return E2bTarget(sdk_env.url, sdk_env.api_key, sdk_env.other_key, sdk_env.revoked_key, real_users=False)
