"""The dispatcher against real PostgreSQL and Redis: what it publishes, where, and when."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

from consumers.dispatcher import Dispatcher, LedgerListener, Wakeup
from consumers.streams import StreamKeys, Streams
from ledger import Ledger, Settings, change, commands, utc_now
from tests.control_plane_support import (
    catch_up,
    stream_messages,
    submit,
)

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.control_plane_fixtures"]  # fixtures: anyio_backend, clean_redis, streams


async def test_each_queued_job_is_published_once_to_the_stream_of_its_type_and_priority(
    ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    normal = submit(ledger, 5)
    high = submit(ledger, 2, priority="high")
    low = submit(ledger, 1, priority="low")
    later = submit(ledger, 1, run_at=utc_now().replace(year=2100))

    dispatcher = Dispatcher(
        ledger, streams, Wakeup(), database_url=settings.database_url, page_size=3
    )
    await catch_up(dispatcher)

    messages = stream_messages(settings.redis_url, settings.redis_prefix)
    by_job = Counter(m["job"]["id"] for m in messages)
    assert by_job == Counter(str(j.id) for j in normal + high + low)
    assert str(later[0].id) not in by_job
    keys = StreamKeys(settings.redis_prefix)
    for m in messages:
        assert m["stream"] == keys.stream("diag.echo", m["job"]["priority"])
        assert m["job"]["status"] == "queued"
        assert m["job"]["version"] == 2  # submitted, queued: the version a worker appends after


async def test_a_job_cancelled_before_dispatch_is_not_published(
    ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    kept, cancelled = submit(ledger, 2)
    ledger.append([change(cancelled, commands.request_cancel(cancelled, "cli", utc_now()))])

    await catch_up(Dispatcher(ledger, streams, Wakeup(), database_url=settings.database_url))

    ids = [m["job"]["id"] for m in stream_messages(settings.redis_url, settings.redis_prefix)]
    assert ids == [str(kept.id)]


async def test_a_restarted_dispatcher_resumes_after_its_stored_position(
    ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    first = submit(ledger, 3)
    await catch_up(Dispatcher(ledger, streams, Wakeup(), database_url=settings.database_url))
    second = submit(ledger, 2)

    restarted = Dispatcher(ledger, streams, Wakeup(), database_url=settings.database_url)
    position = await restarted.load_position()
    await catch_up(restarted)

    assert position > 0
    ids = Counter(
        m["job"]["id"] for m in stream_messages(settings.redis_url, settings.redis_prefix)
    )
    assert ids == Counter(str(j.id) for j in first + second)


async def test_a_running_dispatcher_is_woken_by_the_ledgers_notify_not_its_poll(
    ledger: Ledger, settings: Settings, streams: Streams
) -> None:
    listener = LedgerListener(settings.database_url, ledger.events_table)
    dispatcher = Dispatcher(
        ledger,
        streams,
        listener.subscribe(),
        database_url=settings.database_url,
        fallback_poll_s=60.0,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.run)
        tg.start_soon(dispatcher.run)
        await anyio.sleep(0.5)  # both idle: the poll alone would not look again for a minute
        [job] = await anyio.to_thread.run_sync(submit, ledger)
        with anyio.fail_after(10):
            while dispatcher.published < 1:  # noqa: ASYNC110  (polls the dispatcher's count)
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    ids = [m["job"]["id"] for m in stream_messages(settings.redis_url, settings.redis_prefix)]
    assert ids == [str(job.id)]


async def test_a_first_start_publishes_a_backlog_once_and_a_start_after_a_loss_republishes_it(
    ledger: Ledger, settings: Settings, clean_redis: None
) -> None:
    """The log covers a first start; only a start after Redis lost its data reconciles."""
    from consumers.control_plane import ControlPlane
    from tests.control_plane_support import delete_prefix, published_ids

    jobs = await anyio.to_thread.run_sync(lambda: submit(ledger, 5))

    async def run_plane(seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await ControlPlane(ledger, settings).run()

    await run_plane(2.0)
    assert Counter(published_ids(settings.redis_url, settings.redis_prefix)) == Counter(
        j.id for j in jobs
    )

    delete_prefix(settings.redis_url, settings.redis_prefix)  # Redis lost everything
    await run_plane(2.0)
    assert Counter(published_ids(settings.redis_url, settings.redis_prefix)) == Counter(
        j.id for j in jobs
    )
