"""A job's state, how events change it, and the commands that decide new events.

Everything here is pure: time comes in as `now`, nothing is read or written.
Commands validate against the state and the transition table, then return the
events to append; `evolve` applies an event and never rejects one, so history
always replays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from ledger.domain.errors import InvalidTransition
from ledger.domain.events import (
    JSON,
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Cancelled,
    CancelRequested,
    Failed,
    JobEvent,
    Queued,
    RetryRequested,
    RetryScheduled,
    Submitted,
)
from ledger.domain.retry import RetryPolicy
from ledger.domain.status import Status, can_move

PRIORITIES = ("high", "normal", "low")
FAILURE_REASONS = ("error", "timeout", "lost_worker", "shutdown")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a submission asks for, once validated and defaults filled in."""

    org: str
    job_type: str
    payload: JSON
    priority: str = "normal"
    run_at: datetime | None = None
    delay_s: float | None = None  # relative to the instant the ledger records the job
    max_attempts: int = 4
    timeout_s: float = 60.0
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    id: UUID
    org: str
    type: str
    status: Status
    priority: str
    payload: JSON
    max_attempts: int
    original_max_attempts: int
    timeout_s: float
    created_at: datetime
    run_at: datetime
    idempotency_key: str | None
    version: int
    updated_at: datetime
    result: Any = None
    attempts: int = 0
    budget_start: int = 0
    attempt_running: bool = False
    worker: str | None = None
    lease_until: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    last_error: JSON | None = None
    cancel_requested: bool = False

    @property
    def due_at(self) -> datetime | None:
        """When a waiting job becomes runnable (scheduled or retrying only)."""
        return self.next_attempt_at


# ---------------------------------------------------------------- evolve


def evolve(job: Job | None, event: JobEvent) -> Job:
    """Apply one recorded event. Never raises for a well-formed history."""
    at = event.timestamp
    version = event.originator_version
    if isinstance(event, Submitted):
        return Job(
            id=event.originator_id,
            org=event.org,
            type=event.job_type,
            status=Status.SCHEDULED,
            priority=event.priority,
            payload=event.payload,
            max_attempts=event.max_attempts,
            original_max_attempts=event.max_attempts,
            timeout_s=event.timeout_s,
            created_at=at,
            run_at=event.run_at,
            idempotency_key=event.idempotency_key,
            version=version,
            updated_at=at,
            next_attempt_at=event.run_at,
        )
    assert job is not None, "only a submitted event may start a history"
    return _copy_with(job, version=version, updated_at=at, **_changes(job, event, at))


_FIELDS = tuple(f.name for f in fields(Job))
_set = object.__setattr__


def _copy_with(job: Job, **changes: Any) -> Job:
    """`dataclasses.replace` without its per-call introspection: twice as fast.

    Workers, replays and the projector fold every event through here, so
    it is the hottest function of the system.
    """
    new = object.__new__(Job)
    for name in _FIELDS:
        _set(new, name, getattr(job, name))
    for name, value in changes.items():
        _set(new, name, value)
    return new


def _changes(job: Job, event: JobEvent, at: datetime) -> dict[str, Any]:  # noqa: PLR0911
    match event:
        case Queued():
            return {"status": Status.QUEUED, "next_attempt_at": None}
        case AttemptStarted(attempt=attempt, worker=worker, lease_until=lease):
            return {
                "status": Status.RUNNING,
                "attempts": attempt,
                "attempt_running": True,
                "worker": worker,
                "lease_until": lease,
                "started_at": at,
            }
        case AttemptSucceeded(result=result):
            return {
                "status": Status.SUCCEEDED,
                "attempt_running": False,
                "result": result,
                "last_error": None,
                "finished_at": at,
                "lease_until": None,
            }
        case AttemptFailed(error=error):
            return {"attempt_running": False, "lease_until": None, "last_error": error}
        case RetryScheduled(next_attempt_at=next_at):
            return {"status": Status.RETRYING, "next_attempt_at": next_at}
        case Failed():
            return {"status": Status.FAILED, "finished_at": at}
        case CancelRequested():
            return {"cancel_requested": True}
        case Cancelled():
            return {
                "status": Status.CANCELLED,
                "attempt_running": False,
                "lease_until": None,
                "next_attempt_at": None,
                "finished_at": at,
            }
        case RetryRequested(max_attempts=budget):
            return {
                "max_attempts": budget,
                "budget_start": job.attempts,
                "cancel_requested": False,
                "finished_at": None,
                "next_attempt_at": None,
            }
    raise TypeError(f"unknown event {type(event).__name__}")  # pragma: no cover


def fold(events: Iterable[JobEvent], job: Job | None = None) -> Job | None:
    for event in events:
        job = evolve(job, event)
    return job


def fold_until(events: Iterable[JobEvent], at: datetime) -> Job | None:
    """The job as it was at `at`: the fold of the events recorded at or before it."""
    return fold(e for e in events if e.timestamp <= at)


# ---------------------------------------------------------------- commands


def _guard(job: Job, target: Status, command: str) -> None:
    if not can_move(job.status, target):
        raise InvalidTransition(job.id, job.status.value, command)


