"""The direct publish after each commit, and the dispatcher as its safety net (real PG + Redis)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest
import redis
import structlog.testing
from redis.crc import key_slot

from consumers.dispatcher import Dispatcher, LedgerListener, Wakeup
from consumers.publisher import AsyncDirectPublisher, DirectPublisher, script_arguments
from consumers.streams import StreamKeys, Streams
from consumers.timers import Timers
from ledger import (
    BatchWriter,
    Job,
    Ledger,
    RetryPolicy,
    Settings,
    Status,
    change,
    commands,
    fold,
    utc_now,
)
from tests.control_plane_support import (
    catch_up,
    free_port,
    private_redis,
    published_ids,
    start,
    stream_messages,
    submit,
)
from tests.factories import a_spec

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.control_plane_fixtures"]  # fixtures: anyio_backend, clean_redis, streams


def dispatcher_for(
    ledger: Ledger, settings: Settings, streams: Streams, wakeup: Wakeup | None = None, **kw: Any
) -> Dispatcher:
    """A dispatcher of this test's database; woken by `wakeup` (a listener's) if given."""
    wakeup = wakeup or Wakeup()
    return Dispatcher(ledger, streams, wakeup, database_url=settings.database_url, **kw)


def markers_left(settings: Settings) -> list[bytes]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return list(client.scan_iter(match="{" + settings.redis_prefix + "}:pub:*", count=1000))
    finally:
        client.close()


def once_each(settings: Settings, jobs: Sequence[Job]) -> bool:
    return Counter(published_ids(settings.redis_url, settings.redis_prefix)) == Counter(
        j.id for j in jobs
    )


async def test_a_submitted_job_is_in_its_stream_with_no_dispatcher_running(
    publishing_ledger: Ledger, settings: Settings, clean_redis: None
) -> None:
    normal = submit(publishing_ledger, 3)
    [high] = submit(publishing_ledger, priority="high")
    later = submit(publishing_ledger, run_at=utc_now() + timedelta(hours=1))

    messages = stream_messages(settings.redis_url, settings.redis_prefix)

    assert once_each(settings, [*normal, high])
    keys = StreamKeys(settings.redis_prefix)
    for m in messages:
        assert m["stream"] == keys.stream("diag.echo", m["job"]["priority"])
        assert (m["job"]["status"], m["job"]["version"]) == ("queued", 2)
    assert later[0].id not in published_ids(settings.redis_url, settings.redis_prefix)
    client = redis.Redis.from_url(settings.redis_url)
    groups = client.xinfo_groups(keys.stream("diag.echo", "high"))
    client.close()
    assert [g["name"] for g in groups] == [b"workers"]  # a worker's first read finds it


async def test_after_the_direct_publish_the_dispatcher_adds_no_second_message(
    publishing_ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    jobs = submit(publishing_ledger, 5) + submit(publishing_ledger, 2, priority="low")
    dispatcher = dispatcher_for(publishing_ledger, settings, streams, page_size=3)

    await catch_up(dispatcher)

    assert once_each(settings, jobs)
    assert dispatcher.published == 0
    assert markers_left(settings) == []  # the dispatcher consumed every one


async def test_after_the_dispatcher_the_direct_publish_adds_no_second_message(
    ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    """The dispatcher may read a commit before its appender publishes: the later one skips."""
    held: list[Job] = []
    ledger.publisher = held.extend  # the direct publish, delayed until after the dispatcher
    jobs = submit(ledger, 4)
    dispatcher = dispatcher_for(ledger, settings, streams)
    await catch_up(dispatcher)
    assert dispatcher.published == 4

    DirectPublisher(StreamKeys(settings.redis_prefix), settings.redis_url)(held)

    assert once_each(settings, jobs)
    assert markers_left(settings) == []


async def test_a_direct_publish_landing_while_the_dispatcher_looks_leaves_no_marker(
    ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    """Between the dispatcher's look at its markers and its load, the job is published, started."""
    held: list[Job] = []
    ledger.publisher = held.extend
    [job] = submit(ledger)
    dispatcher = dispatcher_for(ledger, settings, streams)
    first_look = dispatcher.once.consume

    async def look_then_let_the_direct_path_run(pairs: Sequence[tuple[UUID, int]]) -> list[bool]:
        found = await first_look(pairs)
        if held:
            DirectPublisher(StreamKeys(settings.redis_prefix), settings.redis_url)(held)
            start(ledger, held.pop())  # a worker took the message at once
        return found

    dispatcher.once.consume = look_then_let_the_direct_path_run  # type: ignore[method-assign]
    await catch_up(dispatcher)

    assert dispatcher.published == 0
    assert once_each(settings, [job])
    assert markers_left(settings) == []


