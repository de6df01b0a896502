"""The domain's exceptions, one root for everything jobledger raises on purpose.

JobledgerError
├── JobNotFound            no such job (or not visible to this organisation)
├── InvalidTransition      a command that the job's status does not allow
├── ConcurrencyConflict    another writer appended to the job first
├── QuotaExceeded          the organisation is at its active-job limit
├── IdempotencyConflict    a reused idempotency key with a different body
├── InvalidJob             unknown type, invalid payload or a bad option
└── NonRetryableError      raised by a handler: fail the job at once
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID


class JobledgerError(Exception):
    """Root of every error jobledger raises on purpose."""


class JobNotFound(JobledgerError):
    def __init__(self, job_id: UUID | str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class InvalidTransition(JobledgerError):
    """The job's status does not allow the command (a 409 at the API)."""

    def __init__(self, job_id: UUID, status: str, command: str) -> None:
        super().__init__(f"job {job_id} is {status}: cannot {command}")
        self.job_id = job_id
        self.status = status
        self.command = command


class ConcurrencyConflict(JobledgerError):
    """Another writer appended to one of the jobs since it was read."""

    def __init__(self, job_ids: Sequence[UUID] = ()) -> None:
        ids = ", ".join(str(i) for i in job_ids) or "a job"
        super().__init__(f"concurrent change to {ids}")
        self.job_ids = tuple(job_ids)


class QuotaExceeded(JobledgerError):
    def __init__(self, org: str, limit: int) -> None:
        super().__init__(f"organisation {org!r} is at its limit of {limit} active jobs")
        self.org = org
        self.limit = limit


class IdempotencyConflict(JobledgerError):
    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} is already bound to a job with a different body")
        self.key = key


class InvalidJob(JobledgerError):
    """A submission that cannot be accepted; `errors` lists the offending fields."""

    def __init__(self, message: str, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


class NonRetryableError(JobledgerError):
    """Raised by a handler when retrying cannot help (bad input, revoked access)."""
