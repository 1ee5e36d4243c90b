"""A sandbox's `state.json`: what a restarted provider needs to take it back, or a rebooted host to resume it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..protocol import Limits, SandboxSpec

Phase = Literal["running", "paused"]
STATE_FILE = "state.json"


@dataclass(frozen=True)
class SandboxState:
    spec: SandboxSpec
    slot: int
    host_uid: int
    boot_id: str  # the host boot the processes and mounts belong to
    phase: Phase
    started_at: float
    bwrap_pid: int | None = None
    slirp_pid: int | None = None
    memory_kept: bool = True
    cgroup_version: int = 1

    def evolve(self, **changes: Any) -> SandboxState:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["spec"] = {**asdict(self.spec), "limits": asdict(self.spec.limits)}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxState:
        spec_data = dict(data["spec"])
        spec = SandboxSpec(
            sandbox_id=spec_data["sandbox_id"], template=spec_data["template"],
            envs=dict(spec_data.get("envs", {})), allow_internet=bool(spec_data["allow_internet"]),
            limits=Limits(**spec_data["limits"]))
        fields = {k: v for k, v in data.items() if k in _FIELDS and k != "spec"}
        return cls(spec=spec, **fields)


_FIELDS = {f for f in SandboxState.__dataclass_fields__}


@dataclass
class StateFile:
    path: Path
    cache: SandboxState | None = field(default=None)

    def read(self) -> SandboxState:
        self.cache = SandboxState.from_json(json.loads(self.path.read_text()))
        return self.cache

    def write(self, state: SandboxState, *, durable: bool = False) -> None:
        """Replace atomically; `durable` also fsyncs (a pause must survive a power cut)."""
        tmp = self.path.with_name(STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(state.to_json(), sort_keys=True).encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self.cache = state

