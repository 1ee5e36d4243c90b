"""The node's view of its sandboxes: lifecycle in the engine, execution on runners.

`SandboxFleet` is what the E2B API (and later the SDK and agents) calls. Its implementation
records every sandbox in the engine's `sandboxes` table, places new sandboxes on a runner with
room, drives the runner's provider, and routes data-plane calls to the runner that hosts a
sandbox. Every call names the caller (`owner`): a sandbox belongs to the identity or API key
that created it, and to anyone else it does not exist (SandboxNotFound).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..sandbox.protocol import Limits, Metrics, Sandbox

OnTimeout = Literal["kill", "pause"]
RecordState = Literal["running", "paused", "killed", "lost"]


@dataclass(frozen=True)
class CreateRequest:
    template: str = "base"
    timeout: float = 300.0  # seconds until on_timeout acts; bounded by settings
    metadata: dict[str, str] = field(default_factory=dict)
    envs: dict[str, str] = field(default_factory=dict)
    allow_internet: bool = True
    on_timeout: OnTimeout = "kill"
    auto_resume: bool = False  # a paused sandbox resumes when traffic reaches it
    limits: Limits | None = None  # None: the settings' defaults
    secure: bool = True  # False: no access token, envd traffic needs none (E2B's `secure`)
    runner_labels: tuple[str, ...] = ()  # place only on a runner that has every one of these labels
    idle_timeout: float | None = None  # seconds without activity before on_idle acts; None: the node's policy
    on_idle: Literal["pause", "kill"] = "pause"


@dataclass(frozen=True)
class SandboxRecord:
    sandbox_id: str
    owner: str
    template: str
    state: RecordState
    runner: str
    started_at: float  # unix seconds
    end_at: float  # when on_timeout acts
    on_timeout: OnTimeout
    auto_resume: bool
    metadata: dict[str, str]
    limits: Limits
    allow_internet: bool
    access_token: str  # envd's X-Access-Token for this sandbox ("" when created with secure=False)
    last_activity: float
    paused_at: float | None = None
    ended_at: float | None = None
    memory_kept: bool = True
    timeout: float = 300.0  # seconds: the last timeout asked for (an automatic resume runs this long again)
    paused_reason: Literal["request", "timeout", "idle"] | None = None  # idle pauses resume on traffic


@dataclass(frozen=True)
class ListQuery:
    metadata: dict[str, str] = field(default_factory=dict)  # every pair must match
    states: tuple[RecordState, ...] = ("running", "paused")
    order: Literal["asc", "desc"] = "desc"  # by started_at
    limit: int = 100
    next_token: str | None = None
    started_after: float | None = None
    template: str | None = None


@dataclass(frozen=True)
class Page:
    records: list[SandboxRecord]
    next_token: str | None  # None when this is the last page


class SandboxFleet(Protocol):
    async def create(self, owner: str, request: CreateRequest) -> SandboxRecord:
        """Place, boot and record. TemplateNotFound, InvalidSpec, CapacityError."""

    async def get(self, owner: str, sandbox_id: str) -> SandboxRecord: ...
    async def list(self, owner: str, query: ListQuery) -> Page: ...
    async def kill(self, owner: str, sandbox_id: str) -> None: ...
    async def pause(self, owner: str, sandbox_id: str) -> None:
        """SandboxStateError when already paused."""

    async def connect(self, owner: str, sandbox_id: str, timeout: float) -> tuple[SandboxRecord, bool]:
        """Resume when paused (True) or extend the timeout of a running one (False); never shortens."""

    async def set_timeout(self, owner: str, sandbox_id: str, timeout: float) -> None:
        """end_at = now + timeout; 0 expires it now."""

    async def metrics(self, owner: str, sandbox_id: str, start: float | None, end: float | None) -> builtins.list[Metrics]: ...

    async def data_plane(self, sandbox_id: str, access_token: str | None) -> Sandbox:
        """The running sandbox for envd traffic, checked against its access token; counts as activity.
        SandboxNotFound when missing, killed or paused (unless auto_resume: then it resumes first);
        SandboxUnavailable when its runner is gone."""

    async def is_running(self, sandbox_id: str) -> bool:
        """Whether the sandbox is running on a runner that answers; a look only: nothing resumes, nothing counts as activity."""

    async def touch(self, sandbox_id: str) -> None:
        """Record activity (resets the idle clock), now."""

    def seen(self, sandbox_id: str) -> None:
        """Traffic on the sandbox: activity, written at most once per sandbox_touch_interval."""

    async def access_tokens(self) -> builtins.list[tuple[str, str]]:
        """(sandbox id, access token) of every running or paused sandbox that has one, from the
        engine's records: signed file URLs name no sandbox and are checked against these."""


class InvalidAccessToken(Exception):
    """The envd access token is missing or is not this sandbox's."""
