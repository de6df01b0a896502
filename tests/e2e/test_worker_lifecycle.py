"""Job lifecycles end to end: a real dispatcher and worker process on real PostgreSQL and Redis.

One system (database, Redis prefix, `jobledger dispatcher`, `jobledger worker`)
serves the whole module; each test submits its own jobs and watches them.
Retry delays are 0.2 s and 0.4 s (so three attempts at most).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import anyio
import pytest
import redis.asyncio as aioredis

from consumers.streams import StreamKeys, Streams
from jobledger.wiring import load_job_types
from ledger import Ledger, Settings, change, commands, utc_now
from ledger.domain.notices import failure_notice
from tests.conftest import PG_SERVER, REDIS_SERVER, delete_prefix, fresh_prefix
from tests.e2e.test_worker_support import (
    DELAYS,
    Role,
    at,
    cloned_database,
    history,
    role_env,
    roles,
    status,
    submit,
    types_of,
    wait_for,
)


@dataclass
class System:
    settings: Settings
    ledger: Ledger
    worker: Role


@pytest.fixture(scope="module")
def system(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with cloned_database(template_db, PG_SERVER) as url:
        settings = Settings(
            database_url=url,
            redis_url=REDIS_SERVER,
            redis_prefix=fresh_prefix(),
            retry_delays_s=DELAYS,
            active_limit=10_000,
        )
        ledger = Ledger(url, registry=load_job_types(settings), retry_delays_s=DELAYS)
        logs = tmp_path_factory.mktemp("roles")
        with roles(role_env(settings), logs, "dispatcher", "worker") as (_, worker):
            yield System(settings, ledger, worker)
        ledger.close()
        delete_prefix(settings.redis_prefix)


def test_a_job_runs_once_and_succeeds_with_the_handlers_result(system: System) -> None:
    job = submit(system.ledger, payload={"result": {"n": 1}})
    done = wait_for(system.ledger, job.id, "succeeded")
    assert done.result == {"echo": {"n": 1}}
    assert done.attempts == 1
    assert types_of(history(system.ledger, job.id)) == [
        "submitted",
        "queued",
        "attempt_started",
        "attempt_succeeded",
    ]


def test_a_failing_attempt_is_retried_after_the_delay_then_succeeds(system: System) -> None:
    job = submit(system.ledger, payload={"fail_times": 1, "error": "flaky"})
    done = wait_for(system.ledger, job.id, "succeeded")
    events = history(system.ledger, job.id)
    assert done.attempts == 2
    failed = next(e for e in events if e["type"] == "attempt_failed")
    assert failed["data"]["reason"] == "error"
    assert failed["data"]["error"] == {"type": "EchoError", "message": "flaky"}
    second = [e for e in events if e["type"] == "attempt_started"][1]
    assert at(second) - at(failed) >= timedelta(seconds=DELAYS[0])


def test_a_job_whose_retries_run_out_fails_with_gaps_of_at_least_the_delays(
    system: System,
) -> None:
    job = submit(system.ledger, payload={"fail_times": 10})
    done = wait_for(system.ledger, job.id, "failed")
    events = history(system.ledger, job.id)
    assert done.attempts == len(DELAYS) + 1
    failures = [e for e in events if e["type"] == "attempt_failed"]
    starts = [e for e in events if e["type"] == "attempt_started"]
    assert [s["data"]["attempt"] for s in starts] == [1, 2, 3]
    for delay, failure, next_start in zip(DELAYS, failures[:-1], starts[1:], strict=True):
        assert at(next_start) - at(failure) >= timedelta(seconds=delay)
    assert types_of(events)[-2:] == ["attempt_failed", "failed"]


def test_a_non_retryable_error_fails_the_job_at_once(system: System) -> None:
    job = submit(system.ledger, payload={"fail_times": 5, "retryable": False, "error": "no"})
    done = wait_for(system.ledger, job.id, "failed")
    assert done.attempts == 1
    assert done.last_error == {"type": "NonRetryableError", "message": "no"}


def test_a_failed_jobs_organisation_is_notified_by_a_notice_job_that_runs(
    system: System,
) -> None:
    """Every failure submits a `notify.send` job; it must run, or it would hold a quota slot."""
    job = submit(system.ledger, payload={"fail_times": 5, "retryable": False, "error": "no"})
    done = wait_for(system.ledger, job.id, "failed")
    notice = failure_notice(done)
    assert notice is not None
    notified = wait_for(system.ledger, notice[0], "succeeded")
    assert notified.org == done.org
    assert notified.result == {"channel": "log"}


def test_an_attempt_past_its_timeout_is_stopped_and_recorded_as_timed_out(
    system: System,
) -> None:
    job = submit(system.ledger, payload={"sleep_ms": 30_000}, timeout_s=0.3, max_attempts=1)
    done = wait_for(system.ledger, job.id, "failed", timeout=10)
    failed = next(e for e in history(system.ledger, job.id) if e["type"] == "attempt_failed")
    assert failed["data"]["reason"] == "timeout"
    assert 300 <= failed["data"]["duration_ms"] < 3000
    assert done.last_error is not None
    assert done.last_error["type"] == "timeout"


def test_a_delayed_job_starts_at_its_time_and_not_before(system: System) -> None:
    job = submit(system.ledger, delay_s=0.6)
    assert status(system.ledger, job.id) == "scheduled"
    done = wait_for(system.ledger, job.id, "succeeded")
    started = next(e for e in history(system.ledger, job.id) if e["type"] == "attempt_started")
    assert at(started) >= done.run_at
    assert at(started) - done.run_at < timedelta(seconds=1)


def test_a_scheduled_job_cancelled_before_its_time_never_starts(system: System) -> None:
    job = submit(system.ledger, delay_s=0.5)
    system.ledger.execute(job.id, lambda j: commands.request_cancel(j, "test", utc_now()))
    time.sleep(1.0)
    assert status(system.ledger, job.id) == "cancelled"
    assert "attempt_started" not in types_of(history(system.ledger, job.id))


def test_a_queued_job_cancelled_before_a_worker_takes_it_never_starts(system: System) -> None:
    """Its stream message arrives after the cancel; the worker drops it."""
    spec = system.ledger.spec_for("diag.echo", "acme", {})
    submitted = commands.submit(uuid.uuid4(), spec, utc_now())
    queued = commands.apply_all(None, submitted)
    cancel = commands.request_cancel(queued, "test", utc_now())
    [cancelled] = system.ledger.append([change(None, [*submitted, *cancel])])

    async def publish_the_queued_snapshot() -> None:
        client = aioredis.Redis.from_url(system.settings.redis_url)
        await Streams(client, StreamKeys(system.settings.redis_prefix)).publish([queued])
        await client.aclose()

    anyio.run(publish_the_queued_snapshot)
    time.sleep(1.0)
    assert status(system.ledger, cancelled.id) == "cancelled"
    assert "attempt_started" not in types_of(history(system.ledger, cancelled.id))


def test_cancelling_a_running_job_stops_its_handler_within_a_second(system: System) -> None:
    job = submit(system.ledger, payload={"sleep_ms": 30_000})
    wait_for(system.ledger, job.id, "running")
    asked = time.monotonic()
    system.ledger.execute(job.id, lambda j: commands.request_cancel(j, "test", utc_now()))
    wait_for(system.ledger, job.id, "cancelled", timeout=5)
    assert time.monotonic() - asked < 1.5
    assert types_of(history(system.ledger, job.id))[-2:] == ["cancel_requested", "cancelled"]


def test_a_manual_retry_of_a_failed_job_runs_it_again_with_a_new_budget(system: System) -> None:
    job = submit(system.ledger, payload={"fail_times": 1, "retryable": False})
    wait_for(system.ledger, job.id, "failed")
    system.ledger.execute(job.id, lambda j: commands.manual_retry(j, "test", utc_now()))
    done = wait_for(system.ledger, job.id, "succeeded")
    assert done.attempts == 2
    assert done.max_attempts == 2 * (len(DELAYS) + 1)


def test_a_duplicated_stream_message_starts_one_attempt(system: System) -> None:
    job = submit(system.ledger, payload={"sleep_ms": 300})

    async def publish_again() -> None:
        client = aioredis.Redis.from_url(system.settings.redis_url)
        await Streams(client, StreamKeys(system.settings.redis_prefix)).publish([job, job])
        await client.aclose()

    anyio.run(publish_again)
    wait_for(system.ledger, job.id, "succeeded")
    time.sleep(0.3)
    assert types_of(history(system.ledger, job.id)).count("attempt_started") == 1


def test_the_worker_logs_one_line_per_attempt_end(system: System) -> None:
    job = submit(system.ledger, payload={"fail_times": 1})
    wait_for(system.ledger, job.id, "succeeded")
    time.sleep(0.2)
    lines = [line for line in system.worker.log().splitlines() if str(job.id) in line]
    assert len(lines) == 2
    assert '"outcome": "error"' in lines[0]
    assert '"outcome": "succeeded"' in lines[1]
    for key in ("job_id", "type", "org", "attempt", "duration_ms"):
        assert f'"{key}"' in lines[1]
