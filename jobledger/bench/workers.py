"""Throughput, latency and concurrency of one worker process (part of `jobledger bench`).

Measured the way `../shared/peers/README.md` measures the other job queues, on
a scratch database and a fresh Redis prefix, with `jobledger dispatcher` and
`jobledger worker` as real subprocesses, each test with its own worker:

- latency (first, on the idle system): a worker started and warmed up,
  300 jobs submitted one by one at 50/s; submit (just before the call) →
  the handler starting (the worker's log);
- throughput: 10,000 `diag.echo` jobs submitted in batches and dispatched,
  then one worker process started; jobs/s from starting it (start-up
  included) to the last success recorded in the ledger;
- sleep: 1,000 jobs of `sleep_ms=100` dispatched, then a fresh worker at
  concurrency 100; first handler start → last success recorded.

Between tests the scratch database is vacuumed, as autovacuum would have
done (this machine's PostgreSQL runs with autovacuum off).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import psycopg
import redis

from jobledger.wiring import make_ledger
from ledger import JobSpec, Ledger, Settings, registry

THROUGHPUT_JOBS = 10_000
SUBMIT_BATCH = 1_000
LATENCY_JOBS = 300
LATENCY_RATE = 50.0
WARMUP_JOBS = 5
SLEEP_JOBS = 1_000
SLEEP_MS = 100
SLEEP_CONCURRENCY = 100
POLL_S = 0.1
TIMEOUT_S = 300.0
LOG_SETTLE_S = 0.5
DISPATCHER_START_S = 15.0
READY_LINE = '"leading"'


class Bench:
    """One run: a scratch database, a fresh prefix, a dispatcher, workers one at a time."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.ledger: Ledger = make_ledger(settings)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.stream = "{" + settings.redis_prefix + "}:q:diag.echo:normal"
        self.succeeded = 0  # jobs of the earlier runs, all succeeded

    def close(self) -> None:
        self.ledger.close()
        keys = list(self.redis.scan_iter(match="{" + self.settings.redis_prefix + "}:*"))
        if keys:
            self.redis.delete(*keys)
        self.redis.close()

    # ------------------------------------------------------------ processes

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.settings.database_url,
            "REDIS_URL": self.settings.redis_url,
            "JOBLEDGER_REDIS_PREFIX": self.settings.redis_prefix,
            "JOBLEDGER_ACTIVE_LIMIT": str(self.settings.active_limit),
            "JOBLEDGER_LOG_FORMAT": "json",
            **extra,
        }

    @contextmanager
    def role(self, name: str, **extra: str) -> Iterator[Path]:
        log = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            command = [str(Path(sys.executable).with_name("jobledger")), name]
            process = subprocess.Popen(  # noqa: S603  (our own executable)
                command, env=self.env(**extra), stdout=subprocess.DEVNULL, stderr=out
            )
            try:
                yield log
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    # ------------------------------------------------------------ jobs

    def submit(self, count: int, payload: dict[str, Any]) -> list[UUID]:
        echo = registry.get("diag.echo")
        spec = JobSpec(org="bench", job_type=echo.name, payload=echo.validate_payload(payload))
        ids: list[UUID] = []
        for start in range(0, count, SUBMIT_BATCH):
            batch = [(spec, None)] * min(SUBMIT_BATCH, count - start)
            ids += [job.id for job, _ in self.ledger.submit_many(batch)]
        return ids

    def wait_started(self, dispatcher_log: Path) -> None:
        """Wait until the dispatcher leads (it is following the ledger)."""
        deadline = time.monotonic() + DISPATCHER_START_S
        while time.monotonic() < deadline and READY_LINE not in dispatcher_log.read_text():
            time.sleep(POLL_S)

    def wait_dispatched(self, count: int) -> None:
        """Wait for the messages (published by the submits), then for the dispatcher.

        The dispatcher follows the log behind the direct publishes, consuming
        their markers; once none is left it is idle and does not compete with
        the measured worker.
        """
        self._wait(lambda: int(self.redis.xlen(self.stream)) >= count, "dispatch")
        self._wait(lambda: not self._markers_left(), "the dispatcher to catch up")

    def _markers_left(self) -> bool:
        markers = "{" + self.settings.redis_prefix + "}:pub:*"
        return next(self.redis.scan_iter(match=markers, count=10_000), None) is not None

    def wait_succeeded(self, ids: Sequence[UUID]) -> datetime:
        """Wait until every job succeeded; the time its last success was recorded.

        Polls a cheap count (the scratch database holds only the bench's jobs,
        and every earlier job has succeeded) so the polling costs the system
        under test next to nothing.
        """
        self.succeeded += len(ids)
        count = "SELECT count(*) AS n FROM jl_jobs WHERE status = 'succeeded'"
        self._wait(lambda: self._one(count)["n"] >= self.succeeded, "jobs to succeed")
        last = self._one(
            "SELECT max(updated_at) AS last FROM jl_jobs WHERE job_id = ANY(%s)", (list(ids),)
        )
        return cast(datetime, last["last"])

    def vacuum(self) -> None:
        """What autovacuum would have done between two tests.

        This machine's PostgreSQL runs with autovacuum off; the 10,000-job run
        leaves ~30,000 dead job-index rows that the next test's appends would
        otherwise wade through.
        """
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            conn.execute(b"VACUUM ANALYZE")

    def _one(self, query: str, params: Sequence[Any] = ()) -> dict[str, Any]:
        with self.ledger.connection() as conn:
            return dict(conn.execute(query.encode(), params).fetchone() or {})

    def _wait(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"bench: gave up waiting for {what}")
            time.sleep(POLL_S)

    # ------------------------------------------------------------ the three runs

    def throughput(self) -> dict[str, float]:
        ids = self.submit(THROUGHPUT_JOBS, {})
        self.wait_dispatched(THROUGHPUT_JOBS)
        started = time.time()
        with self.role("worker"):
            last = self.wait_succeeded(ids)
        return {"throughput_jobs_s": round(THROUGHPUT_JOBS / (last.timestamp() - started), 1)}

    def latency(self) -> dict[str, float]:
        """On an idle system with its own worker, as the peers' harness runs each test."""
        with self.role("worker") as log:
            return self._latency(log)

    def _latency(self, log: Path) -> dict[str, float]:
        self.wait_succeeded(self.submit(WARMUP_JOBS, {}))
        echo = registry.get("diag.echo")
        spec = JobSpec(org="bench", job_type=echo.name, payload=echo.validate_payload({}))
        submitted: dict[str, float] = {}
        next_at = time.monotonic()
        for _ in range(LATENCY_JOBS):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1 / LATENCY_RATE
            before = time.time()
            job, _ = self.ledger.submit(spec)
            submitted[str(job.id)] = before
        self.wait_succeeded([UUID(i) for i in submitted])
        time.sleep(LOG_SETTLE_S)  # the worker writes its log lines out a few times a second
        starts = handler_starts(log, submitted)
        ms = sorted((starts[i] - submitted[i]) * 1000 for i in submitted)
        return {
            "latency_p50_ms": round(statistics.median(ms), 2),
            "latency_p95_ms": round(_percentile(ms, 95), 2),
            "latency_p99_ms": round(_percentile(ms, 99), 2),
            "latency_max_ms": round(ms[-1], 2),
        }

    def sleep(self) -> dict[str, float]:
        ids = self.submit(SLEEP_JOBS, {"sleep_ms": SLEEP_MS})
        self.wait_dispatched(SLEEP_JOBS)
        with self.role("worker", JOBLEDGER_WORKER_CONCURRENCY=str(SLEEP_CONCURRENCY)) as log:
            last = self.wait_succeeded(ids)
            time.sleep(LOG_SETTLE_S)
            starts = handler_starts(log, {str(i): 0.0 for i in ids})
        return {"sleep_wall_s": round(last.timestamp() - min(starts.values()), 3)}


