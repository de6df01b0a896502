"""Jobs owed by other jobs' fates: the organisation hears of every failed job."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from ledger.domain.events import JSON
from ledger.domain.job import Job
from ledger.domain.status import Status


def failure_notice(job: Job) -> tuple[UUID, JSON] | None:
    """The `notify.send` job owed to the organisation when `job` has just failed.

    Its id is derived from the job and the version at which it failed, so the
    notice is submitted once however often the append is retried; a failed
    notice does not notify about itself.
    """
    if job.status is not Status.FAILED or job.type == "notify.send":
        return None
    error = job.last_error or {}
    payload: JSON = {
        "kind": "job_failed",
        "subject": f"{job.type} job {job.id} failed after {job.attempts} attempt(s)",
        "message": f"{error.get('type', 'error')}: {error.get('message', '')}",
        "job_id": str(job.id),
    }
    return uuid5(NAMESPACE_URL, f"jobledger:/jobs/{job.id}/failed/{job.version}"), payload