async def test_with_a_running_dispatcher_every_job_submitted_gets_exactly_one_message(
    publishing_ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    ledger = publishing_ledger
    listener = LedgerListener(settings.database_url, ledger.events_table)
    dispatcher = dispatcher_for(
        ledger,
        settings,
        streams,
        listener.subscribe(),
        page_size=7,
        linger_s=0.0,  # read as soon as woken: races the direct publishes as hard as it can
    )

    def submit_in_batches() -> list[Job]:
        sizes = (1, 30, 1, 1, 50, 2, 1, 40)  # one organisation each: a quota is 50 active jobs
        return [job for n, size in enumerate(sizes) for job in submit(ledger, size, org=f"o{n}")]

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.run)
        tg.start_soon(dispatcher.run)
        await anyio.sleep(0.3)
        jobs = await anyio.to_thread.run_sync(submit_in_batches)
        with anyio.fail_after(10):
            while markers_left(settings):  # noqa: ASYNC110  (polls Redis)
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()

    assert once_each(settings, jobs)


async def test_when_the_direct_publish_fails_the_dispatcher_publishes_the_job(
    ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    ledger.publisher = DirectPublisher(StreamKeys(settings.redis_prefix), dead)
    with structlog.testing.capture_logs() as logs:
        jobs = submit(ledger, 3)  # the commit stands though nothing could be published

    assert published_ids(settings.redis_url, settings.redis_prefix) == []
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "direct publish failed; the dispatcher will publish"
    ]  # once, not once per append
    assert all(s is Status.QUEUED for s in (ledger.load(j.id).status for j in jobs))

    dispatcher = dispatcher_for(ledger, settings, streams)
    await catch_up(dispatcher)
    assert dispatcher.published == 3
    assert once_each(settings, jobs)


async def test_an_append_succeeds_when_its_publisher_raises(
    ledger: Ledger, settings: Settings
) -> None:
    def broken(jobs: Sequence[Job]) -> None:
        raise RuntimeError("publisher bug")

    ledger.publisher = broken
    with structlog.testing.capture_logs() as logs:
        [job] = submit(ledger)
        [again] = ledger.append([change(job, commands.request_cancel(job, "cli", utc_now()))])

    assert ledger.load(job.id).status is Status.CANCELLED
    assert again.status is Status.CANCELLED
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert "publisher bug" in warning["error"]


def test_after_a_failure_the_direct_publisher_stands_aside_for_a_moment(ledger: Ledger) -> None:
    [job] = submit(ledger)
    publisher = DirectPublisher(
        StreamKeys("unused"), f"redis://127.0.0.1:{free_port()}/0", pause_s=60.0
    )
    with pytest.raises(redis.ConnectionError):
        publisher([job])
    began = time.monotonic()
    publisher([job])  # no attempt, no error: the dispatcher covers it
    assert time.monotonic() - began < 0.05


def test_only_jobs_an_append_queued_are_handed_to_the_publisher(ledger: Ledger) -> None:
    """Starts, cancels and schedules hand nothing; submits, enqueues and manual retries do."""
    handed: list[list[tuple[UUID, int]]] = []
    ledger.publisher = lambda jobs: handed.append([(j.id, j.version) for j in jobs])
    [job] = submit(ledger)
    [waiting] = submit(ledger, run_at=utc_now() + timedelta(seconds=0.05))
    running = start(ledger, job)
    ledger.append([change(running, commands.request_cancel(running, "cli", utc_now()))])
    time.sleep(0.06)
    [queued] = ledger.append([change(waiting, commands.enqueue(waiting, utc_now()))])
    [cancelled] = ledger.append([change(queued, commands.request_cancel(queued, "cli", utc_now()))])
    [retried] = ledger.append(
        [change(cancelled, commands.manual_retry(cancelled, "cli", utc_now()))]
    )

    assert cancelled.status is Status.CANCELLED
    assert handed == [[(job.id, 2)], [(waiting.id, 2)], [(waiting.id, retried.version)]]


