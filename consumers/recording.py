"""What a worker writes to the ledger: attempt starts and outcomes, a batch at a time.

A batch is decided on the states the worker holds (the message's snapshot for
a start, the started job for an outcome) and appended in one call. If the
ledger refuses it because some jobs moved on (a duplicate message, a cancel
request, a reaper), one query of the job index finds which; those are read
back (one query) and decided again, the rest appended as they were. An item
that no longer applies to its job's current state is dropped (None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import anyio
import structlog

from consumers import attempts
from consumers.attempts import Attempt, Outcome
from consumers.outages import first_line
from ledger import (
    DATABASE_DOWN,
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

ROUNDS = 4
VERSIONS = "SELECT job_id, version FROM jl_jobs WHERE job_id = ANY(%s)"
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
        """Start an attempt of each job (as the messages carry them), all in one append.

        Raises one of `DATABASE_DOWN` if the ledger stayed unreachable through
        every round: the caller still holds the messages and can hand them back.
        """
        now = utc_now()

        def decide(job: Job) -> list[JobEvent]:
            if job.status is not Status.QUEUED:
                raise InvalidTransition(job.id, job.status.value, "start an attempt")
            return commands.start_attempt(job, self.worker, self.lease_s, now)

        return await self._append_all([(job, decide, False) for job in jobs])

    async def finish(self, ended: Sequence[tuple[Attempt, Outcome]]) -> list[Job | None]:
        """Record how each attempt ended; None where the attempt is no longer this worker's.

        Attempts whose job moved on meanwhile (`stale`: a cancel request) are
        decided on the job read back; the others on the state this worker holds.
        """
        now = utc_now()
        items = [
            (attempt.job, self._decider(attempt, outcome, now), attempt.stale)
            for attempt, outcome in ended
            if _keep(outcome)
        ]
        try:
            recorded = await self._append_all(items)
        except DATABASE_DOWN:
            # The jobs stay `running` in the ledger; once their leases run out
            # the reaper records the attempts as lost and they are retried.
            recorded = [None] * len(items)
        results = iter(recorded)
        return [next(results) if _keep(outcome) else None for _, outcome in ended]

    def _decider(self, attempt: Attempt, outcome: Outcome, now: datetime) -> Decide:
        policy = self.policies[attempt.job.type]
        number = attempt.number

        def decide(job: Job) -> list[JobEvent]:
            if job.attempts != number or not job.attempt_running:
                raise InvalidTransition(job.id, job.status.value, f"end attempt {number}")
            return attempts.outcome_events(job, number, outcome, policy, now)

        return decide

    async def _append_all(self, items: Sequence[tuple[Job, Decide, bool]]) -> list[Job | None]:
        """Decide and append every item; read back only the jobs that moved on."""
        results: dict[int, Job | None] = {}
        held, reread = _partition(items)
        outage: BaseException | None = None
        for _ in range(ROUNDS):
            if reread:
                held.update(await self._read_back(items, reread))
                results.update({i: None for i in reread if i not in held})
            reread = []
            decided: dict[int, list[JobEvent]] = {}
            for index, job in held.items():
                try:
                    decided[index] = items[index][1](job)
                except InvalidTransition:
                    if items[index][0] is job:
                        reread.append(index)  # decided on the held state: look again
                    else:
                        results[index] = None  # the job's current state does not allow it
            try:
                after = await self.writer.append([change(held[i], e) for i, e in decided.items()])
            except ConcurrencyConflict:
                moved = await self._moved({i: held[i] for i in decided})
                reread += moved
                held = {i: held[i] for i in decided if i not in moved}
                continue
            except Exception as e:
                outage = e if isinstance(e, DATABASE_DOWN) else None
                if outage is not None:
                    log.warning(
                        "ledger unreachable; appending again in 1 s",
                        changes=len(decided),
                        error=first_line(e),
                    )
                else:
                    log.exception("ledger_append_failed", changes=len(decided))
                await anyio.sleep(1.0)
                held = {i: held[i] for i in decided}
                continue
            outage = None
            results.update(zip(decided, after, strict=True))
            held = {}
            if not reread:
                break
        if held and outage is not None:
            raise outage
        return [results.get(i) for i in range(len(items))]

    async def _moved(self, held: dict[int, Job]) -> list[int]:
        """The items whose job's version in the ledger is no longer the one held."""

        def versions() -> dict[UUID, int]:
            ids = [job.id for job in held.values()]
            with self.ledger.connection() as conn:
                rows = conn.execute(VERSIONS, (ids,)).fetchall()
            return {row["job_id"]: row["version"] for row in rows}

        current = await anyio.to_thread.run_sync(versions)
        return [i for i, job in held.items() if current.get(job.id) != job.version]

    async def _read_back(
        self, items: Sequence[tuple[Job, Decide, bool]], indexes: list[int]
    ) -> dict[int, Job]:
        jobs = await anyio.to_thread.run_sync(
            self.ledger.load_many, [items[i][0].id for i in indexes]
        )
        return {i: jobs[items[i][0].id] for i in indexes if items[i][0].id in jobs}


def _partition(items: Sequence[tuple[Job, Decide, bool]]) -> tuple[dict[int, Job], list[int]]:
    """The items to decide on the state held, and those to read back first.

    A second item for the same job (a duplicated message) is in neither: dropped.
    """
    seen: set[UUID] = set()
    held: dict[int, Job] = {}
    reread: list[int] = []
    for index, (job, _, stale) in enumerate(items):
        if job.id not in seen:
            if stale:
                reread.append(index)
            else:
                held[index] = job
        seen.add(job.id)
    return held, reread


def _keep(outcome: Outcome) -> bool:
    """A lost attempt was recorded by whoever declared it lost: nothing to append."""
    return outcome.kind != "lost"
