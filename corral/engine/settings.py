"""One settings object: CORRAL_* environment variables, `corral.toml`, or arguments."""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "corral"


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 3210
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None
    functions_dir: Path | None = None
    # Limits and durations (seconds).
    function_timeout: float = 1.0
    action_timeout: float = 600.0
    ping_interval: float = 15.0
    client_timeout: float = 120.0  # a socket that answers no WebSocket ping for this long is dropped
    max_document_bytes: int = 1 << 20
    max_args_bytes: int = 16 << 20
    occ_retries: int = 8
    sqlite_readers: int = 4
    postgres_writers: int = 4
    postgres_readers: int = 4
    commit_log_retention: float = 300.0
    commit_log_cleanup_interval: float = 10.0  # PostgreSQL: how often a node trims the shared commit log to commit_log_retention
    live_query_ring: float = 120.0  # commits kept in memory to bring a re-run live query up to date; an older snapshot re-runs once more
    session_request_retention: float = 3600.0
    maintenance_interval: float = 60.0
    group_commit_max: int = 64
    # File storage (docs/files.md).
    storage_dir: Path | None = None  # blobs; default <data_dir>/storage. Nodes sharing a database share this too
    upload_url_lifetime: float = 3600.0  # seconds an upload URL stays valid
    max_upload_bytes: int = 1 << 30  # largest file accepted by an upload URL or ctx.storage.store (1 GiB)
    storage_stale_upload_age: float = 86400.0  # at start, partial uploads older than this (engine clock) are removed
    # Scheduler and crons (docs/scheduling.md); durations in seconds.
    scheduler_poll_interval: float = 1.0  # longest wait before the dispatcher looks for due jobs it was not told of
    scheduler_concurrency: int = 16  # scheduled jobs in flight per node (claims, and actions running)
    scheduler_retention: float = 7 * 86400.0  # how long finished jobs stay in _scheduled_functions
    scheduler_claim_lease: float = 30.0  # PostgreSQL: how long due jobs a node has claimed stay its own before others may take them
    # HTTP actions (docs/http-actions.md): CORS for /http/, off unless origins are listed.
    http_cors_origins: str = ""  # comma-separated origins allowed to call /http/ from a browser, or "*"
    http_cors_headers: str = "Content-Type, Authorization"  # request headers a browser may send
    http_cors_max_age: float = 600.0  # seconds a browser may cache a preflight answer
    # Auth (docs/auth.md): trusted token issuers, the node's own issuer, durations in seconds.
    auth_providers: list[dict[str, Any]] = field(default_factory=list)  # JSON in CORRAL_AUTH_PROVIDERS
    auth_issuer: str | None = None  # default: the deployment's own, kept in the database (ADR 0013)
    auth_local_subject: str = "local"  # the node's local user: whom `corral up`'s sign-in link and `corral login` sign in
    auth_login_link_ttl: float = 86400.0  # a sign-in link works once, within this long
    auth_session_token_ttl: float = 900.0  # a signed-in browser's (or CLI's) token; refreshed while in use
    auth_session_ttl: float = 7 * 86400.0  # a sign-in lasts this long without signing in again
    auth_token_ttl: float = 3600.0  # lifetime of tokens minted by `corral token mint` without --ttl
    auth_clock_leeway: float = 10.0  # slack when checking a token's exp, nbf and iat
    auth_jwks_cache_ttl: float = 3600.0  # how long an issuer's fetched keys are trusted before a refetch
    auth_jwks_refetch_interval: float = 60.0  # least time between refetches for a token with an unknown kid
    auth_jwks_fetch_timeout: float = 10.0
    # Sandboxes and runners (docs/sandboxes.md); durations in seconds.
    sandbox_provider: str = "local"  # the embedded runner's provider: local (bubblewrap) or host (no isolation: trusted work only)
    sandbox_idle_timeout: float = 600.0  # a running sandbox with no activity for this long is paused (0: never)
    sandbox_retention: float = 30 * 86400.0  # a paused (or lost) sandbox is killed and cleaned after this long
    sandbox_max_timeout: float = 86400.0  # the longest timeout a create, connect or set_timeout may ask for
    sandbox_touch_interval: float = 15.0  # data-plane activity is written at most this often per sandbox
    e2b_watcher_idle: float = 600.0  # an envd CreateWatcher watch not polled for this long is dropped
    e2b_keepalive_floor: float = 1.0  # shortest keepalive interval an envd stream may ask for
    e2b_token_reload_interval: float = 1.0  # shortest time between two reloads of access tokens for signed URLs
    sandbox_cpu_count: int = 2  # limits of a sandbox whose create asks for none (the E2B API never does)
    sandbox_memory_mb: int = 512
    sandbox_disk_mb: int = 1024  # its writable home and /tmp together
    sandbox_pids: int = 512
    sandbox_uid_base: int = 1_000_000  # local provider: sandboxes run as host uids from here (one each, host-wide)
    sandbox_uid_count: int = 100_000
    runner_embedded: bool = True  # run one runner inside the node
    runner_capacity: int = 100  # sandboxes (running and paused) the embedded runner may hold
    runner_labels: str = ""  # comma-separated labels of the embedded runner, for placement
    runner_lease: float = 30.0  # a runner without a heartbeat for this long is lost, and so are its sandboxes
    runner_heartbeat_interval: float = 10.0  # how often a runner renews its lease
    sandbox_metrics_interval: float = 5.0  # how often a runner samples each running sandbox's usage
    sandbox_metrics_kept: int = 360  # samples kept per sandbox (with the interval: 30 minutes of history)
    # Sandbox runs (docs/workspaces.md): limits per kind of run, reapers, cost, artifacts; durations in seconds.
    run_job_max_duration: float = 120.0  # a short job, as in the seed
    run_job_idle_timeout: float = 900.0
    run_thread_max_duration: float = 3600.0  # an agent's thread
    run_thread_idle_timeout: float = 900.0
    run_attempt_max_duration: float = 1800.0  # a coding attempt
    run_attempt_idle_timeout: float = 900.0
    run_boot_timeout: float = 300.0  # a run still booting after this long is failed
    run_cpu_count: int = 2  # the vCPUs and memory a run's sandbox is given and billed for
    run_memory_mb: int = 512
    run_vcpu_usd_per_second: float = 0.000014  # E2B's rate per vCPU per second while running
    run_memory_usd_per_gib_second: float = 0.0000045  # E2B's rate per GiB of memory per second while running
    run_paused_usd_per_gib_second: float = 0.0000001  # storage rate per GiB (memory and disk kept) per second while paused
    artifact_max_bytes: int = 100 << 20  # the largest file artifacts:capture copies out of a sandbox
    artifact_preview_bytes: int = 4096  # text kept as an artifact's preview
    artifact_url_ttl: float = 300.0  # seconds an artifact's signed download URL (artifacts:download_url) stays valid

    @property
    def sqlite_path(self) -> Path:
        return Path(self.data_dir) / "corral.sqlite3"

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
        """Defaults < corral.toml (in the working directory, or $CORRAL_CONFIG) < CORRAL_* env < overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}
        config_file = Path(env.get("CORRAL_CONFIG", "corral.toml"))
        if config_file.is_file():
            try:
                with config_file.open("rb") as fh:
                    data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{config_file}: {exc}") from exc
            for key, value in data.items():
                if key not in known:
                    raise ConfigError(f"{config_file}: unknown setting '{key}'; known: {', '.join(sorted(known))}")
                values[key] = value
        for name in known:
            env_value = env.get("CORRAL_" + name.upper())
            if env_value is not None:
                values[name] = env_value
        if env.get("CORRAL_DATABASE_URL"):
            values["database_url"] = env["CORRAL_DATABASE_URL"]
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        settings = cls()
        for key, value in values.items():
            setattr(settings, key, _check_range(key, _coerce(key, value, getattr(settings, key))))
        return settings


# Settings that make no sense at 0: a loop's period, a pool's size, a limit, a lease. The other
# numbers may be 0 (no idle pause, no throttling, no leeway); none may be negative or not finite.
ABOVE_ZERO = frozenset({
    "function_timeout", "action_timeout", "ping_interval", "client_timeout", "max_document_bytes", "max_args_bytes",
    "sqlite_readers", "postgres_writers", "postgres_readers", "commit_log_cleanup_interval", "maintenance_interval",
    "group_commit_max", "upload_url_lifetime", "max_upload_bytes", "scheduler_poll_interval", "scheduler_concurrency",
    "scheduler_claim_lease", "auth_token_ttl", "auth_login_link_ttl", "auth_session_token_ttl", "auth_session_ttl", "auth_jwks_fetch_timeout", "sandbox_max_timeout", "sandbox_cpu_count",
    "sandbox_memory_mb", "sandbox_disk_mb", "sandbox_pids", "sandbox_uid_count", "runner_lease",
    "runner_heartbeat_interval", "sandbox_metrics_interval", "sandbox_metrics_kept",
    "run_job_max_duration", "run_thread_max_duration", "run_attempt_max_duration", "run_boot_timeout", "run_cpu_count",
    "run_memory_mb", "artifact_max_bytes", "artifact_url_ttl",
})


def _check_range(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if not math.isfinite(value) or value < 0 or (value == 0 and name in ABOVE_ZERO):
        least = "above 0" if name in ABOVE_ZERO else "0 or more"
        raise ConfigError(f"setting '{name}' has the bad value {value!r}: it must be a number {least}")
    return value


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if name in ("data_dir", "functions_dir", "storage_dir"):
            return Path(value).expanduser() if value is not None else None
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list):  # a TOML array, or JSON text from the environment
            parsed = json.loads(value) if isinstance(value, str) else value
            if not isinstance(parsed, list):
                raise ValueError("expected a list (JSON text in an environment variable)")
            return parsed
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting '{name}' has the bad value {value!r}: {exc}") from exc
    return value
