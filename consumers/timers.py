"""Timers: scheduled jobs and retries become `queued` when their time comes, never before.

The due times live in the ledger's job index (`jl_jobs.due_at`, written in the
same transaction as the events), so they survive any loss of Redis. The timer
sleeps until the earliest due time; a NOTIFY from the ledger (a new event may
bring an earlier one) wakes it to look again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from uuid import UUID

import anyio
import structlog

from consumers.dispatcher import Wakeup, fetch
from ledger import Change, ConcurrencyConflict, Job, Ledger, Status, change, commands, utc_now

log = structlog.get_logger("jobledger.timers")

# The due jobs, and one more row (no job id) with the next due time after them:
# only what is needed, however many jobs wait for later.
SELECT_DUE = """
(SELECT job_id, due_at FROM jl_jobs
 WHERE status IN ('scheduled', 'retrying') AND due_at <= %(now)s
 ORDER BY due_at LIMIT %(limit)s)
UNION ALL
(SELECT NULL::uuid, due_at FROM jl_jobs
 WHERE status IN ('scheduled', 'retrying') AND due_at > %(now)s
 ORDER BY due_at LIMIT 1)
"""
WAITING = (Status.SCHEDULED, Status.RETRYING)


class Timers:
    """`run()` until cancelled; `fire_due()` enqueues what is due now."""

    def __init__(
        self,
        ledger: Ledger,
        wakeup: Wakeup,
        *,
        batch_size: int = 500,
        fallback_poll_s: float = 5.0,
        settle_s: float = 0.02,
    ) -> None:
        self.ledger = ledger
        self.wakeup = wakeup
        self.batch_size = batch_size
        self.fallback_poll_s = fallback_poll_s
        self.settle_s = settle_s  # after a NOTIFY, wait this long so bursts cost one query
        self.fired = 0

    async def run(self) -> None:
        while True:
            next_due = await self.fire_due()
            timeout = self.fallback_poll_s
            if next_due is not None:
                timeout = min(timeout, (next_due - utc_now()).total_seconds())
            started = anyio.current_time()
            if timeout > 0 and await self.wakeup.wait(timeout):
                remaining = timeout - (anyio.current_time() - started)
                await anyio.sleep(max(0.0, min(self.settle_s, remaining)))

    async def fire_due(self) -> datetime | None:
        """Enqueue the due jobs; return the next due time (now if more are due), or None."""
        now = utc_now()
        rows = await fetch(self.ledger, SELECT_DUE, {"now": now, "limit": self.batch_size})
        due = [row["job_id"] for row in rows if row["job_id"] is not None]
        if due:
            self.fired += await anyio.to_thread.run_sync(self._enqueue, due)
        if len(due) == self.batch_size:
            return now
        later = [row["due_at"] for row in rows if row["job_id"] is None]
        return later[0] if later else None

    def _enqueue(self, job_ids: Sequence[UUID]) -> int:
        """Append `queued` for the due jobs in one transaction (one by one after a conflict)."""
        for _ in range(3):
            now = utc_now()
            changes = due_changes(self.ledger.load_many(job_ids).values(), now)
            try:
                return len(self.ledger.append(changes))
            except ConcurrencyConflict:
                continue  # a job was cancelled or moved meanwhile: decide again on fresh state
        enqueued = 0
        for job_id in job_ids:
            now = utc_now()
            for c in due_changes(self.ledger.load_many([job_id]).values(), now):
                try:
                    self.ledger.append([c])
                except ConcurrencyConflict:
                    log.info("job moved while being enqueued", job_id=str(job_id))
                    continue
                enqueued += 1
        return enqueued


def due_changes(jobs: Iterable[Job], now: datetime) -> list[Change]:
    """`queued` for each of these jobs that waits and whose time has come."""
    return [
        change(job, commands.enqueue(job, now))
        for job in jobs
        if job.status in WAITING and (job.due_at is None or job.due_at <= now)
    ]
