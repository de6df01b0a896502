"""Cron schedules: parse the TOML file, decide which tick is due, submit one job per tick.

Each tick's job id is a uuid5 of the schedule name and the tick time, so however
many schedulers run, the event store's primary key lets exactly one submission
of a tick through; the others see a conflict and treat it as "already
submitted". Which tick is due is a pure function of (schedule, the instant up
to which the schedule was last checked, now); that instant is kept per schedule
in `jl_schedule_ticks`, so a restarted scheduler knows what it missed and
applies the schedule's catch-up rule (`resume_from`).

ScheduleError (a JobledgerError)   a bad schedules file, naming schedule and field
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from uuid import NAMESPACE_URL, UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import structlog
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ledger import (
    ConcurrencyConflict,
    InvalidJob,
    JobledgerError,
    Ledger,
    QuotaExceeded,
    Registry,
    check_org,
)

log = structlog.get_logger("jobledger.scheduler")

MIN_SLEEP_S = 0.01
RETRY_S = 2.0  # after a failed submission

CREATE_TICKS = """
CREATE TABLE IF NOT EXISTS jl_schedule_ticks (
    name text PRIMARY KEY,
    checked_until timestamptz NOT NULL
)
"""
SELECT_TICKS = "SELECT name, checked_until FROM jl_schedule_ticks WHERE name = ANY(%s)"
RECORD_TICK = """
INSERT INTO jl_schedule_ticks AS t (name, checked_until) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET checked_until = GREATEST(t.checked_until, EXCLUDED.checked_until)
"""


class ScheduleError(JobledgerError):
    """The schedules file is wrong; the message names the schedule and the field."""


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    cron: str
    timezone: ZoneInfo
    job_type: str
    org: str
    payload: dict[str, Any] = field(default_factory=dict)
    catch_up: Literal["skip", "once"] = "skip"
    enabled: bool = True


# ---------------------------------------------------------------- parsing


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200)
    cron: str
    timezone: str = "UTC"
    type: str
    org: str
    payload: dict[str, Any] = Field(default_factory=dict)
    catch_up: Literal["skip", "once"] = "skip"
    enabled: bool = True


def load_schedules(path: Path, registry: Registry) -> list[Schedule]:
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ScheduleError(f"cannot read schedules file {str(path)!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScheduleError(f"schedules file {str(path)!r} is not valid TOML: {e}") from None
    return parse_schedules(document, registry)


def parse_schedules(document: dict[str, Any], registry: Registry) -> list[Schedule]:
    unknown = set(document) - {"schedule"}
    if unknown:
        raise ScheduleError(f"unknown top-level key(s) {sorted(unknown)}: use [[schedule]] tables")
    entries = document.get("schedule", [])
    if not isinstance(entries, list):
        raise ScheduleError("'schedule' must be an array of tables: write [[schedule]]")
    schedules: list[Schedule] = []
    for index, raw in enumerate(entries, start=1):
        schedule = _parse_one(raw, f"#{index}", registry)
        if any(s.name == schedule.name for s in schedules):
            raise ScheduleError(f"schedule {schedule.name!r}: name: used by another schedule")
        schedules.append(schedule)
    return schedules


def _parse_one(raw: Any, label: str, registry: Registry) -> Schedule:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"]:
        label = repr(raw["name"])

    def fail(where: str, problem: str) -> ScheduleError:
        return ScheduleError(f"schedule {label}: {where}: {problem}")

    try:
        entry = _Entry.model_validate(raw)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "entry"
        raise fail(where, first["msg"]) from None
    if len(entry.cron.split()) != 5 or not croniter.is_valid(entry.cron):
        raise fail("cron", f"not a five-field cron expression: {entry.cron!r}")
    try:
        zone = ZoneInfo(entry.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise fail("timezone", f"not an IANA time zone: {entry.timezone!r}") from None
    try:
        job_type = registry.get(entry.type)
    except InvalidJob:
        raise fail("type", f"unknown job type {entry.type!r}") from None
    try:
        org = check_org(entry.org)
        payload = job_type.validate_payload(entry.payload)
    except InvalidJob as e:
        error = e.errors[0] if e.errors else {"loc": ["payload"], "msg": str(e)}
        raise fail(".".join(str(p) for p in error["loc"]), str(error["msg"])) from None
    return Schedule(
        entry.name, entry.cron, zone, job_type.name, org, payload, entry.catch_up, entry.enabled
    )


# ---------------------------------------------------------------- ticks (pure)


def next_tick(schedule: Schedule, after: datetime) -> datetime:
    """The first tick strictly after `after`, in UTC."""
    local = after.astimezone(schedule.timezone)
    nxt: datetime = croniter(schedule.cron, local).get_next(datetime)
    return nxt.astimezone(UTC)


def latest_tick(schedule: Schedule, now: datetime) -> datetime:
    """The last tick at or before `now`, in UTC."""
    local = now.astimezone(schedule.timezone)
    before: datetime = croniter(schedule.cron, local).get_prev(datetime)
    at_or_before = next_tick(schedule, before)
    return at_or_before if at_or_before <= now else before.astimezone(UTC)


def resume_from(schedule: Schedule, last_checked: datetime | None, now: datetime) -> datetime:
    """Where a starting scheduler picks a schedule up: the catch-up rule after downtime.

    A schedule never checked before has missed nothing; "skip" drops the ticks
    that passed while no scheduler ran; "once" keeps them, so `due_tick` fires
    the most recent of them.
    """
    if last_checked is None or schedule.catch_up == "skip":
        return now
    return last_checked


def due_tick(schedule: Schedule, checked_until: datetime, now: datetime) -> datetime | None:
    """The one tick to fire now, if any: the latest tick after `checked_until`.

    A running scheduler that wakes late (a stalled machine) still fires it.
    """
    if not schedule.enabled:
        return None
    tick = latest_tick(schedule, now)
    return tick if tick > checked_until else None


def tick_job_id(schedule: Schedule, tick: datetime) -> UUID:
    stamp = tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return uuid5(NAMESPACE_URL, f"jobledger:/schedules/{schedule.name}/{stamp}")


# ---------------------------------------------------------------- the running scheduler


@dataclass(frozen=True, slots=True)
class Fired:
    schedule: str
    tick: datetime
    job_id: UUID
    outcome: Literal["submitted", "already_submitted", "over_quota"]


class Scheduler:
    """`run()` until `stop()`; `start(now)` and `fire_due(now)` are its synchronous steps."""

    def __init__(
        self, ledger: Ledger, schedules: Sequence[Schedule], *, clock: Callable[[], datetime]
    ) -> None:
        self.ledger = ledger
        self.schedules = [s for s in schedules if s.enabled]
        self.clock = clock
        self.checked: dict[str, datetime] = {}
        self._stopped = anyio.Event()

    def start(self, now: datetime) -> None:
        """Read where each schedule was last checked; a new one starts counting now."""
        names = [s.name for s in self.schedules]
        with self.ledger.connection() as conn:
            rows = conn.execute(SELECT_TICKS, (names,)).fetchall()
            known = {row["name"]: row["checked_until"] for row in rows}
            for name in names:
                if name not in known:
                    conn.execute(RECORD_TICK, (name, now))
        self.checked = {s.name: resume_from(s, known.get(s.name), now) for s in self.schedules}

    def fire_due(self, now: datetime) -> list[Fired]:
        fired = []
        for schedule in self.schedules:
            tick = due_tick(schedule, self.checked.get(schedule.name, now), now)
            if tick is not None:
                fired.append(self._submit(schedule, tick, now))
            self.checked[schedule.name] = now  # only once the tick is handled
        if fired:
            with self.ledger.connection() as conn:
                conn.cursor().executemany(RECORD_TICK, [(f.schedule, now) for f in fired])
        return fired

    def _submit(self, schedule: Schedule, tick: datetime, now: datetime) -> Fired:
        job_id = tick_job_id(schedule, tick)
        spec = self.ledger.spec_for(schedule.job_type, schedule.org, schedule.payload)
        context = {"schedule": schedule.name, "tick": tick.isoformat(), "job_id": str(job_id)}
        try:
            self.ledger.submit(spec, job_id=job_id)
        except ConcurrencyConflict:
            log.info("tick already submitted", **context)
            return Fired(schedule.name, tick, job_id, "already_submitted")
        except QuotaExceeded as e:
            log.warning("tick skipped: organisation at its quota", error=str(e), **context)
            return Fired(schedule.name, tick, job_id, "over_quota")
        log.info("tick submitted", **context)
        return Fired(schedule.name, tick, job_id, "submitted")

    def next_wake(self, now: datetime) -> datetime | None:
        return min((next_tick(s, now) for s in self.schedules), default=None)

    async def run(self) -> None:
        await anyio.to_thread.run_sync(self.start, self.clock())
        log.info("scheduler started", schedules=[s.name for s in self.schedules])
        while not self._stopped.is_set():
            now = self.clock()
            try:
                await anyio.to_thread.run_sync(self.fire_due, now)
            except Exception:  # the database is away: a due tick is tried again
                log.exception("scheduler could not submit; retrying", retry_s=RETRY_S)
                with anyio.move_on_after(RETRY_S):
                    await self._stopped.wait()
                continue
            wake = self.next_wake(now)
            with anyio.move_on_after(_seconds_until(wake, self.clock())):
                await self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()


def _seconds_until(wake: datetime | None, now: datetime) -> float:
    if wake is None:
        return float("inf")  # nothing enabled: sleep until stopped
    return max(MIN_SLEEP_S, (wake - now).total_seconds())
