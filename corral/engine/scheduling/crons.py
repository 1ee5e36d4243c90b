"""Crons: functions that run on a schedule, declared in one module.

    # crons.py of a functions folder (Corral's own: corral/app/crons.py)
    from corral import Crons
    from . import maintenance

    crons = Crons()
    crons.interval("reap idle sandboxes", maintenance.reap, seconds=30)
    crons.cron("nightly report", "0 3 * * *", "reports:nightly", {"full": True})

Times are UTC. Each cron's next run is a row of the system table `_cron_jobs`; a tick is taken in
a transaction that moves that row on, so with several nodes each tick runs once. A tick whose
previous run has not finished is skipped (runs never overlap), and ticks missed while no node
was running are not made up: a late cron runs once, then keeps its schedule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from ..database import DatabaseWriter
from ..env import redact
from ..errors import FunctionError, SchemaError
from ..functions import FunctionSpec, Registry
from ..storage import StoreConn
from ..values import WriteSet
from .scheduler import CRONS, FINAL_STATES, insert_job, resolve_target, system_writer

if TYPE_CHECKING:
    from ..runtime import Engine
    from .scheduler import Scheduler

log = structlog.get_logger("corral.crons")

CRONS_MODULE = "crons"
MIN_INTERVAL_SECONDS = 1.0
_SEARCH_DAYS = 366 * 8 + 2  # a cron that matches no day in 8 years (Feb 30…) never matches


# -- schedules --------------------------------------------------------------------------

class Schedule:
    def describe(self) -> str:
        raise NotImplementedError

    def first_run(self, now: float) -> float:
        """Seconds since the epoch of the first run for a cron declared at `now`."""
        raise NotImplementedError

    def next_run(self, now: float, previous: float) -> float:
        """The first run strictly after `now`, given the run that was due at `previous`."""
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Schedule):
    seconds: float

    def describe(self) -> str:
        return f"every {self.seconds:g}s"

    def first_run(self, now: float) -> float:
        return now + self.seconds

    def next_run(self, now: float, previous: float) -> float:
        # Keep the phase: previous + k·interval, the first one after now (missed ticks are skipped).
        if previous > now:
            return previous
        steps = math.floor((now - previous) / self.seconds) + 1
        return previous + steps * self.seconds


_MONTHS = {m: i for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
_DAYS = {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
           "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_FIELD = re.compile(r"^(\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/([0-9]+))?$")


@dataclass(frozen=True)
class CronExpression(Schedule):
    """A five-field cron expression (minute hour day-of-month month day-of-week), in UTC."""

    expression: str
    minutes: tuple[int, ...] = field(default=(), compare=False)
    hours: tuple[int, ...] = field(default=(), compare=False)
    days: frozenset[int] = field(default=frozenset(), compare=False)
    months: frozenset[int] = field(default=frozenset(), compare=False)
    weekdays: frozenset[int] = field(default=frozenset(), compare=False)
    any_day: bool = field(default=True, compare=False)
    any_weekday: bool = field(default=True, compare=False)

    @classmethod
    def parse(cls, expression: str) -> CronExpression:
        if not isinstance(expression, str):
            raise ValueError(f"a cron expression is a string such as '0 3 * * *', not {expression!r}")
        text = _MACROS.get(expression.strip().lower(), expression.strip())
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(f"cron expression {expression!r} has {len(parts)} fields; it needs 5: minute hour day-of-month month day-of-week (UTC)")
        minute, hour, dom, month, dow = parts
        weekdays = {d % 7 for d in _parse_field(dow, "day of week", 0, 7, _DAYS)}  # 7 is Sunday too
        parsed = cls(expression=" ".join(parts),
                     minutes=tuple(sorted(_parse_field(minute, "minute", 0, 59))),
                     hours=tuple(sorted(_parse_field(hour, "hour", 0, 23))),
                     days=frozenset(_parse_field(dom, "day of month", 1, 31)),
                     months=frozenset(_parse_field(month, "month", 1, 12, _MONTHS)),
                     weekdays=frozenset(weekdays), any_day=dom == "*", any_weekday=dow == "*")
        try:
            parsed.next_run(0.0, 0.0)
        except ValueError:
            raise ValueError(f"cron expression {expression!r} matches no date") from None
        return parsed

    def describe(self) -> str:
        return f"cron {self.expression}"

    def first_run(self, now: float) -> float:
        return self.next_run(now, now)

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        on_weekday = (day.weekday() + 1) % 7 in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return on_weekday
        if self.any_weekday:
            return in_month
        return in_month or on_weekday  # both restricted: either matches, as in every cron

    def next_run(self, now: float, previous: float) -> float:
        start = datetime.fromtimestamp(now, UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.date()
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day):
                first = day == start.date()
                for hour in self.hours:
                    if first and hour < start.hour:
                        continue
                    for minute in self.minutes:
                        if first and hour == start.hour and minute < start.minute:
                            continue
                        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC).timestamp()
            day += timedelta(days=1)
        raise ValueError(f"cron expression {self.expression!r} matches no date")


def _parse_field(text: str, what: str, lo: int, hi: int, names: dict[str, int] | None = None) -> set[int]:
    def number(token: str) -> int:
        if names and token.upper() in names:
            return names[token.upper()]
        if not token.isdigit():
            raise ValueError(f"cron {what} {token!r} is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
        return int(token)

    values: set[int] = set()
    for part in text.split(","):
        match = _FIELD.match(part)
        if match is None:
            raise ValueError(f"cron {what} field {text!r}: {part!r} is not *, N, N-M, */S or N-M/S")
        span, step_text = match.groups()
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"cron {what} field {text!r}: a step must be 1 or more")
        if span == "*":
            first, last = lo, hi
        elif "-" in span:
            a, b = span.split("-")
            first, last = number(a), number(b)
        else:
            first = number(span)
            last = hi if step_text else first
        if not lo <= first <= last <= hi:
            raise ValueError(f"cron {what} field {text!r}: values must be within {lo}–{hi}, low to high")
        values.update(range(first, last + 1, step))
    return values


# -- declaring crons ----------------------------------------------------------------------

@dataclass
class CronSpec:
    name: str
    schedule: Schedule
    function: Any  # a FunctionSpec or a "module:function" path, resolved when the node starts
    args: dict[str, Any]
    origin: str = ""
    path: str = ""
    kind: str = ""


_WEEKDAYS = {name: i for i, name in enumerate(("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"))}


class Crons:
    """The crons of one module: `crons = Crons()` then `crons.interval(...)`, `crons.cron(...)`…"""

    def __init__(self) -> None:
        self.specs: dict[str, CronSpec] = {}

    def _add(self, name: str, schedule: Schedule, function: Any, args: dict[str, Any] | None) -> None:
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise ValueError(f"a cron needs a name of 1 to 100 characters, not {name!r}")
        if name in self.specs:
            raise ValueError(f"there are two crons named {name!r}")
        if function is None:
            raise ValueError(f"cron {name!r} names no function to run")
        if args is not None and not isinstance(args, dict):
            raise ValueError(f"cron {name!r}: args are an object (a dict), not {type(args).__name__}")
        self.specs[name] = CronSpec(name, schedule, function, dict(args or {}))

    def interval(self, name: str, function: Any = None, args: dict[str, Any] | None = None, *,
                 seconds: float = 0, minutes: float = 0, hours: float = 0) -> None:
        """Run every `hours`/`minutes`/`seconds` (added up), the first time one interval from now."""
        total = float(seconds) + 60.0 * float(minutes) + 3600.0 * float(hours)
        if not math.isfinite(total) or total < MIN_INTERVAL_SECONDS:
            raise ValueError(f"cron {name!r}: an interval is at least {MIN_INTERVAL_SECONDS:g} second, not {total:g}")
        self._add(name, Interval(total), function, args)

    def cron(self, name: str, expression: str, function: Any = None, args: dict[str, Any] | None = None) -> None:
        """Run on a cron expression such as "0 3 * * *" (minute hour day-of-month month day-of-week, UTC)."""
        self._add(name, CronExpression.parse(expression), function, args)

    def hourly(self, name: str, function: Any = None, args: dict[str, Any] | None = None, *, minute_utc: int = 0) -> None:
        self.cron(name, f"{_int(minute_utc, 'minute_utc', 59)} * * * *", function, args)

    def daily(self, name: str, function: Any = None, args: dict[str, Any] | None = None, *,
              hour_utc: int = 0, minute_utc: int = 0) -> None:
        self.cron(name, f"{_int(minute_utc, 'minute_utc', 59)} {_int(hour_utc, 'hour_utc', 23)} * * *", function, args)

    def weekly(self, name: str, function: Any = None, args: dict[str, Any] | None = None, *,
               day_of_week: str, hour_utc: int = 0, minute_utc: int = 0) -> None:
        day = _WEEKDAYS.get(str(day_of_week).lower())
        if day is None:
            raise ValueError(f"cron {name!r}: day_of_week is one of {', '.join(_WEEKDAYS)}, not {day_of_week!r}")
        self.cron(name, f"{_int(minute_utc, 'minute_utc', 59)} {_int(hour_utc, 'hour_utc', 23)} * * {day}", function, args)

    def monthly(self, name: str, function: Any = None, args: dict[str, Any] | None = None, *,
                day: int, hour_utc: int = 0, minute_utc: int = 0) -> None:
        if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 31:
            raise ValueError(f"cron {name!r}: day is a day of the month, 1 to 31, not {day!r}")
        self.cron(name, f"{_int(minute_utc, 'minute_utc', 59)} {_int(hour_utc, 'hour_utc', 23)} {day} * *", function, args)


def _int(value: Any, what: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise ValueError(f"{what} is a whole number from 0 to {hi}, not {value!r}")
    return value


def load_crons(registry: Registry) -> list[CronSpec]:
    """Every cron declared in `crons.py` of Corral's own functions and of the functions folder."""
    found: dict[str, CronSpec] = {}
    for module, where in registry.declaration_modules(CRONS_MODULE, "crons"):
        for value in vars(module).values():
            if not isinstance(value, Crons):
                continue
            for name, spec in value.specs.items():
                if name in found:
                    raise SchemaError(f"cron {name!r} of {where} has the name of a cron of {found[name].origin}")
                spec.origin = where
                found[name] = spec
    for spec in found.values():
        try:
            target = resolve_target(registry, spec.function, what="run a cron of")
        except FunctionError as exc:
            raise SchemaError(f"cron {spec.name!r} ({spec.origin}): {exc.message}") from None
        spec.path, spec.kind = target.path, target.kind
    return list(found.values())