class _Events:
    """Numbers new events after the job's version, all stamped `now`."""

    def __init__(self, job_id: UUID, version: int, now: datetime) -> None:
        self.job_id, self.version, self.now = job_id, version, now
        self.events: list[JobEvent] = []

    def add(self, cls: type[JobEvent], **data: Any) -> _Events:
        self.version += 1
        self.events.append(
            cls(
                originator_id=self.job_id,
                originator_version=self.version,
                timestamp=self.now,
                **data,
            )
        )
        return self


def _after(job: Job, now: datetime) -> _Events:
    return _Events(job.id, job.version, now)


def submit(job_id: UUID, spec: JobSpec, now: datetime) -> list[JobEvent]:
    run_at = spec.run_at or (now + timedelta(seconds=spec.delay_s) if spec.delay_s else now)
    new = _Events(job_id, 0, now).add(
        Submitted,
        org=spec.org,
        job_type=spec.job_type,
        payload=spec.payload,
        priority=spec.priority,
        run_at=run_at,
        max_attempts=spec.max_attempts,
        timeout_s=spec.timeout_s,
        idempotency_key=spec.idempotency_key,
    )
    if run_at <= now:
        new.add(Queued)
    return new.events


def enqueue(job: Job, now: datetime) -> list[JobEvent]:
    """A scheduled or retrying job whose time has come becomes runnable."""
    _guard(job, Status.QUEUED, "queue")
    if job.status not in (Status.SCHEDULED, Status.RETRYING):
        raise InvalidTransition(job.id, job.status.value, "queue")
    if job.next_attempt_at is not None and job.next_attempt_at > now:
        raise InvalidTransition(job.id, job.status.value, "queue before its time")
    return _after(job, now).add(Queued).events


def start_attempt(job: Job, worker: str, lease_s: float, now: datetime) -> list[JobEvent]:
    _guard(job, Status.RUNNING, "start an attempt")
    if job.attempts >= job.max_attempts:
        raise InvalidTransition(job.id, job.status.value, "start an attempt beyond the budget")
    return (
        _after(job, now)
        .add(
            AttemptStarted,
            attempt=job.attempts + 1,
            worker=worker,
            lease_until=now + timedelta(seconds=lease_s),
        )
        .events
    )


def _check_attempt(job: Job, attempt: int, command: str) -> None:
    if job.status is not Status.RUNNING or not job.attempt_running or job.attempts != attempt:
        raise InvalidTransition(job.id, job.status.value, f"{command} attempt {attempt}")


def succeed(
    job: Job, attempt: int, result: Any, duration_ms: float, now: datetime
) -> list[JobEvent]:
    _check_attempt(job, attempt, "record success of")
    return (
        _after(job, now)
        .add(AttemptSucceeded, attempt=attempt, result=result, duration_ms=duration_ms)
        .events
    )


def fail_attempt(
    job: Job,
    attempt: int,
    *,
    reason: str,
    error_type: str,
    message: str,
    retryable: bool,
    duration_ms: float,
    policy: RetryPolicy,
    now: datetime,
) -> list[JobEvent]:
    """Record a failed attempt and the job's next step: retry, failed, or cancelled."""
    if reason not in FAILURE_REASONS:
        raise ValueError(f"unknown failure reason {reason!r}")
    _check_attempt(job, attempt, "record failure of")
    retryable = policy.is_retryable(error_type, retryable)
    new = _after(job, now).add(
        AttemptFailed,
        attempt=attempt,
        reason=reason,
        error={"type": error_type, "message": message},
        retryable=retryable,
        duration_ms=duration_ms,
    )
    if job.cancel_requested:
        return new.add(Cancelled).events
    if not retryable or attempt >= job.max_attempts:
        return new.add(Failed, attempts=attempt).events
    next_at = policy.next_attempt_at(job.id, attempt, attempt - job.budget_start, now)
    return new.add(RetryScheduled, attempt=attempt, next_attempt_at=next_at).events


def confirm_cancel(job: Job, attempt: int, now: datetime) -> list[JobEvent]:
    """The worker stopped the attempt of a job whose cancel was requested."""
    _check_attempt(job, attempt, "cancel")
    if not job.cancel_requested:
        raise InvalidTransition(job.id, job.status.value, "cancel without a request")
    return _after(job, now).add(Cancelled).events


def request_cancel(job: Job, by: str, now: datetime) -> list[JobEvent]:
    """Cancel at once unless an attempt runs; then its worker stops it."""
    _guard(job, Status.CANCELLED, "cancel")
    if job.status is Status.RUNNING:
        if job.cancel_requested:
            return []
        return _after(job, now).add(CancelRequested, by=by).events
    return _after(job, now).add(CancelRequested, by=by).add(Cancelled).events


def manual_retry(job: Job, by: str, now: datetime) -> list[JobEvent]:
    """A user's retry of a failed or cancelled job: a fresh budget, queued at once."""
    if job.status not in (Status.FAILED, Status.CANCELLED):
        raise InvalidTransition(job.id, job.status.value, "retry")
    budget = job.max_attempts + job.original_max_attempts
    return _after(job, now).add(RetryRequested, by=by, max_attempts=budget).add(Queued).events


def apply_all(job: Job | None, events: Sequence[JobEvent]) -> Job:
    result = fold(events, job)
    assert result is not None
    return result
