"""A ledger workload for the projection tests: jobs driven through every lifecycle.

Jobs are submitted and moved on with the ledger's pure commands and
`Ledger.append` (many jobs per transaction), so thousands of events land in a
second or two without workers or Redis.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import timedelta
from uuid import UUID, uuid4

import psycopg

from ledger import Job, JobEvent, Ledger, RetryPolicy, Status, change, commands, utc_now
from projections import Follower
from tests.factories import a_spec

ORGS = ("acme", "globex", "initech")
TYPES = ("diag.echo", "rss.sync", "content.publish")
PRIORITIES = ("high", "normal", "low")
POLICY = RetryPolicy(delays_s=(0.0, 0.0, 0.0), jitter=0.0)

Step = Callable[[Job, random.Random], list[JobEvent]]


def _start(job: Job, rng: random.Random) -> list[JobEvent]:
    return commands.start_attempt(job, "w1", 30.0, utc_now())


def _succeed(job: Job, rng: random.Random) -> list[JobEvent]:
    duration = rng.choice((0.3, 4.0, 40.0, 700.0, 3_000.0, 700_000.0))
    return commands.succeed(job, job.attempts, {"n": job.attempts}, duration, utc_now())


def _fail(retryable: bool) -> Step:
    def fail(job: Job, rng: random.Random) -> list[JobEvent]:
        return commands.fail_attempt(
            job, job.attempts, reason="error", error_type="Boom", message="boom",
            retryable=retryable, duration_ms=rng.uniform(1, 90), policy=POLICY, now=utc_now(),
        )  # fmt: skip

    return fail


def _enqueue(job: Job, rng: random.Random) -> list[JobEvent]:
    return commands.enqueue(job, utc_now())


def _cancel(job: Job, rng: random.Random) -> list[JobEvent]:
    return commands.request_cancel(job, "cli", utc_now())


def _confirm_cancel(job: Job, rng: random.Random) -> list[JobEvent]:
    return commands.confirm_cancel(job, job.attempts, utc_now())


def _retry(job: Job, rng: random.Random) -> list[JobEvent]:
    return commands.manual_retry(job, "cli", utc_now())


# Lifecycles after submission, chosen round-robin: every status and event type occurs.
PLANS: tuple[tuple[Step, ...], ...] = (
    (_start, _succeed),
    (_start, _succeed),
    (_start, _succeed),
    (_start, _fail(True), _enqueue, _start, _succeed),
    (_start, _fail(False)),
    (_start, _fail(False), _retry, _start),
    (_cancel,),
    (_start, _cancel, _confirm_cancel),
    (_start, _fail(True), _enqueue),
    (),  # stays queued (or scheduled, for the tenth submitted an hour ahead)
    (),
)


def submit_jobs(ledger: Ledger, n: int, *, chunk: int = 500, seed: int = 1) -> list[Job]:
    """Append n new jobs (a tenth scheduled an hour ahead), `chunk` per transaction."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for start in range(0, n, chunk):
        changes = []
        for i in range(start, min(n, start + chunk)):
            now = utc_now()
            spec = a_spec(
                org=ORGS[rng.randrange(len(ORGS))],
                job_type=TYPES[rng.randrange(len(TYPES))],
                priority=PRIORITIES[i % 3],
                run_at=now + timedelta(hours=1) if i % len(PLANS) == len(PLANS) - 2 else None,
                max_attempts=4,
            )
            changes.append(change(None, commands.submit(uuid4(), spec, now), enforce_quota=False))
        jobs += ledger.append(changes)
    return jobs


def drive(ledger: Ledger, jobs: Sequence[Job], *, chunk: int = 500, seed: int = 2) -> list[Job]:
    """Move each job through its plan (by its index), one step per job per transaction."""
    rng = random.Random(seed)
    current = {job.id: job for job in jobs}
    plans = {
        job.id: () if job.status is Status.SCHEDULED else PLANS[i % len(PLANS)]
        for i, job in enumerate(jobs)
    }
    for round_ in range(max(len(p) for p in PLANS)):
        due: list[UUID] = [i for i in current if round_ < len(plans[i])]
        for start in range(0, len(due), chunk):
            changes = []
            for job_id in due[start : start + chunk]:
                job = current[job_id]
                events = plans[job_id][round_](job, rng)
                changes.append(change(job, events, enforce_quota=False))
            for after in ledger.append(changes):
                if after.id in current:
                    current[after.id] = after
    return list(current.values())


def workload(ledger: Ledger, jobs: int, *, chunk: int = 500, seed: int = 1) -> list[Job]:
    """Submit `jobs` jobs and drive them all; about 4.6 events per job."""
    return drive(ledger, submit_jobs(ledger, jobs, chunk=chunk, seed=seed), chunk=chunk, seed=seed)


VIEW_ROWS = {
    "jobs": "SELECT job_id, seq, org, job_type, status, priority, created_at, updated_at,"
    " version, state::text FROM jl_view_jobs ORDER BY job_id",
    "counts": "SELECT org, job_type, status, n FROM jl_view_counts ORDER BY 1, 2, 3",
    "metrics": "SELECT job_type, metric, n FROM jl_view_metrics ORDER BY 1, 2",
}


def view_rows(database_url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every view, in a fixed order, to compare two builds."""
    with psycopg.connect(database_url) as conn:
        return {name: conn.execute(query).fetchall() for name, query in VIEW_ROWS.items()}


def tracked_position(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT position FROM jl_view_tracking").fetchone()
    assert row is not None
    return int(row[0])


def catch_up(ledger: Ledger, database_url: str, *, batch_size: int = 1000) -> int:
    """Follow the log to its end in batches; the number of events applied."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        follower = Follower(ledger, conn, page_size=batch_size)
        total = 0
        while n := follower.step():
            total += n
        follower.close()
    return total
