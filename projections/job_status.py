"""Pure row changes of the job-status views: (row, event) -> row, and a batch's tallies.

A row is the job's state (the ledger's own `evolve` folds it) plus `seq`, the
log position of the job's `submitted` event: unique, growing, and the same in
every rebuild, so it orders the list newest first and makes its cursors
stable. Counts and metrics change by deltas that depend only on the events, so
any split of the log into batches ends in the same tables.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ledger import Job, JobEvent, evolve, from_snapshot, to_snapshot

# Upper bounds of the attempt-duration histogram, in seconds; one more bucket is +Inf.
DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0
)  # fmt: skip
COUNTERS = ("submitted", "started", "succeeded", "attempts_failed", "failed")
DURATION_COUNT = "duration_count"
DURATION_SUM_US = "duration_sum_us"  # integer microseconds: sums are exact in any order


def bucket_metric(index: int) -> str:
    """The metrics-table key of one (non-cumulative) histogram bucket; the last is +Inf."""
    return f"duration_bucket_{index:02d}"


_BUCKET_METRICS = tuple(bucket_metric(i) for i in range(len(DURATION_BUCKETS_S) + 1))
_COUNTED = {  # event type -> counter it bumps
    "submitted": "submitted",
    "attempt_started": "started",
    "attempt_succeeded": "succeeded",
    "attempt_failed": "attempts_failed",
    "failed": "failed",
}

CountKey = tuple[str, str, str]  # org, job type, status
MetricKey = tuple[str, str]  # job type, metric


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job's row: its state and the position of its `submitted` event."""

    job: Job
    seq: int

    def count_key(self) -> CountKey:
        return (self.job.org, self.job.type, self.job.status.value)

    def state(self) -> dict[str, Any]:
        return to_snapshot(self.job)

    @classmethod
    def from_state(cls, state: dict[str, Any], seq: int) -> JobRow:
        return cls(from_snapshot(state), seq)


_WAITING = frozenset({"scheduled", "retrying"})


def document(state: dict[str, Any]) -> dict[str, Any]:
    """The contract's job object from a row's state: `ledger.as_document` of the same job."""
    return {
        "id": state["id"],
        "org": state["org"],
        "type": state["type"],
        "status": state["status"],
        "priority": state["priority"],
        "payload": state["payload"],
        "result": state["result"],
        "attempts": state["attempts"],
        "max_attempts": state["max_attempts"],
        "created_at": state["created_at"],
        "run_at": state["run_at"],
        "started_at": state["started_at"],
        "finished_at": state["finished_at"],
        "next_attempt_at": state["next_attempt_at"] if state["status"] in _WAITING else None,
        "last_error": state["last_error"],
        "cancel_requested": state["cancel_requested"],
        "idempotency_key": state["idempotency_key"],
        "version": state["version"],
    }


def apply(row: JobRow | None, position: int, event: JobEvent) -> JobRow:
    """The row after one event; a `submitted` event starts a row at its position."""
    job = evolve(row.job if row is not None else None, event)
    return JobRow(job, row.seq if row is not None else position)


def metric_deltas(job_type: str, event: JobEvent) -> list[tuple[MetricKey, int]]:
    """What one event adds to the metrics of its job's type."""
    counter = _COUNTED.get(event.TYPE)
    if counter is None:
        return []
    deltas = [((job_type, counter), 1)]
    duration_ms = getattr(event, "duration_ms", None)
    if duration_ms is not None:
        bucket = bisect_left(DURATION_BUCKETS_S, duration_ms / 1000)
        deltas += [
            ((job_type, DURATION_COUNT), 1),
            ((job_type, DURATION_SUM_US), round(duration_ms * 1000)),
            ((job_type, _BUCKET_METRICS[bucket]), 1),
        ]
    return deltas


@dataclass(frozen=True, slots=True)
class Batch:
    """What a page of the log changes: final rows, count and metric deltas, new position."""

    rows: dict[UUID, JobRow]
    counts: dict[CountKey, int]
    metrics: dict[MetricKey, int]
    position: int


def project(
    events: Sequence[tuple[int, JobEvent]], rows: Mapping[UUID, JobRow], position: int
) -> Batch:
    """Fold a page of (position, event) into the rows it touches.

    `rows` holds the current row of every job the page touches that has one;
    jobs submitted in the page start from nothing.
    """
    changed: dict[UUID, JobRow] = {}
    metrics: dict[MetricKey, int] = defaultdict(int)
    for pos, event in events:
        job_id = event.originator_id
        row = apply(changed.get(job_id) or rows.get(job_id), pos, event)
        changed[job_id] = row
        for key, delta in metric_deltas(row.job.type, event):
            metrics[key] += delta
        position = pos
    counts: dict[CountKey, int] = defaultdict(int)
    for job_id, row in changed.items():
        before = rows.get(job_id)
        if before is not None:
            counts[before.count_key()] -= 1
        counts[row.count_key()] += 1
    return Batch(
        rows=changed,
        counts={k: n for k, n in counts.items() if n},
        metrics=dict(metrics),
        position=position,
    )
