"""The pure job domain: statuses, events, retry policy, commands and job types."""

from ledger.domain.documents import as_document, event_document
from ledger.domain.errors import (
    ConcurrencyConflict,
    IdempotencyConflict,
    InvalidJob,
    InvalidTransition,
    JobledgerError,
    JobNotFound,
    NonRetryableError,
    QuotaExceeded,
)
from ledger.domain.events import EVENT_TYPES, JobEvent
from ledger.domain.job import Job, JobSpec, evolve, fold
from ledger.domain.job_types import Handler, JobType, Payload, Registry, registry
from ledger.domain.retry import RetryPolicy
from ledger.domain.snapshot import from_snapshot, to_snapshot
from ledger.domain.status import TRANSITIONS, Status

__all__ = [
    "EVENT_TYPES",
    "TRANSITIONS",
    "ConcurrencyConflict",
    "Handler",
    "IdempotencyConflict",
    "InvalidJob",
    "InvalidTransition",
    "Job",
    "JobEvent",
    "JobNotFound",
    "JobSpec",
    "JobType",
    "JobledgerError",
    "NonRetryableError",
    "Payload",
    "QuotaExceeded",
    "Registry",
    "RetryPolicy",
    "Status",
    "as_document",
    "event_document",
    "evolve",
    "fold",
    "from_snapshot",
    "registry",
    "to_snapshot",
]
