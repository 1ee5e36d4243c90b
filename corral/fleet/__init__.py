"""The node's side of the sandboxes: lifecycle in the engine, placement on runners, routing of
data-plane calls to the runner that hosts a sandbox (embedded, or remote over the runner wire)."""

from ..runner.link import ProviderUnavailable, SandboxUnavailable
from .app_sandboxes import FleetSandboxes
from .node_fleet import Fleet
from .sandbox_fleet import (
    CreateRequest,
    InvalidAccessToken,
    ListQuery,
    Page,
    RecordState,
    SandboxFleet,
    SandboxRecord,
)

__all__ = [
    "CreateRequest", "Fleet", "FleetSandboxes", "InvalidAccessToken", "ListQuery", "Page", "ProviderUnavailable",
    "RecordState", "SandboxFleet", "SandboxRecord", "SandboxUnavailable",
]
