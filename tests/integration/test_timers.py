"""Timers against real PostgreSQL: scheduled jobs and retries are queued when due, never before."""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import pytest

from consumers.dispatcher import LedgerListener
from consumers.timers import Timers
from ledger import Job, Ledger, RetryPolicy, Settings, Status, change, commands, utc_now
from tests.control_plane_support import queued_at, start, statuses, submit

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.control_plane_fixtures"]  # fixtures: anyio_backend


@pytest.fixture
async def timers(ledger: Ledger, settings: Settings) -> AsyncIterator[Timers]:
    """Timers running in the background; their poll is slow, so only NOTIFY wakes them early."""
    listener = LedgerListener(settings.database_url, ledger.events_table)
    timers = Timers(ledger, listener.subscribe(), fallback_poll_s=60.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.run)
        tg.start_soon(timers.run)
        await anyio.sleep(0.3)
        yield timers
        tg.cancel_scope.cancel()


async def wait_until_queued(ledger: Ledger, jobs: list[Job], timeout_s: float) -> None:
    ids = [j.id for j in jobs]
    with anyio.fail_after(timeout_s):
        while True:
            found = await anyio.to_thread.run_sync(statuses, ledger, ids)
            if set(found.values()) == {Status.QUEUED}:
                return
            await anyio.sleep(0.05)


async def test_scheduled_jobs_are_queued_at_their_run_at_never_before(
    ledger: Ledger, timers: Timers
) -> None:
    far = await anyio.to_thread.run_sync(
        lambda: submit(ledger, run_at=utc_now() + timedelta(hours=1))
    )
    now = utc_now()
    due = [
        (await anyio.to_thread.run_sync(
            lambda i=i: submit(ledger, run_at=now + timedelta(seconds=0.4 + 0.15 * i))
        ))[0]
        for i in range(5)
    ]  # fmt: skip

    await wait_until_queued(ledger, due, timeout_s=10)

    lateness = []
    for job in due:
        [at] = await anyio.to_thread.run_sync(queued_at, ledger, job.id)
        assert at >= job.run_at, "queued before its time"
        lateness.append((at - job.run_at).total_seconds())
    # The contract's bound is 1 s; the design's is 100 ms at light load (median, as
    # this shared machine stalls now and then).
    print("timer lateness s:", sorted(lateness))
    assert max(lateness) < 1.0
    assert statistics.median(lateness) < 0.1
    assert (await anyio.to_thread.run_sync(statuses, ledger, [far[0].id])) == {
        far[0].id: Status.SCHEDULED
    }


async def test_a_retry_is_queued_once_its_backoff_has_elapsed(
    ledger: Ledger, timers: Timers
) -> None:
    def fail_first_attempt() -> Job:
        [job] = submit(ledger)
        running = start(ledger, job)
        events = commands.fail_attempt(
            running, 1, reason="error", error_type="ValueError", message="boom",
            retryable=True, duration_ms=1.0, policy=RetryPolicy(delays_s=(0.3,)), now=utc_now(),
        )  # fmt: skip
        [retrying] = ledger.append([change(running, events)])
        return retrying

    retrying = await anyio.to_thread.run_sync(fail_first_attempt)
    assert retrying.status is Status.RETRYING
    assert retrying.next_attempt_at is not None

    await wait_until_queued(ledger, [retrying], timeout_s=10)

    at = (await anyio.to_thread.run_sync(queued_at, ledger, retrying.id))[-1]
    assert at >= retrying.next_attempt_at
    assert at - retrying.updated_at >= timedelta(seconds=0.3)


async def test_a_scheduled_job_cancelled_before_its_time_is_never_queued(
    ledger: Ledger, timers: Timers
) -> None:
    def submit_and_cancel() -> Job:
        [job] = submit(ledger, run_at=utc_now() + timedelta(seconds=0.3))
        ledger.append([change(job, commands.request_cancel(job, "cli", utc_now()))])
        return job

    job = await anyio.to_thread.run_sync(submit_and_cancel)
    await anyio.sleep(0.8)

    assert (await anyio.to_thread.run_sync(statuses, ledger, [job.id]))[job.id] is Status.CANCELLED
    assert await anyio.to_thread.run_sync(queued_at, ledger, job.id) == []


async def test_many_due_jobs_are_queued_in_batches(ledger: Ledger, settings: Settings) -> None:
    jobs = submit(ledger, 30, run_at=utc_now() + timedelta(milliseconds=200))
    await anyio.sleep(0.3)
    timers = Timers(ledger, LedgerListener(settings.database_url, "unused").subscribe(),
                    batch_size=8)  # fmt: skip

    while (next_due := await timers.fire_due()) is not None and next_due <= utc_now():
        pass

    assert timers.fired == 30
    assert set(statuses(ledger, [j.id for j in jobs]).values()) == {Status.QUEUED}
