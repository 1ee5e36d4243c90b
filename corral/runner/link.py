"""What the node's fleet needs of a runner: the embedded one in process, a remote one over HTTP."""

from __future__ import annotations

from typing import Literal, Protocol

from ..sandbox.protocol import Metrics, Sandbox, SandboxInfo, SandboxSpec

Desired = Literal["running", "paused", "killed", "lost"]


class RunnerLink(Protocol):
    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Boot a sandbox; the provider's errors (TemplateNotFound, InvalidSpec, CapacityError) pass through."""

    async def converge(self, sandbox_id: str, state: Desired, generation: int) -> SandboxInfo | None:
        """Apply the engine's decision `generation` (idempotent); None when the runner does not hold it."""

    def sandbox(self, sandbox_id: str) -> Sandbox:
        """The sandbox, for data-plane traffic."""

    async def metrics(self, sandbox_id: str, start: float | None, end: float | None) -> list[Metrics]:
        """The sandbox's usage samples from `start` to `end` (unix seconds), oldest first."""


class SandboxUnavailable(Exception):
    """The sandbox's runner is gone or not answering; the sandbox may come back when it does."""


class ProviderUnavailable(SandboxUnavailable):
    """No runner can host sandboxes: the configured provider cannot work here (the message says how to fix it)."""
