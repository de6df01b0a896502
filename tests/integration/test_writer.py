"""The batch writer: many callers, few transactions, each caller its own outcome."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from ledger import (
    BatchWriter,
    Change,
    ConcurrencyConflict,
    Job,
    Ledger,
    QuotaExceeded,
    change,
    utc_now,
)
from ledger.domain import job as commands
from tests.factories import a_spec

if TYPE_CHECKING:
    from ledger.store import PreparedAppend


def _submit_one(ledger: Ledger, **overrides: object) -> Job:
    job, _ = ledger.submit(a_spec(**overrides))
    return job


def test_concurrent_appends_land_in_fewer_transactions_than_callers(ledger: Ledger) -> None:
    jobs = [_submit_one(ledger, org=f"org{i % 5}") for i in range(60)]
    transactions = 0
    append = ledger.append_async

    async def counting_append(changes: list[Change], conn: Any, **kw: Any) -> list[Job]:
        nonlocal transactions
        transactions += 1
        return await append(changes, conn, **kw)

    ledger.append_async = counting_append  # type: ignore[method-assign]

    async def main() -> list[Job]:
        started: list[Job] = []
        async with BatchWriter(ledger) as writer:

            async def start(job: Job) -> None:
                events = commands.start_attempt(job, "w1", 30, utc_now())
                started.extend(await writer.append([change(job, events)]))

            async with anyio.create_task_group() as tg:
                for job in jobs:
                    tg.start_soon(start, job)
        return started

    started = anyio.run(main)
    assert sorted(j.id for j in started) == sorted(j.id for j in jobs)
    assert all(ledger.load(j.id).status == "running" for j in jobs)
    assert 0 < transactions < len(jobs) / 2


def test_one_callers_conflict_does_not_fail_the_others_in_its_batch(ledger: Ledger) -> None:
    contested = _submit_one(ledger)
    others = [_submit_one(ledger) for _ in range(20)]
    outcomes: dict[str, int] = {"ok": 0, "conflict": 0}

    async def main() -> None:
        async with BatchWriter(ledger) as writer:

            async def start(job: Job, worker: str) -> None:
                try:
                    await writer.append(
                        [change(job, commands.start_attempt(job, worker, 30, utc_now()))]
                    )
                except ConcurrencyConflict:
                    outcomes["conflict"] += 1
                else:
                    outcomes["ok"] += 1

            async with anyio.create_task_group() as tg:
                for k in range(5):
                    tg.start_soon(start, contested, f"racer{k}")
                for job in others:
                    tg.start_soon(start, job, "w")

    anyio.run(main)
    assert outcomes == {"ok": 21, "conflict": 4}
    assert all(ledger.load(j.id).status == "running" for j in others)
    starts = [e for e in ledger.history(contested.id) if e.TYPE == "attempt_started"]
    assert len(starts) == 1


def test_quota_refusal_reaches_only_the_caller_over_the_limit(ledger: Ledger) -> None:
    ledger.active_limit = 3
    results: list[str] = []

    async def main() -> None:
        async with BatchWriter(ledger) as writer:

            async def submit(org: str) -> None:
                try:
                    await writer.submit_many([(a_spec(org=org), None)])
                except QuotaExceeded:
                    results.append(f"{org}:429")
                else:
                    results.append(f"{org}:ok")

            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(submit, "small")
                for _ in range(3):
                    tg.start_soon(submit, "other")

    anyio.run(main)
    assert sorted(results) == sorted(["small:ok"] * 3 + ["small:429"] * 2 + ["other:ok"] * 3)


def test_a_failed_commit_reaches_every_caller_and_nothing_is_written(ledger: Ledger) -> None:
    job = _submit_one(ledger)
    stale = commands.start_attempt(job, "w", 30, utc_now())
    ledger.append([change(job, stale)])

    async def main() -> None:
        async with BatchWriter(ledger) as writer:
            with pytest.raises(ConcurrencyConflict):
                await writer.append([change(job, stale)])

    anyio.run(main)
    assert [e.TYPE for e in ledger.history(job.id)] == ["submitted", "queued", "attempt_started"]


def test_the_writer_commits_on_the_event_loop_thread_without_a_thread_hop(ledger: Ledger) -> None:
    """A thread would cost two wake-ups per commit and fight the event loop for the GIL."""
    job = _submit_one(ledger)
    threads: list[int] = []
    prepare = ledger.prepare_append

    def recording_prepare(changes: list[Change]) -> PreparedAppend:
        threads.append(threading.get_ident())
        return prepare(changes)

    def no_sync_append(changes: list[Change]) -> list[Job]:
        raise AssertionError("the writer must not use the blocking append")

    ledger.prepare_append = recording_prepare  # type: ignore[method-assign]
    ledger.append = no_sync_append  # type: ignore[method-assign]

    async def main() -> None:
        async with BatchWriter(ledger) as writer:
            await writer.append([change(job, commands.start_attempt(job, "w", 30, utc_now()))])

    anyio.run(main)
    assert threads == [threading.get_ident()]
    assert ledger.load(job.id).status == "running"


def test_the_writer_reconnects_when_its_connection_is_killed(ledger: Ledger) -> None:
    """PostgreSQL ending the writer's session (a restart, a failover) costs a retry, not a job."""
    first, second = _submit_one(ledger), _submit_one(ledger)

    async def main() -> None:
        async with BatchWriter(ledger) as writer:
            await writer.append([change(first, commands.start_attempt(first, "w", 30, utc_now()))])
            assert writer._conn is not None
            with ledger.connection() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (writer._conn.info.backend_pid,))
            await writer.append(
                [change(second, commands.start_attempt(second, "w", 30, utc_now()))]
            )

    anyio.run(main)
    assert ledger.load(first.id).status == "running"
    assert ledger.load(second.id).status == "running"
    assert [e.TYPE for e in ledger.history(second.id)][-1] == "attempt_started"
