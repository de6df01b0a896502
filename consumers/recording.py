"""What a worker writes to the ledger: attempt starts and outcomes, a batch at a time.

A batch is decided on the states the worker holds (the message's snapshot for
a start, the started job for an outcome) and appended in one call. Only if the
ledger refuses it (a job moved on: a duplicate message, a cancel request, a
reaper) is each item tried on its own, reading the job back where needed; an
item that no longer applies is dropped (None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import anyio
import structlog

from consumers import attempts
from consumers.attempts import Attempt, Outcome
from ledger import (
    BatchWriter,
    ConcurrencyConflict,
    InvalidTransition,
    Job,
    JobEvent,
    JobType,
    Ledger,
    RetryPolicy,
    Status,
    change,
    commands,
    utc_now,
)

log = structlog.get_logger("jobledger.worker")

RETRY_PAUSE_S = 1.0
Decide = Callable[[Job], list[JobEvent]]


@dataclass(frozen=True, slots=True)
class Recorder:
    ledger: Ledger
    writer: BatchWriter
    worker: str
    lease_s: float
    retry_delays_s: tuple[float, ...] | None
    types: dict[str, JobType]
    policies: dict[str, RetryPolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in self.types.items():
            self.policies[name] = kind.policy(self.retry_delays_s)

    async def start(self, jobs: Sequence[Job]) -> list[Job | None]:
        """Start an attempt of each job (as the messages carry them), all in one append."""
        now = utc_now()

        def decide(job: Job) -> list[JobEvent]:
            if job.status is not Status.QUEUED:
                raise InvalidTransition(job.id, job.status.value, "start an attempt")
            return commands.start_attempt(job, self.worker, self.lease_s, now)

        return await self._append_all([(job, decide) for job in jobs])

    async def finish(self, ended: Sequence[tuple[Attempt, Outcome]]) -> list[Job | None]:
        """Record how each attempt ended; None where the attempt is no longer this worker's.

        Attempts whose job moved on meanwhile (`stale`: a cancel request) are
        decided on the job read back; the others on the state this worker holds.
        """
        now = utc_now()
        results: list[Job | None] = [None] * len(ended)
        held: list[int] = []
        async with anyio.create_task_group() as group:
            for index, (attempt, outcome) in enumerate(ended):
                if outcome.kind == "lost":
                    continue
                if attempt.stale:
                    decide = self._decider(attempt, outcome, now)
                    group.start_soon(self._one, results, index, attempt.job, decide, True)
                else:
                    held.append(index)
            items = [(ended[i][0].job, self._decider(*ended[i], now)) for i in held]
            for index, after in zip(held, await self._append_all(items), strict=True):
                results[index] = after
        return results

    def _decider(self, attempt: Attempt, outcome: Outcome, now: datetime) -> Decide:
        policy = self.policies[attempt.job.type]
        number = attempt.number

        def decide(job: Job) -> list[JobEvent]:
            if job.attempts != number or not job.attempt_running:
                raise InvalidTransition(job.id, job.status.value, f"end attempt {number}")
            return attempts.outcome_events(job, number, outcome, policy, now)

        return decide

    async def _append_all(self, items: Sequence[tuple[Job, Decide]]) -> list[Job | None]:
        """All in one append; if the ledger refuses, each on its own."""
        if not items:
            return []
        try:
            changes = [change(job, decide(job)) for job, decide in items]
            return list(await self.writer.append(changes))
        except (InvalidTransition, ConcurrencyConflict):
            pass
        results: list[Job | None] = [None] * len(items)
        async with anyio.create_task_group() as group:
            for index, (job, decide) in enumerate(items):
                group.start_soon(self._one, results, index, job, decide, False)
        return results

    async def _one(
        self, results: list[Job | None], index: int, job: Job, decide: Decide, fresh: bool
    ) -> None:
        """Decide on the held state, else on the state read back; None if it no longer applies."""
        for pause in (0.0, 0.0, RETRY_PAUSE_S, RETRY_PAUSE_S):
            if pause:
                await anyio.sleep(pause)
            try:
                if fresh:
                    job = await anyio.to_thread.run_sync(self.ledger.load, job.id)
                [results[index]] = await self.writer.append([change(job, decide(job))])
                return
            except InvalidTransition:
                if fresh:
                    return  # the job's current state does not allow it
            except ConcurrencyConflict:
                pass
            except Exception:
                log.exception("ledger_append_failed", job_id=str(job.id))
            fresh = True
