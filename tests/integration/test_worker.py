"""The worker in-process against real PostgreSQL and Redis: leases, lost attempts, priorities."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime

import anyio
import redis.asyncio as aioredis

from consumers.streams import StreamKeys, Streams
from consumers.worker import Worker, WorkerConfig
from jobledger.wiring import load_job_types
from ledger import Job, Ledger, Settings, Status, change, commands, utc_now


@asynccontextmanager
async def running_worker(
    settings: Settings, ledger: Ledger, config: WorkerConfig
) -> AsyncIterator[tuple[Worker, Streams]]:
    client = aioredis.Redis.from_url(settings.redis_url)
    streams = Streams(client, StreamKeys(settings.redis_prefix))
    try:
        async with (
            Worker(ledger, streams, load_job_types(settings), config) as worker,
            anyio.create_task_group() as group,
        ):
            group.start_soon(worker.run)
            yield worker, streams
            worker.shutdown_now()
    finally:
        await client.aclose()


def queued(ledger: Ledger, priority: str = "normal", **payload: object) -> Job:
    spec = ledger.spec_for("diag.echo", "acme", dict(payload))
    job, _ = ledger.submit(replace(spec, priority=priority))
    return job


async def until(condition: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    with anyio.fail_after(within_s):
        while not await condition():  # noqa: ASYNC110  (polls the database)
            await anyio.sleep(0.05)


def lease_until(ledger: Ledger, job: Job) -> datetime:
    with ledger.connection() as conn:
        row = conn.execute("SELECT lease_until FROM jl_jobs WHERE job_id = %s", (job.id,))
        value: datetime = row.fetchone()["lease_until"]  # type: ignore[index]
    return value


def test_a_running_attempts_lease_is_renewed_while_its_handler_runs(
    settings: Settings, ledger: Ledger
) -> None:
    job = queued(ledger, sleep_ms=2500)

    async def main() -> None:
        config = WorkerConfig(lease_s=1.0)
        async with running_worker(settings, ledger, config) as (_, streams):
            await streams.publish([job])
            await until(lambda: _is(ledger, job, Status.RUNNING))
            first = ledger.load(job.id).lease_until
            assert first is not None
            await anyio.sleep(1.5)
            assert lease_until(ledger, job) > first
            assert ledger.load(job.id).status is Status.RUNNING  # not reaped

    anyio.run(main)


def test_an_attempt_declared_lost_elsewhere_is_stopped_and_its_result_dropped(
    settings: Settings, ledger: Ledger
) -> None:
    job = queued(ledger, sleep_ms=1500)

    async def main() -> None:
        async with running_worker(settings, ledger, WorkerConfig()) as (worker, streams):
            await streams.publish([job])
            await until(lambda: _is(ledger, job, Status.RUNNING))
            running = ledger.load(job.id)
            policy = ledger.registry.get("diag.echo").policy((60.0,))
            lost = commands.fail_attempt(
                running, 1, reason="lost_worker", error_type="lost_worker", message="test",
                retryable=True, duration_ms=0.0, policy=policy, now=utc_now(),
            )  # fmt: skip
            ledger.append([change(running, lost)])
            asked = time.monotonic()
            await until(lambda: _no_attempts(worker), within_s=3)
            assert time.monotonic() - asked < 1.5  # stopped, long before its 1.5 s sleep ends
            await anyio.sleep(0.2)

    anyio.run(main)
    events = [e.TYPE for e in ledger.history(job.id)]
    assert events[-2:] == ["attempt_failed", "retry_scheduled"]
    assert "attempt_succeeded" not in events


def test_high_priority_messages_are_taken_before_normal_and_low_ones(
    settings: Settings, ledger: Ledger
) -> None:
    low = [queued(ledger, "low") for _ in range(3)]
    normal = [queued(ledger, "normal") for _ in range(3)]
    high = [queued(ledger, "high") for _ in range(3)]

    async def main() -> None:
        client = aioredis.Redis.from_url(settings.redis_url)
        await Streams(client, StreamKeys(settings.redis_prefix)).publish([*low, *normal, *high])
        await client.aclose()
        config = WorkerConfig(concurrency=1)
        async with running_worker(settings, ledger, config):
            await until(lambda: _all(ledger, [*low, *normal, *high], Status.SUCCEEDED))

    anyio.run(main)
    started = {
        job.id: next(e.timestamp for e in ledger.history(job.id) if e.TYPE == "attempt_started")
        for job in [*low, *normal, *high]
    }
    order = sorted(started, key=started.__getitem__)
    assert set(order[:3]) == {j.id for j in high}
    assert set(order[3:6]) == {j.id for j in normal}


async def _is(ledger: Ledger, job: Job, status: Status) -> bool:
    return await _all(ledger, [job], status)


async def _all(ledger: Ledger, jobs: list[Job], status: Status) -> bool:
    def check() -> bool:
        with ledger.connection() as conn:
            rows = conn.execute(
                "SELECT count(*) AS n FROM jl_jobs WHERE job_id = ANY(%s) AND status = %s",
                ([j.id for j in jobs], status.value),
            ).fetchone()
        return rows is not None and rows["n"] == len(jobs)

    return await anyio.to_thread.run_sync(check)


async def _no_attempts(worker: Worker) -> bool:
    return not worker.active


def test_messages_read_ahead_are_handed_back_at_shutdown_and_run_by_another_worker(
    settings: Settings, ledger: Ledger
) -> None:
    jobs = [queued(ledger, sleep_ms=300) for _ in range(3)]

    async def main() -> None:
        config = WorkerConfig(concurrency=1, prefetch=2, shutdown_grace_s=5.0)
        async with running_worker(settings, ledger, config) as (first, streams):
            await streams.publish(jobs)
            await until(lambda: _any(ledger, jobs, Status.RUNNING))
            first.stop()  # one attempt runs; two messages wait in its read-ahead
            await until(lambda: _no_attempts(first))
        async with running_worker(settings, ledger, WorkerConfig()):
            await until(lambda: _all(ledger, jobs, Status.SUCCEEDED))

    anyio.run(main)
    for job in jobs:
        events = [e.TYPE for e in ledger.history(job.id)]
        assert events.count("attempt_started") == 1


async def _any(ledger: Ledger, jobs: list[Job], status: Status) -> bool:
    checks = [await _is(ledger, job, status) for job in jobs]
    return any(checks)
