"""Every table of Corral's own, in one place."""

from typing import Literal, TypedDict

from corral import Id, Table, index


class Workspace(Table, name="corral_workspaces"):
    name: str
    owner_id: str
    indexes = [index("by_owner", "owner_id")]


class WorkspaceMember(Table, name="corral_workspace_members"):
    workspace_id: Id[Workspace]
    user_id: str
    role: Literal["owner", "admin", "member"]
    indexes = [index("by_user", "user_id"), index("by_workspace_user", "workspace_id", "user_id")]


# -- sandboxes and the runners that host them (docs/sandboxes.md) -----------------------------
# Times are milliseconds since the epoch, like `_creationTime`.

SandboxState = Literal["running", "paused", "killed", "lost"]


class SandboxLimits(TypedDict):
    cpu_count: int
    memory_mb: int
    disk_mb: int
    pids: int


class Sandbox(Table, name="corral_sandboxes"):
    """One sandbox: the engine's word on its state, which its runner converges to."""

    sandbox_id: str  # the public id (lowercase alphanumeric)
    owner: str  # tokenIdentifier of the identity or API key that created it
    template: str
    runner: str  # name of the runner hosting it
    state: SandboxState  # what the engine decided; the runner follows
    generation: int  # bumped by every change of state: the runner applies each generation once
    live: bool  # the runner still holds it: False once its kill is confirmed
    state_since: float  # when `state` last changed
    end_at: float  # when on_timeout acts on a running sandbox
    timeout: float  # the last timeout asked for (ms): an automatic resume runs for this long again
    on_timeout: Literal["kill", "pause"]
    auto_resume: bool
    paused_reason: Literal["request", "timeout", "idle"] | None = None  # idle pauses resume on traffic
    last_activity: float
    metadata: dict[str, str]
    limits: SandboxLimits
    allow_internet: bool
    access_token: str  # envd's X-Access-Token ("" when not secured); never returned by public functions
    started_at: float
    paused_at: float | None
    ended_at: float | None
    memory_kept: bool
    indexes = [
        index("by_sandbox_id", "sandbox_id"),
        index("by_owner_state", "owner", "state", "started_at"),
        index("by_runner_live", "runner", "live"),
        index("by_state_reason_end_at", "state", "paused_reason", "end_at"),
        index("by_state_activity", "state", "last_activity"),
        index("by_state_since", "state", "state_since"),
    ]


class Runner(Table, name="corral_runners"):
    """An execution-plane host: the node's own embedded runner or a `corral runner` elsewhere."""

    name: str
    key_id: str  # the runner key it registered with
    url: str  # where nodes reach its data plane (/runner/v1/…)
    secret: str  # what nodes present to it (Authorization: Bearer); readable by internal functions only
    capacity: int  # sandboxes it may hold (running and paused)
    labels: list[str]
    templates: list[str] | None = None  # the templates it has (None: it reported none, from before they were)
    state: Literal["up", "lost", "stopped"]  # lost: its lease ran out; stopped: it said it was leaving
    last_heartbeat: float
    registered_at: float
    indexes = [index("by_name", "name"), index("by_state_heartbeat", "state", "last_heartbeat")]


class SandboxPolicy(Table, name="corral_sandbox_policy"):
    """Durations the lifecycle crons follow, written from Settings by each node at start (ms)."""

    idle_timeout: float  # 0: never pause for idleness
    retention: float
    runner_lease: float
