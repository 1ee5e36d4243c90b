"""Every table of Corral's own, in one place."""

from typing import Any, Literal, TypedDict

from corral import Id, Table, index

# -- tenancy: workspaces, their members and threads, people, the audit trail (docs/workspaces.md) --
# User ids are identities' tokenIdentifier; times are ms since the epoch.

class Workspace(Table, name="corral_workspaces"):
    name: str
    owner_id: str
    status: Literal["active", "deleting"] = "active"  # deleting: workspaces:remove is taking it apart
    monthly_budget_usd: float | None = None  # past it, new runs are refused
    indexes = [index("by_owner", "owner_id")]


class WorkspaceMember(Table, name="corral_workspace_members"):
    workspace_id: Id[Workspace]
    user_id: str
    role: Literal["owner", "admin", "member"]
    indexes = [index("by_user", "user_id"), index("by_workspace_user", "workspace_id", "user_id")]


class User(Table, name="corral_users"):
    """A person's profile, from their token's claims at each sign-in (users:sync_profile)."""

    token_identifier: str
    name: str | None
    email: str | None  # lowercase
    picture: str | None
    updated_at: float
    indexes = [index("by_token", "token_identifier"), index("by_email", "email")]


class Invitation(Table, name="corral_invitations"):
    """Membership waiting for the person with this email to sign in for the first time."""

    workspace_id: Id[Workspace]
    email: str  # lowercase
    role: Literal["admin", "member"]
    invited_by: str
    indexes = [index("by_email", "email", "workspace_id"), index("by_workspace_email", "workspace_id", "email")]


class Thread(Table, name="corral_threads"):
    """An agent thread: what a workspace's runs belong to."""

    workspace_id: Id[Workspace]
    title: str | None
    creator_id: str
    status: Literal["active", "archived"]
    indexes = [index("by_workspace", "workspace_id")]


class AuditEntry(Table, name="corral_audit_log"):
    """One privileged act, written in the transaction that did it (lib/audit_log.py)."""

    workspace_id: Id[Workspace]
    actor: str  # the caller's tokenIdentifier, or "corral" for Corral's own crons
    action: str  # "member.add", "workspace.remove", …
    target: str
    before: Any
    after: Any
    at: float
    indexes = [index("by_workspace_at", "workspace_id", "at")]


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
    # Its own idle policy (a run's sandbox): on_idle acts at idle_at = last_activity + idle_timeout.
    # None: the node's sandbox_idle_timeout, which pauses.
    idle_timeout: float | None = None
    on_idle: Literal["pause", "kill"] = "pause"
    idle_at: float | None = None
    paused_total: float = 0.0  # ms spent paused before the current pause (what a run's cost counts)
    indexes = [
        index("by_sandbox_id", "sandbox_id"),
        index("by_state_idle_at", "state", "idle_at", "last_activity"),
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


class Operator(Table, name="corral_operators"):
    """Who may see every sandbox and runner (corral/app/operator.py): the node's local user, and those granted the role."""

    user_id: str  # a tokenIdentifier
    granted_by: str  # "node": the local user, written at each start; otherwise "admin key"
    granted_at: float
    indexes = [index("by_user", "user_id"), index("by_granted_by", "granted_by")]


# -- runs: a workspace's sandbox runs and the artifacts captured from them (docs/workspaces.md) --
# Times are ms since the epoch; durations ms.

RunStatus = Literal["booting", "running", "succeeded", "failed", "canceled"]
RunKind = Literal["job", "thread", "attempt"]


class RunError(TypedDict):
    code: str
    message: str


class RunEvent(TypedDict):
    status: str
    at: float
    reason: str


class RunCost(TypedDict):
    running_ms: float
    paused_ms: float
    usd: float


class SandboxRun(Table, name="corral_sandbox_runs"):
    """One run of a thread in its own sandbox; its limits are its sandbox's (end_at, idle policy)."""

    workspace_id: Id[Workspace]
    thread_id: Id[Thread]
    kind: RunKind
    status: RunStatus
    template: str
    sandbox_id: str | None
    error: RunError | None
    history: list[RunEvent]
    max_duration_ms: float
    idle_timeout_ms: float
    deadline: float  # when the reapers end it: its boot timeout while booting, its maximum duration while running
    cpu_count: int  # what its cost is billed for
    memory_mb: int
    created_by: str
    started_at: float | None  # when it became running
    ended_at: float | None
    month: str  # "2026-12": the month its cost counts toward (workspace usage)
    cost: RunCost
    indexes = [
        index("by_workspace", "workspace_id"),
        index("by_workspace_status", "workspace_id", "status"),
        index("by_thread", "thread_id"),
        index("by_sandbox_id", "sandbox_id"),
        index("by_status_deadline", "status", "deadline"),
    ]


class WorkspaceUsage(Table, name="corral_workspace_usage"):
    """A workspace's settled run costs for one month (runs add theirs as they end)."""

    workspace_id: Id[Workspace]
    month: str
    runs: int
    running_ms: float
    paused_ms: float
    usd: float
    indexes = [index("by_workspace_month", "workspace_id", "month")]


class RunPolicy(Table, name="corral_run_policy"):
    """Run defaults, reaper timeouts, cost rates and artifact limits: written from Settings by each node at start."""

    limits: dict[str, float]


ArtifactType = Literal["file", "image", "code", "log", "other"]
ReviewState = Literal["pending", "approved", "rejected"]


class Review(TypedDict):
    by: str
    at: float
    comment: str | None
    state: str


class Artifact(Table, name="corral_artifacts"):
    workspace_id: Id[Workspace]
    sandbox_run_id: Id[SandboxRun]
    type: ArtifactType
    title: str
    storage_id: str  # never returned by public functions: bytes reach members only through artifacts:download
    content_type: str
    size: int
    sandbox_path: str | None
    preview_text: str | None
    review_state: ReviewState
    reviews: list[Review]  # every decision, newest last
    created_by: str
    indexes = [
        index("by_run", "sandbox_run_id"),
        index("by_workspace_review", "workspace_id", "review_state"),
    ]


class ArtifactUrlKey(Table, name="corral_artifact_url_keys"):
    """The deployment's key for signing artifact download URLs (lib/artifact_urls.py): one document,
    shared by every node on the database; read by internal functions only."""

    secret: str  # hex


class WorkspaceApiKey(Table, name="corral_workspace_api_keys"):
    """An API key scoped to one workspace: its caller is `workspace|<id>` and sees that workspace's sandboxes only."""

    workspace_id: Id[Workspace]
    name: str
    hash: str  # SHA-256 of the key; the key itself is shown once
    hint: str
    created_by: str
    created: float
    revoked: float | None
    indexes = [index("by_hash", "hash"), index("by_workspace", "workspace_id")]
