"""Shared fixtures: storage backends, in-process engines and live nodes in their own processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest

from corral.engine.clock import Clock
from corral.engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_APP = ROOT / "tests" / "fixtures" / "app"
CHAT = ROOT / "examples" / "chat"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str, present: bool, how: str) -> None:
    """Skip when a tool is missing locally; fail under CI=true, where every tool must be there."""
    if present:
        return
    message = f"{name} is not available ({how})"
    if IN_CI:
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- PostgreSQL ---------------------------------------------------------------

def _postgres_base_url() -> str | None:
    return os.environ.get("CORRAL_TEST_POSTGRES_URL") or None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    base = _postgres_base_url()
    require_tool("PostgreSQL", base is not None, "set CORRAL_TEST_POSTGRES_URL")
    assert base is not None
    schema = "corral_test_" + uuid.uuid4().hex[:12]
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        pytest.fail(f"CORRAL_TEST_POSTGRES_URL is set but PostgreSQL is unreachable: {exc}")
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Each conformance test runs once per storage backend: None means SQLite."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


# -- in-process engines ---------------------------------------------------------

@dataclass
class EngineHarness:
    """A started node (without HTTP) for calling functions directly."""

    node: object
    clock: Clock

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        return self.node.engine  # type: ignore[attr-defined]

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run(coro)


def make_settings(data_dir: Path, database_url: str | None = None, functions: Path | None = TEST_APP, **extra: object) -> Settings:
    settings = Settings(data_dir=data_dir, database_url=database_url, functions_dir=functions)
    for key, value in extra.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Factory: make_node(database_url=None, functions=TEST_APP, **settings) → started Node."""
    from corral.node import Node

    started = []

    def factory(database_url: str | None = None, functions: Path | None = TEST_APP, data_dir: Path | None = None,
                clock: Clock | None = None, **extra: object) -> Node:
        node = Node(make_settings(data_dir or tmp_path / f"data{len(started)}", database_url, functions, **extra), clock=clock)
        node.start()
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop()
    from tests.sandbox_leftovers import kill_sandboxes_under

    for node in started:
        kill_sandboxes_under(Path(node.settings.data_dir))


# -- live nodes in their own processes ------------------------------------------

@dataclass
class LiveNode:
    url: str
    data_dir: Path
    process: subprocess.Popen  # type: ignore[type-arg]
    admin_key: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_live_node(data_dir: Path, functions: Path | None = TEST_APP, database_url: str | None = None,
                    env: dict[str, str] | None = None) -> LiveNode:
    port = free_port()
    args = [sys.executable, "-m", "corral", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    if functions is not None:
        args += ["--functions", str(functions)]
    if database_url:
        args += ["--database", database_url]
    log = open(data_dir.parent / f"node-{port}.log", "wb")  # noqa: SIM115 - lives as long as the process
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"node exited with {process.returncode}: {(data_dir.parent / f'node-{port}.log').read_text()}")
        try:
            httpx.post(url + "/api/query_ts", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("node did not start listening within 30 s")
    key = (data_dir / "admin_key").read_text().strip()
    return LiveNode(url, data_dir, process, key)


@pytest.fixture
def live_node_factory(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    nodes: list[LiveNode] = []

    def factory(functions: Path | None = TEST_APP, database_url: str | None = None, data_dir: Path | None = None,
                env: dict[str, str] | None = None) -> LiveNode:
        node = start_live_node(data_dir or tmp_path / f"node{len(nodes)}", functions, database_url, env)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.stop()
    from tests.sandbox_leftovers import kill_sandboxes_under

    for node in nodes:
        kill_sandboxes_under(node.data_dir)


@pytest.fixture
def live_node(live_node_factory) -> LiveNode:  # type: ignore[no-untyped-def]
    """A node serving the test app on SQLite, in its own process."""
    return live_node_factory()  # type: ignore[no-any-return]


@pytest.fixture
def chat_node(live_node_factory) -> LiveNode:  # type: ignore[no-untyped-def]
    """A node serving examples/chat, in its own process."""
    return live_node_factory(functions=CHAT)  # type: ignore[no-any-return]


def node_binary() -> str | None:
    return shutil.which("node")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a sandbox's agent socket lives below it (at most 107 bytes).

    Sandboxes outlive their node and runner: whatever a test left running under it is killed
    before the directory goes."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="cr-", dir="/tmp"))
    yield path
    from tests.sandbox_leftovers import kill_sandboxes_under

    try:
        kill_sandboxes_under(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _no_sandbox_left_behind() -> Iterator[None]:
    """Fail the run if a sandbox of this session (processes, mounts, loop devices, cgroups, runtime
    directories) is still there at its end; then clear it, so the next run starts clean.

    Every local provider of this session, in process or in a child node or runner, puts its cgroups
    under one root name of its own (CORRAL_SANDBOX_CGROUP_ROOT), so concurrent runs do not collide."""
    from tests.sandbox_leftovers import SESSION_CGROUP_ROOT, clear, find

    previous = os.environ.get("CORRAL_SANDBOX_CGROUP_ROOT")
    os.environ["CORRAL_SANDBOX_CGROUP_ROOT"] = SESSION_CGROUP_ROOT
    yield
    if previous is None:
        os.environ.pop("CORRAL_SANDBOX_CGROUP_ROOT", None)
    else:
        os.environ["CORRAL_SANDBOX_CGROUP_ROOT"] = previous
    left = find()
    clear(left)
    if left:
        pytest.fail(f"sandboxes of this test session were left behind (now cleared): {left.describe()}")