def handler_starts(log: Path, wanted: dict[str, Any]) -> dict[str, float]:
    """When each wanted job's handler started, from the worker's attempt-end lines."""
    starts: dict[str, float] = {}
    for line in log.read_text().splitlines():
        if '"attempt_ended"' not in line:
            continue
        entry = json.loads(line)
        if entry["job_id"] in wanted and entry.get("started_at"):
            starts[entry["job_id"]] = datetime.fromisoformat(entry["started_at"]).timestamp()
    missing = len(wanted) - len(starts)
    if missing:
        raise RuntimeError(f"bench: {missing} jobs have no attempt line in {log}")
    return starts


def _percentile(sorted_values: Sequence[float], p: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def run(settings: Settings) -> dict[str, Any]:
    """Every figure of this area, on `settings`' (scratch) database and Redis prefix."""
    with tempfile.TemporaryDirectory(prefix="jlbench") as workdir:
        bench = Bench(settings, Path(workdir))
        try:
            with bench.role("dispatcher") as log:
                bench.wait_started(log)
                figures = bench.latency()
                bench.vacuum()
                figures |= bench.throughput()
                bench.vacuum()
                return figures | bench.sleep()
        finally:
            bench.close()


def configuration(settings: Settings) -> dict[str, Any]:
    return {
        "throughput_jobs": THROUGHPUT_JOBS,
        "latency_jobs": f"{LATENCY_JOBS} at {LATENCY_RATE:g}/s",
        "sleep_jobs": f"{SLEEP_JOBS} x {SLEEP_MS} ms at concurrency {SLEEP_CONCURRENCY}",
        "worker_concurrency": settings.worker_concurrency,
        "worker_read_ahead": settings.worker_concurrency,
        "worker_processes": 1,
        "cpus": os.cpu_count(),
        "dispatcher": "jobledger dispatcher (running throughout)",
        "durability": "every event committed to PostgreSQL (synchronous_commit as configured)",
    }