async def test_the_notice_of_a_failed_job_is_published_by_the_append_that_failed_it(
    publishing_ledger: Ledger, settings: Settings, clean_redis: None
) -> None:
    [job] = submit(publishing_ledger, max_attempts=1)
    running = start(publishing_ledger, job)
    failing = commands.fail_attempt(
        running, 1, reason="error", error_type="EchoError", message="boom",
        retryable=True, duration_ms=1.0, policy=RetryPolicy((60.0,)), now=utc_now(),
    )  # fmt: skip
    [failed, notice] = publishing_ledger.append([change(running, failing)])

    assert failed.status is Status.FAILED
    messages = stream_messages(settings.redis_url, settings.redis_prefix)
    notices = [m for m in messages if m["job"]["type"] == "notify.send"]
    assert [m["job"]["id"] for m in notices] == [str(notice.id)]


async def test_a_job_the_timers_queue_is_published_directly(
    publishing_ledger: Ledger, settings: Settings, clean_redis: None
) -> None:
    [job] = submit(publishing_ledger, run_at=utc_now() + timedelta(seconds=0.2))
    await anyio.sleep(0.3)

    assert await Timers(publishing_ledger, Wakeup()).fire_due() is None

    [message] = stream_messages(settings.redis_url, settings.redis_prefix)
    assert (message["job"]["id"], message["job"]["version"]) == (str(job.id), 2)


def test_the_direct_publish_survives_redis_forgetting_its_script_and_data() -> None:
    keys = StreamKeys("jlscript")
    with private_redis() as server:
        publisher = DirectPublisher(keys, server.url)
        client = redis.Redis.from_url(server.url)
        jobs = [_a_queued_job(), _a_queued_job()]
        publisher(jobs[:1])
        server.flushall()
        client.script_flush()
        publisher(jobs[1:])  # NOSCRIPT: loaded again; the stream and its group created again
        entries = client.xlen(keys.stream("diag.echo", "normal"))
        groups = client.xinfo_groups(keys.stream("diag.echo", "normal"))
        client.close()
        publisher.close()
    assert entries == 1
    assert [g["name"] for g in groups] == [b"workers"]


def test_every_key_the_script_names_is_in_the_streams_hash_slot() -> None:
    keys = StreamKeys("jl")
    jobs = [_a_queued_job(priority=p) for p in ("high", "normal", "low")]
    names, _ = script_arguments(keys, [(j, j.version) for j in jobs], 1000)
    assert len(names) == 6
    assert {key_slot(n.encode()) for n in names} == {key_slot(b"{jl}:q:diag.echo:normal")}


def _a_queued_job(**overrides: Any) -> Job:
    job = fold(commands.submit(uuid4(), a_spec(**overrides), utc_now()))
    assert job is not None
    return job


async def test_appends_of_the_batch_writer_are_published_without_blocking_the_event_loop(
    publishing_ledger: Ledger, settings: Settings, clean_redis: None
) -> None:
    def blocking_publish(jobs: Sequence[Job]) -> None:
        raise AssertionError("the writer must not publish with the blocking client")

    publishing_ledger.publisher = blocking_publish
    async with BatchWriter(publishing_ledger) as writer:
        created = await writer.submit_many([(a_spec(), None), (a_spec(priority="high"), None)])

    assert once_each(settings, [job for job, _ in created])
    assert len(markers_left(settings)) == 2  # each waits for the dispatcher's half of the protocol


async def test_a_failed_publish_of_the_batch_writer_leaves_the_commit_standing(
    publishing_ledger: Ledger, settings: Settings
) -> None:
    publishing_ledger.async_publisher = AsyncDirectPublisher(
        StreamKeys(settings.redis_prefix), f"redis://127.0.0.1:{free_port()}/0"
    )
    with structlog.testing.capture_logs() as logs:
        async with BatchWriter(publishing_ledger) as writer:
            [(job, created)] = await writer.submit_many([(a_spec(), None)])

    assert created
    assert publishing_ledger.load(job.id).status is Status.QUEUED
    assert [e["event"] for e in logs] == ["direct publish failed; the dispatcher will publish"]
    assert job.id not in published_ids(settings.redis_url, settings.redis_prefix)
