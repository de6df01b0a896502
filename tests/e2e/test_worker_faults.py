"""Workers under faults and at full width: kill -9, graceful shutdown, 100 attempts at once."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobledger.wiring import load_job_types
from ledger import Ledger, Settings, Status
from tests.e2e.test_worker_support import (
    DELAYS,
    at,
    history,
    role_env,
    roles,
    submit,
    wait_for,
)


@pytest.fixture
def ledger_with_delays(settings: Settings) -> Iterator[Ledger]:
    ledger = Ledger(
        settings.database_url,
        registry=load_job_types(settings),
        retry_delays_s=DELAYS,
        active_limit=10_000,
    )
    yield ledger
    ledger.close()


def test_a_worker_killed_mid_attempt_loses_it_and_another_worker_completes_the_job(
    settings: Settings, ledger_with_delays: Ledger, tmp_path: Path
) -> None:
    ledger = ledger_with_delays
    env = role_env(settings, JOBLEDGER_LEASE_S="1")
    with roles(env, tmp_path, "dispatcher", "worker") as (_, doomed):
        job = submit(ledger, payload={"sleep_ms": 1500})
        running = wait_for(ledger, job.id, "running")
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait()
        with roles(env, tmp_path, "worker"):
            done = wait_for(ledger, job.id, "succeeded", timeout=20)
    events = history(ledger, job.id)
    failed = next(e for e in events if e["type"] == "attempt_failed")
    assert failed["data"]["reason"] == "lost_worker"
    assert failed["data"]["attempt"] == 1
    starts = [e for e in events if e["type"] == "attempt_started"]
    assert [s["data"]["worker"] != running.worker for s in starts] == [False, True]
    assert done.attempts == 2


def test_sigterm_lets_short_attempts_finish_and_records_the_rest_as_shutdown_failures(
    settings: Settings, ledger_with_delays: Ledger, tmp_path: Path
) -> None:
    ledger = ledger_with_delays
    env = role_env(settings, JOBLEDGER_SHUTDOWN_GRACE_S="0.5")
    with roles(env, tmp_path, "dispatcher", "worker") as (_, worker):
        short = submit(ledger, payload={"sleep_ms": 200})
        long = submit(ledger, payload={"sleep_ms": 30_000})
        wait_for(ledger, short.id, "running")
        wait_for(ledger, long.id, "running")
        asked = time.monotonic()
        assert worker.terminate() == 0
        assert time.monotonic() - asked < 5
        assert ledger.load(short.id).status is Status.SUCCEEDED
        cut = ledger.load(long.id)
    assert cut.status in (Status.RETRYING, Status.QUEUED)  # retried per the policy
    assert cut.last_error is not None
    assert cut.last_error["type"] == "shutdown"
    events = history(ledger, long.id)
    failed = next(i for i, e in enumerate(events) if e["type"] == "attempt_failed")
    assert events[failed]["data"]["reason"] == "shutdown"
    assert events[failed]["data"]["retryable"] is True
    assert events[failed + 1]["type"] == "retry_scheduled"


def test_one_worker_runs_a_hundred_attempts_at_the_same_time(
    settings: Settings, ledger_with_delays: Ledger, tmp_path: Path
) -> None:
    ledger = ledger_with_delays
    jobs = [submit(ledger, payload={"sleep_ms": 1500}) for _ in range(100)]
    with roles(role_env(settings), tmp_path, "dispatcher", "worker"):
        for job in jobs:
            wait_for(ledger, job.id, "succeeded", timeout=30)
    starts, ends = [], []
    for job in jobs:
        events = history(ledger, job.id)
        starts.append(at(next(e for e in events if e["type"] == "attempt_started")))
        ends.append(at(next(e for e in events if e["type"] == "attempt_succeeded")))
    assert max(starts) < min(ends), "every attempt started before the first one ended"
