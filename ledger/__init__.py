"""The ledger: the job domain and its event store on PostgreSQL.

Other packages use what is named here; `ledger` imports none of them.
"""

from ledger.database import DATABASE_DOWN, ensure_database
from ledger.domain import (
    EVENT_TYPES,
    TRANSITIONS,
    ConcurrencyConflict,
    Handler,
    IdempotencyConflict,
    InvalidJob,
    InvalidTransition,
    Job,
    JobEvent,
    JobledgerError,
    JobNotFound,
    JobSpec,
    JobType,
    NonRetryableError,
    Payload,
    QuotaExceeded,
    Registry,
    RetryPolicy,
    Status,
    as_document,
    event_document,
    evolve,
    fold,
    from_snapshot,
    registry,
    to_snapshot,
)
from ledger.domain import job as commands
from ledger.leader import Leadership, lock_key
from ledger.settings import Settings
from ledger.store import Change, Ledger, PreparedSubmissions, change, utc_now
from ledger.submission import Submission, check_org, job_id_for_key, to_spec
from ledger.writer import BatchWriter

__all__ = [
    "DATABASE_DOWN",
    "EVENT_TYPES",
    "TRANSITIONS",
    "BatchWriter",
    "Change",
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
    "Leadership",
    "Ledger",
    "NonRetryableError",
    "Payload",
    "PreparedSubmissions",
    "QuotaExceeded",
    "Registry",
    "RetryPolicy",
    "Settings",
    "Status",
    "Submission",
    "as_document",
    "change",
    "check_org",
    "commands",
    "ensure_database",
    "event_document",
    "evolve",
    "fold",
    "from_snapshot",
    "job_id_for_key",
    "lock_key",
    "registry",
    "to_snapshot",
    "to_spec",
    "utc_now",
]
