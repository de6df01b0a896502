"""The reaper: attempts of lost workers are recorded as failed (`lost_worker`) and retried.

Workers renew `jl_jobs.lease_until` for their running attempts; a lease that
expired means the worker died or hung. The reaper records the attempt as
failed with reason `lost_worker` (retryable, so the retry policy applies, or
`cancelled` if a cancel was requested) in the ledger. A late result from the
lost worker then fails the ledger's version check.

It also reclaims stream messages idle for longer than a lease (their
consumer is gone): a job still queued is published again, any other message
is acknowledged and dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime
from uuid import UUID

import anyio
import structlog

from consumers.dispatcher import fetch, publish_queued
from consumers.outages import REDIS_DOWN
from consumers.streams import Message, Streams
from ledger import (
    Change,
    ConcurrencyConflict,
    InvalidJob,
    Job,
    JobEvent,
    Ledger,
    RetryPolicy,
    Status,
    change,
    commands,
    utc_now,
)

log = structlog.get_logger("jobledger.reaper")

# The database's clock, the one workers renew leases with (`now() + lease`).
SELECT_EXPIRED = """
SELECT job_id, version FROM jl_jobs
WHERE status = 'running' AND lease_until < now()
ORDER BY lease_until LIMIT %s
"""
SELECT_STATUS = "SELECT job_id, status FROM jl_jobs WHERE job_id = ANY(%s)"
CONSUMER = "reaper"


def lost_attempt(job: Job, policy: RetryPolicy, now: datetime) -> list[JobEvent]:
    """The running attempt of `job` failed: its worker was lost (retryable, per the policy)."""
    started = job.started_at or now
    return commands.fail_attempt(
        job,
        job.attempts,
        reason="lost_worker",
        error_type="lost_worker",
        message=f"worker {job.worker} stopped renewing its lease",
        retryable=True,
        duration_ms=round((now - started).total_seconds() * 1000, 3),
        policy=policy,
        now=now,
    )


class Reaper:
    """`run()` until cancelled: expired leases every `period_s`, idle messages every lease."""

    def __init__(
        self,
        ledger: Ledger,
        streams: Streams,
        *,
        lease_s: float,
        stream_names: Sequence[str] = (),
        batch_size: int = 500,
    ) -> None:
        self.ledger = ledger
        self.streams = streams
        self.lease_s = lease_s
        self.stream_names = list(stream_names)
        self.batch_size = batch_size
        self.period_s = min(max(lease_s / 4, 0.05), 1.0)
        self.reaped = 0

    async def run(self) -> None:
        last_claim = anyio.current_time()
        while True:
            await self.reap_expired()
            if anyio.current_time() - last_claim >= self.lease_s / 2:
                with suppress(*REDIS_DOWN):  # Redis away: the reconcile watch takes over
                    await self.reclaim_idle()
                last_claim = anyio.current_time()
            await anyio.sleep(self.period_s)

    async def reap_expired(self) -> int:
        """Record every attempt whose lease expired as lost; the number recorded."""
        rows = await fetch(self.ledger, SELECT_EXPIRED, (self.batch_size,))
        if not rows:
            return 0
        versions = {row["job_id"]: row["version"] for row in rows}
        reaped = await anyio.to_thread.run_sync(self._fail_lost, versions)
        self.reaped += reaped
        return reaped

    def _fail_lost(self, versions: dict[UUID, int]) -> int:
        now = utc_now()
        jobs = self.ledger.load_many(list(versions))
        changes = [
            change(job, self._lost(job, now))
            for job in jobs.values()
            if job.version == versions[job.id] and job.status is Status.RUNNING
            and job.attempt_running
        ]  # fmt: skip
        if not changes:
            return 0
        try:
            self.ledger.append(changes)
        except ConcurrencyConflict:
            changes = self._fail_one_by_one(changes)
        for c in changes:
            _log_lost(c)
        return len(changes)

    def _fail_one_by_one(self, changes: Sequence[Change]) -> list[Change]:
        """A worker finished some of these meanwhile: its outcome stands. The ones recorded."""
        done = []
        for c in changes:
            try:
                self.ledger.append([c])
            except ConcurrencyConflict:
                continue
            done.append(c)
        return done

    def _lost(self, job: Job, now: datetime) -> list[JobEvent]:
        return lost_attempt(job, self._policy(job), now)

    def _policy(self, job: Job) -> RetryPolicy:
        try:
            return self.ledger.registry.get(job.type).policy(self.ledger.retry_delays_s)
        except InvalidJob:  # a type this process does not know: default delays
            return RetryPolicy(delays_s=self.ledger.retry_delays_s or RetryPolicy().delays_s)

    async def reclaim_idle(self) -> int:
        """Take over messages idle for longer than a lease; re-dispatch or drop them."""
        min_idle_ms = int(self.lease_s * 1000)
        claimed = await self.streams.claim_idle(CONSUMER, self.stream_names, min_idle_ms)
        if not claimed:
            return 0
        return await self._settle(claimed)

    async def _settle(self, claimed: Sequence[Message]) -> int:
        ids = list({m.job.id for m in claimed})
        rows = await fetch(self.ledger, SELECT_STATUS, (ids,))
        queued = [row["job_id"] for row in rows if row["status"] == Status.QUEUED.value]
        republished = await publish_queued(self.ledger, self.streams, queued)
        await self.streams.ack(claimed)
        if claimed:
            log.info("reclaimed idle messages", messages=len(claimed), republished=republished)
        return len(claimed)


def _log_lost(c: Change) -> None:
    assert c.before is not None
    log.info(
        "attempt_lost",
        job_id=str(c.after.id),
        type=c.after.type,
        org=c.after.org,
        attempt=c.before.attempts,
        worker=c.before.worker,
        status=c.after.status.value,
    )
