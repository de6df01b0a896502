"""What the PostgreSQL ledger saves is what it replays: history, load, state_at, load_many."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import InvalidTransition, Job, JobEvent, Ledger, RetryPolicy, change
from ledger.domain import job as domain
from tests.factories import T0, a_spec

POLICY = RetryPolicy(delays_s=(1.0, 5.0), jitter=0.1)
STEPS = ("advance", "enqueue", "start", "succeed", "fail", "fail_final", "cancel", "confirm",
         "retry")  # fmt: skip


def decide(step: str, job: Job, now: Any) -> list[JobEvent]:
    match step:
        case "enqueue":
            return domain.enqueue(job, now)
        case "start":
            return domain.start_attempt(job, "w-1", 30.0, now)
        case "succeed":
            return domain.succeed(job, job.attempts, {"n": job.attempts}, 3.5, now)
        case "fail" | "fail_final":
            return domain.fail_attempt(
                job, job.attempts, reason="error", error_type="RuntimeError", message="boom",
                retryable=step == "fail", duration_ms=2.0, policy=POLICY, now=now,
            )  # fmt: skip
        case "cancel":
            return domain.request_cancel(job, "cli", now)
        case "confirm":
            return domain.confirm_cancel(job, job.attempts, now)
        case "retry":
            return domain.manual_retry(job, "cli", now)
    raise AssertionError(step)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    delay_s=st.sampled_from([None, 0.5, 10.0]),
    steps=st.lists(st.sampled_from(STEPS), max_size=14),
)
def test_what_is_saved_is_what_is_replayed(
    ledger: Ledger, delay_s: float | None, steps: list[str]
) -> None:
    org = f"o{uuid4().hex[:12]}"  # a fresh org per example: the quota never interferes
    now = T0
    run_at = T0 + timedelta(seconds=delay_s) if delay_s else None
    job_id = uuid4()
    appended = domain.submit(job_id, a_spec(org=org, run_at=run_at, max_attempts=3), now)
    ledger.append([change(None, appended)])
    for step in steps:
        now += timedelta(seconds=1.5)
        if step == "advance":
            now += timedelta(seconds=6)
            continue
        before = ledger.load(job_id)
        try:
            events = decide(step, before, now)
        except InvalidTransition:
            continue
        if events:
            ledger.append([change(before, events)])
            appended.extend(events)

    assert ledger.history(job_id) == appended
    expected = domain.fold(appended)
    assert ledger.load(job_id) == expected
    assert ledger.load_many([job_id, uuid4()]) == {job_id: expected}
    for event in appended:
        until_then = [e for e in appended if e.timestamp <= event.timestamp]
        assert ledger.state_at(job_id, event.timestamp) == domain.fold(until_then)
    with ledger.connection() as conn:
        row = conn.execute(
            "SELECT status, version, attempts FROM jl_jobs WHERE job_id = %s", (job_id,)
        ).fetchone()
    assert expected is not None
    assert row == {
        "status": expected.status.value, "version": expected.version,
        "attempts": expected.attempts,
    }  # fmt: skip


def test_the_log_lists_every_event_once_in_commit_order(ledger: Ledger) -> None:
    start = ledger.max_position()
    first, _ = ledger.submit(a_spec())
    ledger.execute(first.id, lambda j: domain.start_attempt(j, "w-1", 30.0, T0))
    second, _ = ledger.submit(a_spec())
    log = ledger.read_log(start)
    positions = [position for position, _ in log]
    assert positions == sorted(set(positions))
    assert [(e.originator_id, e.TYPE) for _, e in log] == [
        (first.id, "submitted"), (first.id, "queued"), (first.id, "attempt_started"),
        (second.id, "submitted"), (second.id, "queued"),
    ]  # fmt: skip
    assert ledger.max_position() == positions[-1]
    assert ledger.read_log(positions[1], limit=2) == log[2:4]
