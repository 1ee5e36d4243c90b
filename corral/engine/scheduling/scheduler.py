"""The scheduler: functions that run later, and the dispatcher that runs them.

`ctx.scheduler.run_after(seconds, fn, args)` / `run_at(when, fn, args)` / `cancel(id)`.

A job is two system documents, written in the calling mutation's own transaction (so a mutation
that fails schedules nothing):

- `_scheduled_functions`: what users read (name, args, scheduledTime, state, completedTime);
- `_scheduler_queue`: the dispatcher's work list, indexed by (state, due).

Each node runs one dispatcher. It claims the earliest due queue entry inside a write transaction
(PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED`, so two nodes never claim the same entry):

- a mutation job runs in that same transaction, with the claim and the job's new state: it
  commits whole (exactly once) or leaves the job queued for another try;
- an action job is marked in progress and committed before the action starts (at most once);
  a second transaction records how it ended. An action whose node stopped mid-run is marked
  failed, never run again.

Scheduled functions run with no identity (`Caller(key="scheduler")`), and may be internal.
The dispatcher wakes when a commit (of any node) queues a job, when the engine's clock is
advanced, at the next due time, and at least every `scheduler_poll_interval` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

import orjson
import structlog

from ..auth import Caller
from ..database import DatabaseReader, DatabaseWriter, IndexRange
from ..env import redact
from ..errors import CorralError, FunctionError, LimitExceeded
from ..functions import FunctionSpec, Registry, canonical_path
from ..schema import Table, index
from ..storage import StoreConn
from ..values import WriteSet, decode

if TYPE_CHECKING:
    from ..runtime import Engine
    from .crons import CronRunner

log = structlog.get_logger("corral.scheduler")

SCHEDULED = "_scheduled_functions"
QUEUE = "_scheduler_queue"
RUNNING = "_scheduler_running"
ADDED = "_added"  # the write-set "index" of job additions, see insert_job
CLAIMS = "_scheduler_claims"  # PostgreSQL only: plain SQL, see Scheduler._claim_batch
CRONS = "_cron_jobs"
SCHEDULER_CALLER = Caller(key="scheduler")  # no identity: auth does not carry into scheduled functions
MAX_JOBS_PER_CALL = 1000  # jobs one mutation or action may schedule (Convex's limit)
MAX_DELAY_SECONDS = 5 * 366 * 86400.0
MAX_INTERNAL_RETRIES = 3  # a job whose claim keeps failing for reasons of Corral's own is marked failed
FINAL_STATES = ("success", "failed", "canceled")
JobKind = Literal["pending", "inProgress", "success", "failed", "canceled"]


# The functional form: its NotRequired is evaluated now (this module postpones annotations).
JobState = TypedDict("JobState", {"kind": JobKind, "error": NotRequired[str]})  # noqa: UP013


class ScheduledFunction(Table, name=SCHEDULED):
    """One scheduled run of a function, as users see it (Convex's `_scheduled_functions`)."""

    name: str  # "module:function"
    args: dict[str, Any]
    scheduledTime: float  # ms since the epoch
    completedTime: NotRequired[float]  # type: ignore[valid-type]  # mypy: NotRequired outside a TypedDict
    state: JobState


class QueuedJob(Table, name=QUEUE):
    """The dispatcher's entry for a pending job."""

    job: str  # the _scheduled_functions id
    kind: Literal["mutation", "action"]
    due: float  # ms since the epoch
    indexes = [index("by_due", "due"), index("by_job", "job")]


class RunningAction(Table, name=RUNNING):
    """An action job that a node has started and not yet settled."""

    job: str
    runner: str  # the node running it
    indexes = [index("by_job", "job")]


class CronJob(Table, name=CRONS):
    """One declared cron and when it runs next; the shared record that makes a tick run once."""

    name: str
    schedule: str
    function: str
    args: dict[str, Any]
    nextRun: float  # ms since the epoch
    lastRun: NotRequired[float]  # type: ignore[valid-type]
    lastJob: NotRequired[str]  # type: ignore[valid-type]
    indexes = [index("by_name", "name")]


SYSTEM_TABLES: tuple[type[Table], ...] = (ScheduledFunction, QueuedJob, RunningAction, CronJob)


def install(registry: Registry) -> None:
    """Add the scheduler's system tables to a registry."""
    for cls in SYSTEM_TABLES:
        if cls.__table_name__ not in registry.schema.tables:
            registry.schema.add_table(cls, module="corral/engine/scheduling/scheduler.py", system=True)


@contextlib.contextmanager
def system_writes(db: DatabaseWriter) -> Iterator[DatabaseWriter]:
    """Let Corral itself write system tables through a function's `ctx.db`."""
    before = db.system_writes
    db.system_writes = True
    try:
        yield db
    finally:
        db.system_writes = before


# -- validating what a function asks to schedule ----------------------------------------

def resolve_target(registry: Registry, function: Any, what: str = "schedule") -> FunctionSpec:
    """The mutation or action `function` (the function itself or its "module:function" path) names."""
    if isinstance(function, FunctionSpec):
        if not function.path:
            raise FunctionError(f"cannot {what} {function.name}: it is not served (define it in a module of the functions folder, not in crons.py or http.py)")
        path = function.path
    elif isinstance(function, str) and function:
        path = canonical_path(function)
    else:
        raise FunctionError(f"cannot {what} {function!r}: name a function by its 'module:function' path or pass the function itself")
    spec = registry.get(path)
    if spec is None:
        raise FunctionError(f"cannot {what} '{path}': there is no such function")
    if spec.kind == "query":
        raise FunctionError(f"cannot {what} the query '{path}': only mutations and actions can be scheduled")
    return spec


def delay_seconds(seconds: Any) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise FunctionError(f"run_after takes a delay in seconds (a number), not {type(seconds).__name__} {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise FunctionError(f"run_after takes a delay of 0 seconds or more, not {seconds!r}")
    if seconds > MAX_DELAY_SECONDS:
        raise FunctionError(f"run_after delays at most {MAX_DELAY_SECONDS / 86400:g} days, not {seconds / 86400:.1f}")
    return float(seconds)


def timestamp_ms(when: Any) -> float:
    """`run_at`'s time: an aware datetime, or seconds since the epoch; as ms since the epoch."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise FunctionError("run_at needs a timezone-aware datetime (datetime.now(UTC), or .replace(tzinfo=UTC)), not a naive one")
        return when.timestamp() * 1000.0
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise FunctionError(f"run_at takes a datetime or seconds since the epoch, not {type(when).__name__} {when!r}")
    if not math.isfinite(when):
        raise FunctionError(f"run_at takes a finite time, not {when!r}")
    if when > 1e11:
        raise FunctionError(f"run_at takes seconds since the epoch; {when!r} looks like milliseconds (ctx.now is in ms: use ctx.now / 1000)")
    if when < 0:
        raise FunctionError(f"run_at takes a time after 1970, not {when!r}")
    return float(when) * 1000.0


def insert_job(db: DatabaseWriter, spec: FunctionSpec, args: dict[str, Any], when_ms: float) -> str:
    """Write a pending job (its document and its queue entry) through `db`; returns the job's id."""
    with system_writes(db):
        try:
            job_id: str = db.insert(SCHEDULED, {"name": spec.path, "args": args, "scheduledTime": float(when_ms),
                                                 "state": {"kind": "pending"}})
        except LimitExceeded as exc:
            raise LimitExceeded(f"the arguments of the scheduled call to {spec.path} are too large: {exc.message}") from None
        db.insert(QUEUE, {"job": job_id, "kind": spec.kind, "due": float(when_ms)})
    # A key no index has: tells every node's dispatcher, through the commit, that a job was added
    # and when it is due (deleting a finished job's entry must not wake them all).
    db.writes.add(QUEUE, ADDED, struct.pack(">d", when_ms))
    return job_id


def cancel_job(db: DatabaseWriter, job_id: Any, now_ms: float) -> None:
    """Cancel a job that has not finished: a pending one never runs; a running action is marked
    canceled and finishes anyway. A finished job is left as it is."""
    if not isinstance(job_id, str) or not db.normalize_id(SCHEDULED, job_id):
        raise FunctionError(f"cannot cancel {job_id!r}: it is not the id of a scheduled function")
    job = db.get(job_id)
    if job is None:
        raise FunctionError(f"cannot cancel {job_id}: there is no such scheduled function (finished jobs are forgotten after a while)")
    kind = job["state"]["kind"]
    if kind in FINAL_STATES:
        return
    with system_writes(db):
        if kind == "pending":
            entry = db.query(QUEUE).with_index("by_job", lambda q: q.eq("job", job_id)).first()
            if entry is not None:
                db.delete(entry["_id"])
        db.patch(job_id, {"state": {"kind": "canceled"}, "completedTime": now_ms})


# -- ctx.scheduler ---------------------------------------------------------------------

class MutationScheduler:
    """`ctx.scheduler` in a mutation: jobs are written in the mutation's transaction."""

    def __init__(self, engine: Engine, db: DatabaseWriter, now_ms: float) -> None:
        self._engine = engine
        self._db = db
        self._now = now_ms
        self._count = 0

    def run_after(self, seconds: float, function: Any, args: dict[str, Any] | None = None) -> str:
        """Run `function(**args)` `seconds` from now; returns the job's id (in `_scheduled_functions`)."""
        return self._schedule(self._now + delay_seconds(seconds) * 1000.0, function, args)

    def run_at(self, when: datetime | float, function: Any, args: dict[str, Any] | None = None) -> str:
        """Run `function(**args)` at `when` (an aware datetime, or seconds since the epoch); a past time runs now."""
        return self._schedule(timestamp_ms(when), function, args)

    def cancel(self, job_id: str) -> None:
        """Cancel a job that has not started; nothing happens to one that has finished."""
        cancel_job(self._db, job_id, self._now)

    def _schedule(self, when_ms: float, function: Any, args: dict[str, Any] | None) -> str:
        spec, valid = validate_call(self._engine, function, args)
        self._count += 1
        if self._count > MAX_JOBS_PER_CALL:
            raise LimitExceeded(f"one function may schedule at most {MAX_JOBS_PER_CALL} jobs; schedule a job that schedules the rest")
        return insert_job(self._db, spec, valid, when_ms)


def validate_call(engine: Engine, function: Any, args: dict[str, Any] | None) -> tuple[FunctionSpec, dict[str, Any]]:
    """The target and its arguments, checked now so that bad arguments fail the caller, not a later job."""
    spec = resolve_target(engine.registry, function)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise FunctionError(f"the arguments of a scheduled call to {spec.path} are an object (a dict), not {type(args).__name__}")
    engine.prepare_args(spec, args)
    return spec, dict(args)


class ActionScheduler:
    """`ctx.scheduler` in an action: each call is its own small transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._count = 0

    async def run_after(self, seconds: float, function: Any, args: dict[str, Any] | None = None) -> str:
        return await self._schedule(self._engine.clock.now_ms() + delay_seconds(seconds) * 1000.0, function, args)

    async def run_at(self, when: datetime | float, function: Any, args: dict[str, Any] | None = None) -> str:
        return await self._schedule(timestamp_ms(when), function, args)

    async def cancel(self, job_id: str) -> None:
        engine = self._engine
        await _write(engine, lambda db: cancel_job(db, job_id, engine.clock.now_ms()))

    async def _schedule(self, when_ms: float, function: Any, args: dict[str, Any] | None) -> str:
        spec, valid = validate_call(self._engine, function, args)
        self._count += 1
        if self._count > MAX_JOBS_PER_CALL:
            raise LimitExceeded(f"one function may schedule at most {MAX_JOBS_PER_CALL} jobs; schedule a job that schedules the rest")
        job_id: str = await _write(self._engine, lambda db: insert_job(db, spec, valid, when_ms))
        return job_id


async def _write(engine: Engine, work: Callable[[DatabaseWriter], Any]) -> Any:
    """Run `work(db)` in a transaction of its own, with system writes allowed."""
    def job(conn: StoreConn) -> tuple[Any, WriteSet]:
        db = system_writer(engine, conn)
        return work(db), db.writes

    outcome = await engine.store.run(job)
    if outcome.error is not None:
        if isinstance(outcome.error, FunctionError):
            raise outcome.error
        if isinstance(outcome.error, CorralError):
            raise FunctionError(outcome.error.message)
        raise FunctionError(f"the scheduler could not write: {outcome.error}")
    return outcome.value


def system_writer(engine: Engine, conn: StoreConn) -> DatabaseWriter:
    db = DatabaseWriter(conn, engine.schema, engine.clock.now_ms(), engine.settings.max_document_bytes)
    db.system_writes = True
    return db


# -- the dispatcher ----------------------------------------------------------------------

@dataclass
class Claimed:
    job_id: str
    kind: str  # "mutation" (it ran), "action" (to run now), "skipped" (already done elsewhere)
    name: str = ""
    args: dict[str, Any] | None = None


# PostgreSQL: a node first claims a batch of due queue entries for itself, in a short READ COMMITTED
# transaction (SKIP LOCKED, and a lease, so two nodes take different entries), then runs each in a
# SERIALIZABLE transaction that reads its entry by id and deletes it. Claiming outside the
# serializable transactions keeps them from reading one another's entries, which would make
# PostgreSQL abort most of them as serialization failures; deleting the entry inside keeps each
# job exactly-once even if a lease ran out while its first claimant was still at work.
CLAIMS_DDL = f"CREATE TABLE IF NOT EXISTS {CLAIMS} (entry TEXT PRIMARY KEY, runner TEXT NOT NULL, until DOUBLE PRECISION NOT NULL)"
CLAIM_SQL = f"""
INSERT INTO {CLAIMS} (entry, runner, until)
SELECT q.id, %(runner)s, %(until)s FROM t_{QUEUE} q
WHERE q.k_by_due >= %(lo)s AND q.k_by_due < %(hi)s
  AND NOT EXISTS (SELECT 1 FROM {CLAIMS} c WHERE c.entry = q.id AND c.until > %(now)s)
ORDER BY q.k_by_due LIMIT %(limit)s
FOR UPDATE OF q SKIP LOCKED
ON CONFLICT (entry) DO UPDATE SET runner = EXCLUDED.runner, until = EXCLUDED.until WHERE {CLAIMS}.until <= %(now)s
RETURNING entry
"""
RUNNER_LOCK_CLASS = 0x636F7275  # "coru": the class of the per-node runner locks


class Scheduler:
    """One node's dispatcher: runs due jobs, ticks crons, forgets old jobs."""

    def __init__(self, engine: Engine, crons: CronRunner | None = None) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.clock = engine.clock
        self.crons = crons
        self.node_id = uuid.uuid4().hex
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._poked = False
        self._task: asyncio.Task[None] | None = None
        self._actions: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._failures: dict[str, int] = {}
        self._last_error = ""
        self._next_maintenance = 0.0
        self._wake_at = math.inf  # ms: when the dispatcher, asleep, looks again (inf: it is awake)
        self._unsubscribe_clock: Callable[[], None] | None = None
        self._is_postgres = engine.store.dialect_name == "postgresql"
        self._liveness: Any = None  # PostgreSQL: the connection holding this node's runner lock
        self._claims: Any = None  # PostgreSQL: the connection claiming queue entries
        self._candidates: collections.deque[str] = collections.deque()
        self._finished: list[str] = []
        self._claim_lock: asyncio.Lock | None = None
        install(engine.registry)
        engine.store.add_listener(self._on_commit)

    # -- lifecycle
    def prepare(self) -> None:
        """Once the store is open: settle actions a stopped node left running, declare crons."""
        if self._is_postgres:
            self._prepare_postgres()
        else:
            # One node per SQLite file: an action still marked running was cut short by a stop.
            self._run_sync(self._fail_orphans_job(lambda runner: True))
        if self.crons is not None:
            self.crons.declare(self)

    def start(self) -> None:
        """Start dispatching, on the running event loop (the node's lifespan)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, self.settings.scheduler_concurrency))
        self._claim_lock = asyncio.Lock()
        self._unsubscribe_clock = self.clock.on_advance(self.poke)
        self._task = self._loop.create_task(self._run(), name="corral-scheduler")

    async def stop(self) -> None:
        if self._unsubscribe_clock is not None:
            self._unsubscribe_clock()
            self._unsubscribe_clock = None
        tasks = [t for t in (self._task, *self._actions) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._task = None
        self._loop = None
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Release this node's PostgreSQL connections, giving back the jobs it claimed and did not
        take (so others need not wait out the lease). Idempotent; the node calls it when it stops."""
        if self._claims is not None:
            with contextlib.suppress(Exception):
                self._claims.execute(f"DELETE FROM {CLAIMS} WHERE runner = %s", (self.node_id,))
        for conn in (self._claims, self._liveness):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._claims = self._liveness = None

    def poke(self) -> None:
        """Wake the dispatcher (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or self._poked:
            return
        self._poked = True

        def wake_up() -> None:
            self._poked = False
            wake.set()

        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(wake_up)

    def _on_commit(self, _ts: int, writes: WriteSet) -> None:
        keys = writes.keys
        if CRONS in keys:
            self.poke()
            return
        added = keys.get(QUEUE, {}).get(ADDED)
        if added and any(struct.unpack(">d", key)[0] <= self._wake_at for key in added):
            self.poke()  # a job due before the dispatcher planned to look again

    # -- the loop
    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            wait = self.settings.scheduler_poll_interval
            try:
                if await self._drain():
                    if self.crons is not None:
                        await self.crons.tick_due(self)
                    await self._maintain_if_due()
                    wait = min(wait, await self._time_to_next())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the dispatcher must outlive any one failure
                self._warn("scheduler.round_failed", None, exc)
            if wait > 0:
                self._wake_at = self.clock.now_ms() + wait * 1000.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                self._wake_at = math.inf

    def _warn(self, event: str, job_id: str | None, exc: BaseException) -> str:
        error = redact(f"{type(exc).__name__}: {exc}")
        if error != self._last_error or job_id is not None:  # one line per distinct failure, not per worker
            log.warning(event, job=job_id, error=error)
        self._last_error = error
        return error

    async def _drain(self) -> bool:
        """Claim and run due jobs until none is due (or every slot runs an action); False after an error."""
        assert self._slots is not None
        slots = self._slots
        ok = True

        async def worker() -> None:
            nonlocal ok
            while ok and not slots.locked():
                await slots.acquire()
                try:
                    claimed = await self._claim()
                except BaseException:
                    slots.release()
                    raise
                if claimed is None or claimed is False:
                    slots.release()
                    ok = ok and claimed is None
                    return
                if claimed.kind == "action":
                    task = asyncio.get_running_loop().create_task(self._run_action(claimed))
                    self._actions.add(task)
                    task.add_done_callback(self._actions.discard)
                else:
                    slots.release()

        await asyncio.gather(*(worker() for _ in range(max(1, self.settings.scheduler_concurrency))))
        if ok:
            self._last_error = ""
        return ok

    async def _claim(self) -> Claimed | None | Literal[False]:
        """Take the earliest due job (running it if it is a mutation); None when none is due."""
        entry_id: str | None = None
        if self._is_postgres:
            entry_id = await self._next_candidate()
            if entry_id is None:
                return None
        seen: dict[str, str] = {}
        try:
            outcome = await self.engine.store.run(self._take_job(seen, entry_id))
        finally:
            if entry_id is not None:
                self._finished.append(entry_id)  # its claim is dropped with the next batch
        if outcome.error is None:
            claimed: Claimed | None = outcome.value
            if claimed is not None:
                self._failures.pop(claimed.job_id, None)
            return claimed
        job_id = seen.get("job")
        error = self._warn("scheduler.claim_failed", job_id, outcome.error)
        if job_id is not None:
            failures = self._failures.get(job_id, 0) + 1
            self._failures[job_id] = failures
            if failures >= MAX_INTERNAL_RETRIES:
                self._failures.pop(job_id, None)
                await self._settle(job_id, {"kind": "failed", "error": f"Corral could not run this job: {error}"})
        return False

    def _take_job(self, seen: dict[str, str], entry_id: str | None) -> Callable[[StoreConn], tuple[Any, WriteSet]]:
        """A write job taking one queue entry: `entry_id`, or (SQLite) the earliest due one."""
        engine = self.engine

        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            p = conn.dialect.param
            if entry_id is None:
                lo, hi = _due_range(self.clock.now_ms())
                row = conn.execute(f"SELECT id, ct, doc FROM t_{QUEUE} WHERE k_by_due >= {p} AND k_by_due < {p}"
                                   " ORDER BY k_by_due LIMIT 1", (lo, hi)).fetchone()
                if row is None:
                    return None, WriteSet()
            else:
                row = conn.execute(f"SELECT id, ct, doc FROM t_{QUEUE} WHERE id = {p}", (entry_id,)).fetchone()
                if row is None:
                    return Claimed("", "skipped"), WriteSet()  # taken and finished by another node
            queue_id, ct, text = row
            entry = decode(orjson.loads(text))
            job_id = entry["job"]
            seen["job"] = job_id
            db = system_writer(engine, conn)
            db._remember(queue_id, ct, text)
            db.delete(queue_id)
            doc = db.get(job_id)
            if doc is None or doc["state"]["kind"] != "pending":
                return Claimed(job_id, "skipped"), db.writes  # a leftover of a canceled or forgotten job
            if entry["kind"] == "action":
                db.insert(RUNNING, {"job": job_id, "runner": self.node_id})
                db.patch(job_id, {"state": {"kind": "inProgress"}})
                return Claimed(job_id, "action", doc["name"], doc["args"]), db.writes
            state, writes = self._run_mutation(conn, doc["name"], doc["args"])
            if SCHEDULED in writes.keys:
                # The mutation changed scheduled jobs (canceled itself, perhaps): read this one afresh.
                writes.merge(db.writes)
                db = system_writer(engine, conn)
                doc = db.get(job_id)
            if doc is not None and doc["state"]["kind"] == "pending":
                db.patch(job_id, {"state": state, "completedTime": self.clock.now_ms()})
            writes.merge(db.writes)
            return Claimed(job_id, "mutation"), writes

        return job

    def _run_mutation(self, conn: StoreConn, name: str, args: dict[str, Any]) -> tuple[JobState, WriteSet]:
        """Run a scheduled mutation inside the taking transaction; a failure rolls back only its own writes."""
        engine = self.engine
        spec = engine.registry.get(name)
        if spec is None or spec.kind != "mutation":
            return {"kind": "failed", "error": f"there is no mutation '{name}' any more"}, WriteSet()
        try:
            valid = engine.prepare_args(spec, args)
        except FunctionError as exc:
            return {"kind": "failed", "error": redact(exc.message)}, WriteSet()
        conn.execute("SAVEPOINT corral_job")
        try:
            _value, writes = engine._mutation_job(spec, valid, SCHEDULER_CALLER, None)(conn)
        except FunctionError as exc:
            conn.execute("ROLLBACK TO SAVEPOINT corral_job")
            conn.execute("RELEASE SAVEPOINT corral_job")
            return {"kind": "failed", "error": redact(exc.message)}, WriteSet()
        conn.execute("RELEASE SAVEPOINT corral_job")
        return {"kind": "success"}, writes

    async def _run_action(self, claimed: Claimed) -> None:
        assert self._slots is not None
        try:
            try:
                await self.engine.call_action(claimed.name, claimed.args or {}, SCHEDULER_CALLER, internal_ok=True)
                state: JobState = {"kind": "success"}
            except FunctionError as exc:
                state = {"kind": "failed", "error": redact(exc.message)}
            await self._settle(claimed.job_id, state)
        finally:
            self._slots.release()
            self.poke()

    async def _settle(self, job_id: str, state: JobState) -> None:
        """Record how a job ended (a job canceled meanwhile stays canceled); drop what tracked it."""
        def work(db: DatabaseWriter) -> None:
            for table in (RUNNING, QUEUE):
                for entry in db.query(table).with_index("by_job", lambda q: q.eq("job", job_id)).collect():
                    db.delete(entry["_id"])
            doc = db.get(job_id)
            if doc is not None and doc["state"]["kind"] not in FINAL_STATES:
                db.patch(job_id, {"state": state, "completedTime": self.clock.now_ms()})

        for attempt in range(MAX_INTERNAL_RETRIES):
            try:
                await _write(self.engine, work)
                return
            except FunctionError as exc:
                log.warning("scheduler.settle_failed", job=job_id, attempt=attempt + 1, error=redact(exc.message))
                await self.clock.sleep(self.settings.scheduler_poll_interval)

    async def _time_to_next(self) -> float:
        """Seconds until the next pending job or cron tick that is not due yet."""
        now = self.clock.now_ms()
        crons = self.crons

        def read(conn: StoreConn, _ts: int) -> float | None:
            db = DatabaseReader(conn, self.engine.schema)
            # Entries already due are being taken (here, or on another node): look past them.
            first = db.query(QUEUE).with_index("by_due", lambda q: q.gt("due", now)).first()
            times = [first["due"]] if first is not None else []
            if crons is not None and crons.specs:
                times += [c["nextRun"] for c in db.query(CRONS).collect() if c["nextRun"] > now]
            return min(times) if times else None

        earliest = await self.engine.in_snapshot(read)
        candidates = [self._next_maintenance - self.clock.time()]
        if earliest is not None:
            candidates.append((earliest - now) / 1000.0)
        return max(0.0, min(candidates))

    # -- PostgreSQL: claims and liveness
    def _prepare_postgres(self) -> None:
        import psycopg

        from ..storage.postgres import SCHEMA_LOCK

        url = self.engine.store.url  # type: ignore[attr-defined]
        with psycopg.connect(url) as raw:
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            raw.execute(CLAIMS_DDL)
            # Room on each page, so that a job's change of state is a HOT update: no new index entries
            # that other transactions' reads would conflict with.
            raw.execute(f"ALTER TABLE t_{SCHEDULED} SET (fillfactor = 60)")
        self._hold_runner_lock()
        self._claims = psycopg.connect(url, autocommit=True)

    def _hold_runner_lock(self) -> None:
        """While this node lives it holds a session lock named after it (see _dead_runners)."""
        import psycopg

        if self._liveness is not None and not self._liveness.closed and not self._liveness.broken:
            return
        self._liveness = psycopg.connect(self.engine.store.url, autocommit=True)  # type: ignore[attr-defined]
        self._liveness.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (RUNNER_LOCK_CLASS, self.node_id))

    async def _next_candidate(self) -> str | None:
        """A due queue entry this node has claimed; claims a batch when it has none left."""
        assert self._claim_lock is not None
        async with self._claim_lock:
            if not self._candidates:
                finished, self._finished = self._finished, []
                self._candidates.extend(await asyncio.to_thread(self._claim_batch, finished))
            return self._candidates.popleft() if self._candidates else None

    def _claim_batch(self, finished: list[str]) -> list[str]:
        import psycopg

        now = self.clock.now_ms()
        lo, hi = _due_range(now)
        try:
            if self._claims is None or self._claims.closed:
                self._claims = psycopg.connect(self.engine.store.url, autocommit=True)  # type: ignore[attr-defined]
            if finished:
                self._claims.execute(f"DELETE FROM {CLAIMS} WHERE entry = ANY(%s)", (finished,))
            rows = self._claims.execute(CLAIM_SQL, {
                "runner": self.node_id, "until": now + self.settings.scheduler_claim_lease * 1000.0, "now": now,
                "lo": lo, "hi": hi, "limit": max(1, self.settings.scheduler_concurrency)}).fetchall()
        except psycopg.Error:
            with contextlib.suppress(Exception):
                self._claims.close()  # type: ignore[union-attr]
            self._claims = None
            raise
        return [row[0] for row in rows]

    async def _fail_orphans_on_postgres(self) -> None:
        def runners(conn: StoreConn, _ts: int) -> set[str]:
            db = DatabaseReader(conn, self.engine.schema)
            return {e["runner"] for e in db.query(RUNNING).collect()} - {self.node_id}

        await asyncio.to_thread(self._hold_runner_lock)  # again, if its connection was lost
        others = await self.engine.in_snapshot(runners)
        if not others:
            return
        dead = await asyncio.to_thread(self._dead_runners, others)
        if dead:
            failed = await self.engine.store.run(self._fail_orphans_job(dead.__contains__))
            if failed.error is None and failed.value:
                log.warning("scheduler.orphaned_actions_failed", count=failed.value)

    def _dead_runners(self, runners: set[str]) -> set[str]:
        """Runners whose node holds no runner lock any more: it stopped."""
        dead = set()
        for runner in runners:
            row = self._liveness.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (RUNNER_LOCK_CLASS, runner)).fetchone()
            if row and row[0]:
                dead.add(runner)
                self._liveness.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (RUNNER_LOCK_CLASS, runner))
        return dead

    # -- housekeeping
    async def _maintain_if_due(self) -> None:
        now = self.clock.time()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.settings.maintenance_interval
        await self.forget_finished()
        if self._is_postgres:
            await self._fail_orphans_on_postgres()
            if self._claims is not None:
                cutoff = self.clock.now_ms()
                await asyncio.to_thread(self._claims.execute, f"DELETE FROM {CLAIMS} WHERE until < %s", (cutoff,))

    async def forget_finished(self) -> int:
        """Delete finished jobs older than `scheduler_retention`; returns how many."""
        horizon = self.clock.now_ms() - self.settings.scheduler_retention * 1000.0
        forgotten = 0
        cursor: str | None = None
        while True:
            def work(db: DatabaseWriter, cursor: str | None = cursor) -> tuple[int, str, bool]:
                page = db.query(SCHEDULED).with_index("by_creation_time", lambda q: q.lt("_creationTime", horizon)) \
                    .paginate({"numItems": 256, "cursor": cursor})
                gone = 0
                for doc in page["page"]:
                    if doc["state"]["kind"] in FINAL_STATES and doc.get("completedTime", horizon) < horizon:
                        db.delete(doc["_id"])
                        gone += 1
                return gone, page["continueCursor"], page["isDone"]

            gone, cursor, done = await _write(self.engine, work)
            forgotten += gone
            if done:
                return forgotten

    def _fail_orphans_job(self, is_orphan: Callable[[str], bool]) -> Callable[[StoreConn], tuple[Any, WriteSet]]:
        engine = self.engine

        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            db = system_writer(engine, conn)
            failed = 0
            for entry in db.query(RUNNING).collect():
                if not is_orphan(entry["runner"]):
                    continue
                db.delete(entry["_id"])
                doc = db.get(entry["job"])
                if doc is not None and doc["state"]["kind"] not in FINAL_STATES:
                    db.patch(entry["job"], {"state": {"kind": "failed", "error": "the node running this action stopped before it finished; actions are not retried"},
                                            "completedTime": self.clock.now_ms()})
                failed += 1
            return failed, db.writes

        return job

    def _run_sync(self, job: Callable[[StoreConn], tuple[Any, WriteSet]]) -> Any:
        outcome = self.engine.store.submit(job).result()
        if outcome.error is not None:
            raise outcome.error
        return outcome.value


def _due_range(now_ms: float) -> tuple[bytes, bytes]:
    """Index keys (`by_due`) of queue entries due at or before `now_ms`."""
    lo, hi = IndexRange(QUEUE, "by_due", ("due",)).gte("due", float("-inf")).lte("due", now_ms).bounds()
    assert hi is not None
    return lo, hi


__all__ = ["ActionScheduler", "MutationScheduler", "ScheduledFunction", "Scheduler", "install"]
