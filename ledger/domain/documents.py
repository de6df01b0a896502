"""How jobs and events look to users: the contract's job object and event items."""

from __future__ import annotations

from datetime import datetime

from ledger.domain.events import JSON, JobEvent
from ledger.domain.job import Job
from ledger.domain.status import Status


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def as_document(job: Job) -> JSON:
    """The job object of the contract, as the API and `jobledger show` print it."""
    return {
        "id": str(job.id),
        "org": job.org,
        "type": job.type,
        "status": job.status.value,
        "priority": job.priority,
        "payload": job.payload,
        "result": job.result,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": _iso(job.created_at),
        "run_at": _iso(job.run_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "next_attempt_at": _iso(job.next_attempt_at)
        if job.status in (Status.SCHEDULED, Status.RETRYING)
        else None,
        "last_error": job.last_error,
        "cancel_requested": job.cancel_requested,
        "idempotency_key": job.idempotency_key,
        "version": job.version,
    }


def event_document(event: JobEvent) -> JSON:
    data = {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in event.data().items()}
    return {
        "version": event.originator_version,
        "type": event.TYPE,
        "at": _iso(event.timestamp),
        "data": data,
    }
