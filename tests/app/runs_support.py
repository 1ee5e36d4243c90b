"""A served node with real sandboxes (the local provider, bubblewrap) and a workspace with a thread,
for the tests of sandbox runs, artifacts and reapers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.engine.auth import Caller
from corral.engine.clock import Clock
from corral.engine.errors import FunctionError

from ..conftest import require_tool
from ..runner.harness import fleet_node, on_loop
from .tenancy_support import Tenancy, call

PAGE = {"numItems": 50, "cursor": None}


class Runs(Tenancy):
    """Tenancy (owner, admin, member, outsider) on a served node, with a thread in each workspace."""

    def __init__(self, served: Any) -> None:
        super().__init__(served.node)
        self.served = served
        self.clock: Clock = served.clock
        self.thread = call(self.node, "mutation", "threads:create", {"workspace_id": self.workspace, "title": "t"}, self.owner)
        self.other_thread = call(self.node, "mutation", "threads:create", {"workspace_id": self.other}, self.outsider)

    def act(self, path: str, args: dict[str, Any], caller: Caller) -> Any:
        """Call an action on the node's event loop, where its fleet (ctx.sandboxes) lives."""
        value, _ts = on_loop(self.served, self.node.engine.call("action", f"corral/{path}", args, caller))
        return value

    def act_refusal(self, path: str, args: dict[str, Any], caller: Caller) -> Any:
        try:
            self.act(path, args, caller)
        except FunctionError as exc:
            return getattr(exc, "data", None) or str(exc)
        raise AssertionError(f"{path} {args} succeeded; it should have been refused")

    def start(self, caller: Caller | None = None, **args: Any) -> str:
        return str(self.act("sandbox_runs:start", {"workspace_id": self.workspace, "thread_id": self.thread, **args},
                            caller or self.member))

    def run(self, run_id: str, caller: Caller | None = None) -> Any:
        return call(self.node, "query", "sandbox_runs:get", {"sandbox_run_id": run_id}, caller or self.member)

    def sandbox(self, sandbox_id: str) -> Any:
        return self.served.call("query", "corral/sandboxes:lookup", {"sandbox_id": sandbox_id})

    def runs(self, caller: Caller | None = None, **args: Any) -> list[dict[str, Any]]:
        page = call(self.node, "query", "sandbox_runs:list_by_workspace",
                    {"workspace_id": self.workspace, "paginationOpts": PAGE, **args}, caller or self.member)
        return list(page["page"])

    def tick(self, path: str) -> Any:
        """Run one of Corral's crons now (the clock the test owns decides what is due)."""
        engine = self.node.engine
        if path == "reapers:tick":
            return on_loop(self.served, engine.call_action(f"corral/{path}", {}, Caller.admin(), internal_ok=True))
        return on_loop(self.served, engine.call_mutation(f"corral/{path}", {}, Caller.admin(), internal_ok=True))


def require_local_provider() -> None:
    require_tool("bubblewrap", shutil.which("bwrap") is not None, "apt-get install bubblewrap")
    require_tool("root", os.geteuid() == 0, "the local provider mounts disks and writes cgroups: run as root")


@pytest.fixture(name="runs")
def runs_fixture(short_dir: Path, database_url: str | None) -> Iterator[Runs]:
    """Import `runs_fixture` into a test module to give its tests `runs`."""
    require_local_provider()
    with fleet_node(short_dir / "data", database_url=database_url, sandbox_provider="local", clock=Clock()) as served:
        yield Runs(served)
