"""The engine: runs queries, mutations and actions against a store, with limits."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from ..auth import Caller
from ..clock import Clock
from ..database import DatabaseReader, DatabaseWriter
from ..env import Env, redact
from ..errors import (
    ArgumentValidationError,
    CorralError,
    FunctionError,
    FunctionInterrupted,
    FunctionNotFound,
    FunctionTimeout,
)
from ..files import FileStorage
from ..functions import FunctionSpec, Registry, canonical_path
from ..metrics import FUNCTION_CALLS
from ..scheduling import MutationScheduler
from ..scheduling import install as install_scheduler
from ..settings import Settings
from ..storage import Store, StoreConn
from ..values import ReadSet, ValueError_, WriteSet, check_value, decode, encode
from . import system_functions
from .contexts import ActionCtx, MutationCtx, QueryCtx
from .sandboxes import NoSandboxes, Sandboxes
from .watchdog import Watchdog

log = structlog.get_logger("corral.engine")


@dataclass
class QueryResult:
    value: Any
    ts: int
    read_set: ReadSet


@dataclass
class MutationResult:
    value: Any
    ts: int


class AlreadyApplied(Exception):
    """A re-sent mutation whose (session, request) already committed."""


def as_function_error(exc: BaseException, path: str) -> FunctionError:
    """What the caller is told about an exception raised by a function."""
    if isinstance(exc, FunctionError):
        return exc
    if isinstance(exc, FunctionInterrupted):
        return FunctionTimeout(f"{path} was stopped")
    if isinstance(exc, CorralError):
        return FunctionError(exc.message)
    if isinstance(exc, ValueError_):
        return FunctionError(f"Uncaught error in {path}: {exc}")
    log.warning("function.uncaught", path=path, error_type=type(exc).__name__, error=redact(str(exc)))
    return FunctionError(redact(f"Uncaught {type(exc).__name__} in {path}: {exc}"))


class Engine:
    def __init__(self, settings: Settings, registry: Registry, store: Store, clock: Clock | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.schema = registry.schema
        self.store = store
        self.clock = clock or Clock()
        self.watchdog = Watchdog(self.clock)
        self.env = Env.load(settings.data_dir)  # ctx.env: read once, at start
        install_scheduler(registry)  # the scheduler's system tables
        if "_system" not in registry.modules:
            registry.add_module("_system", system_functions, "corral/engine/runtime/system_functions.py")
        self.files = FileStorage(settings, store, self.clock)
        self.sandboxes: Sandboxes = NoSandboxes()  # ctx.sandboxes in actions: the node provides it
        self._readers = ThreadPoolExecutor(max(2, settings.sqlite_readers), thread_name_prefix="corral-reader")

    def start(self) -> None:
        self.store.open(self.schema)
        self.files.start()
        self.watchdog.start()

    def stop(self) -> None:
        self.watchdog.stop()
        self._readers.shutdown(wait=True, cancel_futures=True)
        self.store.close()

    # -- resolution and validation
    def resolve(self, ref: Any, kind: str, caller: Caller, internal_ok: bool = False) -> FunctionSpec:
        if isinstance(ref, FunctionSpec):
            spec: FunctionSpec | None = ref
            path = ref.path
        else:
            if not isinstance(ref, str) or not ref:
                raise FunctionError(f"a function is named by a 'module:function' path, not {ref!r}")
            path = canonical_path(ref)
            spec = self.registry.get(path)
        if spec is None or spec.kind != kind or not (spec.public or internal_ok or caller.is_admin):
            raise FunctionNotFound(path, kind)
        refusal = caller.refusal(path, spec.for_runners)
        if refusal is not None:
            raise FunctionError(refusal)
        return spec

    def prepare_args(self, spec: FunctionSpec, args: Any) -> dict[str, Any]:
        try:
            check_value(args, what="arguments")
        except ValueError_ as exc:
            raise ArgumentValidationError(f"ArgumentValidationError: {exc}") from None
        return spec.validate_args(args)

    # -- queries
    def execute_query(self, conn: StoreConn, spec: FunctionSpec, args: dict[str, Any], caller: Caller) -> tuple[Any, ReadSet]:
        """Run a query on a snapshot connection in the calling (worker) thread."""
        read_set = ReadSet()
        db = DatabaseReader(conn, self.schema, read_set)
        ctx = QueryCtx(db, caller, self.clock.now_ms(), self.files)
        ctx.env = self.env
        try:
            with self.watchdog.guard(self.settings.function_timeout, conn, f"query {spec.path}"):
                value = spec.fn(ctx, **args)
            value = spec.validate_return(value)
            check_value(value, what=f"the value returned by {spec.path}")
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            error = as_function_error(exc, spec.path)
            error.read_set = read_set  # what it read before failing: a subscription re-runs when that changes
            raise error from None
        finally:
            db.finish_read_set()
        return value, read_set

    async def run_query(self, ref: Any, args: Any, caller: Caller, *, internal_ok: bool = False) -> QueryResult:
        spec = self.resolve(ref, "query", caller, internal_ok)
        valid = self.prepare_args(spec, args)

        def work() -> QueryResult:
            with self.store.snapshot() as (conn, ts):
                value, read_set = self.execute_query(conn, spec, valid, caller)
            return QueryResult(value, ts, read_set)

        return await asyncio.get_running_loop().run_in_executor(self._readers, work)

    async def call_query(self, ref: Any, args: Any, caller: Caller, *, internal_ok: bool = False) -> Any:
        return (await self.run_query(ref, args, caller, internal_ok=internal_ok)).value

    def in_snapshot(self, work: Any) -> Any:
        """Run `work(conn, ts)` in a reader thread on one snapshot (used by the sync hub)."""

        def run() -> Any:
            with self.store.snapshot() as (conn, ts):
                return work(conn, ts)

        return asyncio.get_running_loop().run_in_executor(self._readers, run)

    # -- mutations
    def _mutation_job(self, spec: FunctionSpec, args: dict[str, Any], caller: Caller,
                      session: tuple[str, int] | None) -> Any:
        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            db = DatabaseWriter(conn, self.schema, self.clock.now_ms(), self.settings.max_document_bytes)
            ctx = MutationCtx(db, caller, db._now_ms, self.files)
            ctx.env = self.env
            ctx.scheduler = MutationScheduler(self, db, db._now_ms)
            try:
                with self.watchdog.guard(self.settings.function_timeout, conn, f"mutation {spec.path}", writes=True):
                    value = spec.fn(ctx, **args)
                value = spec.validate_return(value)
                check_value(value, what=f"the value returned by {spec.path}")
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, (KeyboardInterrupt, SystemExit, *self.store.retryable_errors)):
                    raise  # the store retries a lost serialization race from the start
                raise as_function_error(exc, spec.path) from None
            if session is not None:
                # The (session, request) record is claimed at the end, with no read beforehand: a
                # lookup would make every concurrent mutation a serialization conflict on PostgreSQL.
                # SQLite knows the commit ts up front; PostgreSQL assigns it at COMMIT, later than now.
                recorded_ts = getattr(conn, "current_ts", 0) or self.clock.now_ns()
                if not conn.claim_session_request(session[0], session[1], orjson.dumps(encode(value)).decode(), recorded_ts):
                    raise AlreadyApplied()  # rolls this run back; the first run's result is returned
            return value, db.writes

        return job

    async def run_mutation(self, ref: Any, args: Any, caller: Caller, *, internal_ok: bool = False,
                           session: tuple[str, int] | None = None) -> MutationResult:
        spec = self.resolve(ref, "mutation", caller, internal_ok)
        valid = self.prepare_args(spec, args)
        outcome = await self.store.run(self._mutation_job(spec, valid, caller, session))
        if isinstance(outcome.error, AlreadyApplied) and session is not None:
            return await self._earlier_result(*session)
        if outcome.error is not None:
            raise as_function_error(outcome.error, spec.path)
        return MutationResult(outcome.value, outcome.ts)

    async def _earlier_result(self, session_id: str, request_id: int) -> MutationResult:
        """The result a re-sent mutation got the first time."""

        def read(conn: StoreConn, _ts: int) -> tuple[str, int] | None:
            return conn.session_result(session_id, request_id)

        seen = await self.in_snapshot(read)
        if seen is None:
            raise FunctionError("this mutation was already applied, but its result has been forgotten")
        return MutationResult(decode(orjson.loads(seen[0])), seen[1])

    async def call_mutation(self, ref: Any, args: Any, caller: Caller, *, internal_ok: bool = False) -> Any:
        return (await self.run_mutation(ref, args, caller, internal_ok=internal_ok)).value

    # -- housekeeping
    async def forget_old_session_requests(self) -> int:
        """Drop mutation de-duplication records older than the retention: a client that has been
        away that long re-sends nothing."""
        horizon = self.clock.now_ns() - int(self.settings.session_request_retention * 1e9)

        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            return conn.forget_session_requests(horizon), WriteSet()

        outcome = await self.store.run(job)
        if outcome.error is not None:
            raise outcome.error
        return int(outcome.value)

    # -- actions
    async def call_action(self, ref: Any, args: Any, caller: Caller, *, internal_ok: bool = False) -> Any:
        spec = self.resolve(ref, "action", caller, internal_ok)
        valid = self.prepare_args(spec, args)
        ctx = ActionCtx(self, caller)
        try:
            value = await self.clock.within(spec.fn(ctx, **valid), self.settings.action_timeout)  # the engine's time
            value = spec.validate_return(value)
            check_value(value, what=f"the value returned by {spec.path}")
        except TimeoutError:
            raise FunctionTimeout(f"action {spec.path} ran longer than its limit of {self.settings.action_timeout:g} s") from None
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001
            raise as_function_error(exc, spec.path) from None
        return value

    async def call(self, kind: str, ref: Any, args: Any, caller: Caller) -> tuple[Any, int | None]:
        """Run a function of the given kind for an outside caller; returns (value, commit ts)."""
        try:
            result = await self._call(kind, ref, args, caller)
        except FunctionError:
            FUNCTION_CALLS.labels(kind, "error").inc()
            raise
        FUNCTION_CALLS.labels(kind, "success").inc()
        return result

    async def _call(self, kind: str, ref: Any, args: Any, caller: Caller) -> tuple[Any, int | None]:
        if kind == "query":
            result = await self.run_query(ref, args, caller)
            return result.value, result.ts
        if kind == "mutation":
            mresult = await self.run_mutation(ref, args, caller)
            return mresult.value, mresult.ts
        return await self.call_action(ref, args, caller), None
