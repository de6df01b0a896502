"""The ledger's event types: past-tense facts about one job, stored for good.

Each class carries `TYPE`, the name users see in a job's history. Events only
hold data; `job.evolve` decides what they do to a job's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from eventsourcing.domain import DomainEvent

JSON = dict[str, Any]


@dataclass(frozen=True)
class JobEvent(DomainEvent):
    TYPE: ClassVar[str] = ""

    def data(self) -> JSON:
        """The event's own fields, as `GET /api/jobs/{id}/events` shows them."""
        fields = dict(vars(self))
        for name in ("originator_id", "originator_version", "timestamp"):
            fields.pop(name)
        return fields


@dataclass(frozen=True)
class Submitted(JobEvent):
    TYPE: ClassVar[str] = "submitted"
    org: str
    job_type: str
    payload: JSON
    priority: str
    run_at: datetime
    max_attempts: int
    timeout_s: float
    idempotency_key: str | None


@dataclass(frozen=True)
class Queued(JobEvent):
    TYPE: ClassVar[str] = "queued"


@dataclass(frozen=True)
class AttemptStarted(JobEvent):
    TYPE: ClassVar[str] = "attempt_started"
    attempt: int
    worker: str
    lease_until: datetime


@dataclass(frozen=True)
class AttemptSucceeded(JobEvent):
    TYPE: ClassVar[str] = "attempt_succeeded"
    attempt: int
    result: Any
    duration_ms: float


@dataclass(frozen=True)
class AttemptFailed(JobEvent):
    TYPE: ClassVar[str] = "attempt_failed"
    attempt: int
    reason: str
    error: JSON
    retryable: bool
    duration_ms: float


@dataclass(frozen=True)
class RetryScheduled(JobEvent):
    TYPE: ClassVar[str] = "retry_scheduled"
    attempt: int
    next_attempt_at: datetime


@dataclass(frozen=True)
class Failed(JobEvent):
    TYPE: ClassVar[str] = "failed"
    attempts: int


@dataclass(frozen=True)
class CancelRequested(JobEvent):
    TYPE: ClassVar[str] = "cancel_requested"
    by: str


@dataclass(frozen=True)
class Cancelled(JobEvent):
    TYPE: ClassVar[str] = "cancelled"


@dataclass(frozen=True)
class RetryRequested(JobEvent):
    TYPE: ClassVar[str] = "retry_requested"
    by: str
    max_attempts: int


EVENT_TYPES: dict[str, type[JobEvent]] = {
    cls.TYPE: cls
    for cls in (
        Submitted,
        Queued,
        AttemptStarted,
        AttemptSucceeded,
        AttemptFailed,
        RetryScheduled,
        Failed,
        CancelRequested,
        Cancelled,
        RetryRequested,
    )
}