# -- running crons ----------------------------------------------------------------------

class CronRunner:
    """Keeps `_cron_jobs` in step with the declared crons and takes their ticks."""

    def __init__(self, engine: Engine, specs: list[CronSpec]) -> None:
        self.engine = engine
        self.specs = {s.name: s for s in specs}
        for spec in specs:
            target = engine.registry.get(spec.path)
            assert isinstance(target, FunctionSpec)
            try:
                engine.prepare_args(target, spec.args)
            except FunctionError as exc:
                raise SchemaError(f"cron {spec.name!r} ({spec.origin}): {exc.message}") from None

    def declare(self, scheduler: Scheduler) -> None:
        """Insert new crons, update changed ones, delete those no longer declared (at node start)."""
        engine = self.engine

        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            db = system_writer(engine, conn)
            now = engine.clock.time()
            existing = {doc["name"]: doc for doc in db.query(CRONS).collect()}
            for name, spec in self.specs.items():
                described = spec.schedule.describe()
                doc = existing.pop(name, None)
                if doc is None:
                    db.insert(CRONS, {"name": name, "schedule": described, "function": spec.path, "args": spec.args,
                                      "nextRun": spec.schedule.first_run(now) * 1000.0})
                elif doc["schedule"] != described:
                    db.patch(doc["_id"], {"schedule": described, "function": spec.path, "args": spec.args,
                                          "nextRun": spec.schedule.first_run(now) * 1000.0})
                elif doc["function"] != spec.path or doc["args"] != spec.args:
                    db.patch(doc["_id"], {"function": spec.path, "args": spec.args})
            for doc in existing.values():
                db.delete(doc["_id"])
            return None, db.writes

        scheduler._run_sync(job)

    async def tick_due(self, scheduler: Scheduler) -> None:
        """Take every tick that is due (each in its own transaction)."""
        if not self.specs:
            return
        now_ms = self.engine.clock.now_ms()

        def due(conn: StoreConn, _ts: int) -> list[str]:
            from ..database import DatabaseReader

            db = DatabaseReader(conn, self.engine.schema)
            return [doc["name"] for doc in db.query(CRONS).collect() if doc["nextRun"] <= now_ms and doc["name"] in self.specs]

        for name in await self.engine.in_snapshot(due):
            outcome = await self.engine.store.run(self._tick_job(name))
            if outcome.error is not None:
                log.warning("cron.tick_failed", cron=name, error=redact(str(outcome.error)))

    def _tick_job(self, name: str) -> Callable[[StoreConn], tuple[Any, WriteSet]]:
        engine = self.engine
        spec = self.specs[name]

        def job(conn: StoreConn) -> tuple[Any, WriteSet]:
            now_ms = engine.clock.now_ms()
            db: DatabaseWriter = system_writer(engine, conn)
            doc = db.query(CRONS).with_index("by_name", lambda q: q.eq("name", name)).unique()
            if doc is None or doc["nextRun"] > now_ms:
                return None, WriteSet()  # another node took this tick
            tick = doc["nextRun"]
            changes: dict[str, Any] = {"nextRun": spec.schedule.next_run(now_ms / 1000.0, tick / 1000.0) * 1000.0}
            last = db.get(doc["lastJob"]) if doc.get("lastJob") else None
            if last is not None and last["state"]["kind"] not in FINAL_STATES:
                log.info("cron.skipped", cron=name, reason="its previous run has not finished")
            else:
                target = engine.registry.get(spec.path)
                assert target is not None
                changes["lastJob"] = insert_job(db, target, spec.args, tick)
                changes["lastRun"] = tick
            db.patch(doc["_id"], changes)
            return None, db.writes

        return job
