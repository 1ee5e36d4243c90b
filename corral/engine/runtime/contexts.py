"""The `ctx` object each function kind receives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..auth import Auth, Caller
from ..database import DatabaseReader, DatabaseWriter
from ..env import Env
from ..files import ActionStorage, FileStorage, StorageReader, StorageWriter
from ..scheduling import ActionScheduler, MutationScheduler
from .sandboxes import Sandboxes

if TYPE_CHECKING:
    from .engine import Engine


class QueryCtx:
    """Read-only: `ctx.db`, `ctx.auth`, `ctx.storage` (file URLs and metadata), `ctx.now` (ms since
    the epoch, fixed when the function starts)."""

    env: Mapping[str, str] = Env()  # the node's variables and secrets (docs/configuration.md); set by the engine

    def __init__(self, db: DatabaseReader, caller: Caller, now: float, files: FileStorage | None = None) -> None:
        self.db = db
        self.auth = Auth(caller)
        self.now = now
        self.storage = StorageReader(files, db)


class MutationCtx(QueryCtx):
    """`ctx.db` reads and writes, all in one serializable transaction."""

    db: DatabaseWriter
    storage: StorageWriter
    scheduler: MutationScheduler  # set by the engine: run_after, run_at, cancel (docs/scheduling.md)

    def __init__(self, db: DatabaseWriter, caller: Caller, now: float, files: FileStorage | None = None) -> None:
        super().__init__(db, caller, now, files)
        self.storage = StorageWriter(files, db)


FunctionRef = Any  # a FunctionSpec or a "module:function" path


class ActionCtx:
    """I/O allowed; the database only through `run_query`, `run_mutation`, `run_action`."""

    def __init__(self, engine: Engine, caller: Caller) -> None:
        self._engine = engine
        self._caller = caller
        self.auth = Auth(caller)
        self.storage = ActionStorage(engine)
        self.env: Mapping[str, str] = engine.env
        self.scheduler = ActionScheduler(engine)

    @property
    def sandboxes(self) -> Sandboxes:
        """Create, drive and kill sandboxes: provided by the node (docs/adr/0012-sandboxes-capability.md)."""
        return self._engine.sandboxes

    @property
    def now(self) -> float:
        return self._engine.clock.now_ms()

    def _call(self, kind: str, ref: FunctionRef, args: dict[str, Any] | None) -> Awaitable[Any]:
        runner: Callable[..., Awaitable[Any]] = getattr(self._engine, f"call_{kind}")
        return runner(ref, args or {}, self._caller, internal_ok=True)

    async def run_query(self, ref: FunctionRef, args: dict[str, Any] | None = None) -> Any:
        return await self._call("query", ref, args)

    async def run_mutation(self, ref: FunctionRef, args: dict[str, Any] | None = None) -> Any:
        return await self._call("mutation", ref, args)

    async def run_action(self, ref: FunctionRef, args: dict[str, Any] | None = None) -> Any:
        return await self._call("action", ref, args)
