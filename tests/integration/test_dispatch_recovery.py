"""Recovery on real PostgreSQL and Redis: lost workers, idle messages, duplicates, reconcile."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest

from consumers.control_plane import stream_names
from consumers.reaper import Reaper
from consumers.reconcile import reconcile
from consumers.streams import GROUP, Streams
from ledger import (
    ConcurrencyConflict,
    Job,
    Ledger,
    Settings,
    Status,
    change,
    commands,
    utc_now,
)
from tests.control_plane_support import (
    JOBLEDGER,
    delete_prefix,
    published_ids,
    start,
    stream_messages,
    submit,
)

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.control_plane_fixtures"]  # fixtures: anyio_backend, clean_redis, streams


def expire_lease(ledger: Ledger, job: Job) -> None:
    with ledger.connection() as conn:
        conn.execute(
            "UPDATE jl_jobs SET lease_until = now() - interval '1 second' WHERE job_id = %s",
            (job.id,),
        )


def reaper_for(ledger: Ledger, streams: Streams, lease_s: float = 1.0) -> Reaper:
    return Reaper(ledger, streams, lease_s=lease_s, stream_names=stream_names(ledger, streams.keys))


async def test_an_attempt_whose_lease_expired_is_recorded_as_lost_and_retried(
    ledger: Ledger, streams: Streams
) -> None:
    [job] = submit(ledger)
    running = start(ledger, job, lease_s=0.2)
    expire_lease(ledger, running)

    assert await reaper_for(ledger, streams).reap_expired() == 1

    after = ledger.load(job.id)
    assert after.status is Status.RETRYING
    assert after.last_error == {
        "type": "lost_worker",
        "message": "worker w1 stopped renewing its lease",
    }
    failed = [e for e in ledger.history(job.id) if e.TYPE == "attempt_failed"]
    assert [(e.attempt, e.reason, e.retryable) for e in failed] == [(1, "lost_worker", True)]  # type: ignore[attr-defined]


async def test_a_late_result_from_the_lost_worker_is_rejected(
    ledger: Ledger, streams: Streams
) -> None:
    [job] = submit(ledger)
    running = start(ledger, job)
    expire_lease(ledger, running)
    await reaper_for(ledger, streams).reap_expired()

    late = commands.succeed(running, 1, {"echo": None}, 5.0, utc_now())
    with pytest.raises(ConcurrencyConflict):
        ledger.append([change(running, late)])
    assert ledger.load(job.id).status is Status.RETRYING


async def test_a_lost_attempt_of_a_job_whose_cancel_was_requested_ends_cancelled(
    ledger: Ledger, streams: Streams
) -> None:
    [job] = submit(ledger)
    running = start(ledger, job)
    ledger.append([change(running, commands.request_cancel(running, "cli", utc_now()))])
    expire_lease(ledger, running)

    await reaper_for(ledger, streams).reap_expired()

    assert ledger.load(job.id).status is Status.CANCELLED


async def test_a_lease_the_worker_renewed_is_not_reaped(ledger: Ledger, streams: Streams) -> None:
    [job] = submit(ledger)
    start(ledger, job, lease_s=0.01)
    with ledger.connection() as conn:  # what a worker's renewal does
        conn.execute(
            "UPDATE jl_jobs SET lease_until = %s WHERE job_id = %s",
            (utc_now() + timedelta(seconds=30), job.id),
        )

    assert await reaper_for(ledger, streams).reap_expired() == 0
    assert ledger.load(job.id).status is Status.RUNNING


async def test_idle_messages_of_a_gone_consumer_are_redispatched_if_queued_and_dropped_if_not(
    ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    waiting, started = submit(ledger, 2)
    await streams.publish([waiting, started])
    read = await streams.read("dead-worker", [streams.keys.stream("diag.echo", "normal")], 10, None)
    assert len(read) == 2  # both now pending on a consumer that will never ack
    start(ledger, started)

    reaper = reaper_for(ledger, streams, lease_s=0.001)
    assert await reaper.reclaim_idle() == 2

    messages = stream_messages(settings.redis_url, settings.redis_prefix)
    assert [m["job"]["id"] for m in messages] == [str(waiting.id)]  # a fresh message
    assert {m["id"] for m in messages}.isdisjoint({m.id for m in read})
    pending = await streams.client.xpending(streams.keys.stream("diag.echo", "normal"), GROUP)
    assert pending["pending"] == 0


async def test_two_consumers_racing_on_one_snapshot_start_one_attempt(ledger: Ledger) -> None:
    """A duplicated stream message: both copies carry the same version, one start wins."""
    [job] = submit(ledger)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def consume(worker: str) -> None:
        events = commands.start_attempt(job, worker, 30.0, utc_now())
        barrier.wait()
        try:
            ledger.append([change(job, events)])
            outcomes.append("started")
        except ConcurrencyConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=consume, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(outcomes) == ["conflict", "started"]
    starts = [e for e in ledger.history(job.id) if e.TYPE == "attempt_started"]
    assert len(starts) == 1


async def test_reconcile_republishes_every_queued_job_after_redis_lost_its_streams(
    ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    queued = submit(ledger, 4) + submit(ledger, 2, priority="high")
    running = start(ledger, submit(ledger)[0])
    await streams.publish(queued[:2])
    delete_prefix(settings.redis_url, settings.redis_prefix)  # what a FLUSHALL does to us

    count = await reconcile(ledger, streams, stream_names(ledger, streams.keys))

    assert count == 6
    assert Counter(published_ids(settings.redis_url, settings.redis_prefix)) == Counter(
        j.id for j in queued
    )
    assert running.id not in published_ids(settings.redis_url, settings.redis_prefix)
    groups = await streams.client.xinfo_groups(streams.keys.stream("diag.echo", "low"))
    assert [g["name"] for g in groups] == [GROUP.encode()]


def test_the_reconcile_command_prints_how_many_jobs_it_redispatched(
    ledger: Ledger, settings: Settings, env: dict[str, str], clean_redis: None
) -> None:
    import subprocess

    submit(ledger, 3)
    done = subprocess.run(
        [*JOBLEDGER, "reconcile"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "re-dispatched 3 queued job(s)"
    assert len(published_ids(settings.redis_url, settings.redis_prefix)) == 3


async def test_the_periodic_safety_net_republishes_only_when_the_streams_hold_fewer_messages(
    ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    import anyio

    from consumers.reconcile import RedisWatch

    jobs = submit(ledger, 3)
    [first, *_] = await streams.publish(jobs)
    watch = RedisWatch(
        ledger, streams, stream_names(ledger, streams.keys), interval_s=0.3, check_s=0.05
    )
    await streams.client.set(watch.marker, "1")  # Redis has lost nothing

    async def watch_for(seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await watch.run()

    await watch_for(1.0)
    assert watch.reconciled == 0  # as many messages as queued jobs: no duplicates

    await streams.client.xdel(streams.keys.stream("diag.echo", "normal"), first)
    await watch_for(1.0)
    assert watch.reconciled == 3
    assert Counter(published_ids(settings.redis_url, settings.redis_prefix)) == Counter(
        {jobs[0].id: 1, jobs[1].id: 2, jobs[2].id: 2}
    )


def test_the_reconcile_command_says_in_one_line_that_redis_is_unreachable(
    env: dict[str, str],
) -> None:
    import subprocess

    from tests.control_plane_support import free_port

    done = subprocess.run(
        [*JOBLEDGER, "reconcile"],
        env={**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("jobledger: error: cannot reach Redis at redis://127.0.0.1:")
