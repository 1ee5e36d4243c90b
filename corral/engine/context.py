"""The `ctx` object each function kind receives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .auth import Auth, Caller
from .database import DatabaseReader, DatabaseWriter

if TYPE_CHECKING:
    from .runtime import Engine


class QueryCtx:
    """Read-only: `ctx.db`, `ctx.auth`, `ctx.now` (ms since the epoch, fixed when the function starts)."""

    def __init__(self, db: DatabaseReader, caller: Caller, now: float) -> None:
        self.db = db
        self.auth = Auth(caller)
        self.now = now


class MutationCtx(QueryCtx):
    """`ctx.db` reads and writes, all in one serializable transaction."""

    db: DatabaseWriter

    def __init__(self, db: DatabaseWriter, caller: Caller, now: float) -> None:
        super().__init__(db, caller, now)


FunctionRef = Any  # a FunctionSpec or a "module:function" path


class ActionCtx:
    """I/O allowed; the database only through `run_query`, `run_mutation`, `run_action`."""

    def __init__(self, engine: Engine, caller: Caller) -> None:
        self._engine = engine
        self._caller = caller
        self.auth = Auth(caller)

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
