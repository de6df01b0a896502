"""Pure row changes of the job-status views: no database."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import uuid4

from ledger import Job, JobEvent, RetryPolicy, as_document, commands, fold, to_snapshot
from projections.job_status import (
    DURATION_COUNT,
    DURATION_SUM_US,
    apply,
    bucket_metric,
    document,
    project,
)
from tests.factories import T0, a_spec

POLICY = RetryPolicy(delays_s=(60.0,), jitter=0.0)


def step_events(step: str, job: Job, now: datetime) -> list[JobEvent]:
    match step:
        case "start":
            return commands.start_attempt(job, "w1", 30.0, now)
        case "succeed":
            return commands.succeed(job, job.attempts, {"ok": 1}, 700.0, now)
        case "fail":
            return commands.fail_attempt(
                job, job.attempts, reason="error", error_type="Boom", message="boom",
                retryable=True, duration_ms=3.0, policy=POLICY, now=now,
            )  # fmt: skip
        case "enqueue":
            return commands.enqueue(job, now + timedelta(minutes=2))
        case "cancel":
            return commands.request_cancel(job, "cli", now)
        case "retry":
            return commands.manual_retry(job, "cli", now)
    raise ValueError(step)


def history_of(*steps: str) -> list[JobEvent]:
    """A job's events through the named steps, one second apart."""
    now = T0
    events = commands.submit(uuid4(), a_spec(max_attempts=2), now)
    job = fold(events)
    for step in steps:
        assert job is not None
        now += timedelta(seconds=1)
        new = step_events(step, job, now)
        events += new
        job = fold(new, job)
    return events


def positioned(events: list[JobEvent], first: int = 10) -> list[tuple[int, JobEvent]]:
    return [(first + 2 * i, e) for i, e in enumerate(events)]  # positions have gaps


def test_a_row_starts_at_the_position_of_its_submitted_event_and_folds_like_the_ledger() -> None:
    events = history_of("start", "fail", "enqueue", "start", "succeed")
    row = None
    for position, event in positioned(events, first=41):
        row = apply(row, position, event)
    assert row is not None
    assert row.seq == 41
    assert row.job == fold(events)


def test_the_job_object_of_a_row_is_the_ledgers_in_every_status() -> None:
    histories = {
        "queued": history_of(),
        "running": history_of("start"),
        "retrying": history_of("start", "fail"),
        "succeeded": history_of("start", "succeed"),
        "failed": history_of("start", "fail", "enqueue", "start", "fail"),
        "cancelled": history_of("cancel"),
        "queued again": history_of("cancel", "retry"),
    }
    scheduled = commands.submit(uuid4(), a_spec(run_at=T0 + timedelta(hours=1)), T0)
    histories["scheduled"] = scheduled
    for name, events in histories.items():
        job = fold(events)
        assert isinstance(job, Job)
        assert document(to_snapshot(job)) == as_document(job), name
        assert list(document(to_snapshot(job))) == list(as_document(job)), "key order"


def test_a_batch_counts_each_job_once_in_its_final_status() -> None:
    first = history_of("start", "succeed")
    second = history_of("start")
    events = positioned(first + second)
    batch = project(events, {}, position=0)
    assert batch.position == events[-1][0]
    assert batch.counts == {
        ("acme", "diag.echo", "succeeded"): 1,
        ("acme", "diag.echo", "running"): 1,
    }
    assert {row.job.status.value for row in batch.rows.values()} == {"succeeded", "running"}


def test_a_later_batch_moves_the_count_from_the_old_status_to_the_new() -> None:
    events = positioned(history_of("start", "succeed"))
    head = project(events[:2], {}, position=0)  # submitted, queued
    tail = project(events[2:], head.rows, position=head.position)
    assert tail.counts == {
        ("acme", "diag.echo", "queued"): -1,
        ("acme", "diag.echo", "succeeded"): 1,
    }


def test_a_change_that_returns_to_the_same_status_leaves_no_count_delta() -> None:
    events = positioned(history_of("cancel", "retry"))
    head = project(events[:2], {}, position=0)  # queued
    tail = project(events[2:], head.rows, position=head.position)  # cancelled, then queued
    assert tail.counts == {}
    assert next(iter(tail.rows.values())).job.status.value == "queued"


def test_metrics_count_lifecycle_events_and_bucket_attempt_durations() -> None:
    events = positioned(history_of("start", "fail", "enqueue", "start", "succeed"))
    batch = project(events, {}, position=0)
    t = "diag.echo"
    assert batch.metrics[(t, "submitted")] == 1
    assert batch.metrics[(t, "started")] == 2
    assert batch.metrics[(t, "attempts_failed")] == 1
    assert batch.metrics[(t, "succeeded")] == 1
    assert (t, "failed") not in batch.metrics
    assert batch.metrics[(t, DURATION_COUNT)] == 2
    assert batch.metrics[(t, DURATION_SUM_US)] == 703_000
    assert batch.metrics[(t, bucket_metric(0))] == 1  # 3 ms <= 5 ms
    assert batch.metrics[(t, bucket_metric(7))] == 1  # 700 ms <= 1 s


def test_any_split_of_the_log_into_batches_ends_in_the_same_rows_and_totals() -> None:
    events = positioned(
        history_of("start", "succeed") + history_of("start", "fail", "enqueue") + history_of()
    )
    whole = project(events, {}, position=0)
    for cut in range(1, len(events)):
        rows: dict = {}
        counts: dict = {}
        metrics: dict = {}
        position = 0
        for part in (events[:cut], events[cut:]):
            batch = project(part, rows, position)
            rows.update(batch.rows)
            position = batch.position
            for key, n in batch.counts.items():
                counts[key] = counts.get(key, 0) + n
            for key, n in batch.metrics.items():
                metrics[key] = metrics.get(key, 0) + n
        assert rows == whole.rows, cut
        assert {k: n for k, n in counts.items() if n} == whole.counts, cut
        assert metrics == whole.metrics, cut
