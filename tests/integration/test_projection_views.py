"""The job-status views on real PostgreSQL: incremental build, rebuild, exactly-once, lag."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from ledger import Ledger, as_document
from projections import Follower, JobQueries, Lag, PositionMoved, rebuild_views
from tests.integration.projection_workload import (
    catch_up,
    drive,
    submit_jobs,
    tracked_position,
    view_rows,
    workload,
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def documents(database_url: str, job_ids: list[Any]) -> dict[Any, Any]:
    queries = await JobQueries.open(database_url)
    try:
        return {job_id: await queries.get(job_id, None) for job_id in job_ids}
    finally:
        await queries.close()


def all_job_ids(ledger: Ledger) -> list[Any]:
    with ledger.connection() as conn:
        return [row["job_id"] for row in conn.execute("SELECT job_id FROM jl_jobs").fetchall()]


def build_incrementally(ledger: Ledger, database_url: str) -> int:
    """A few thousand events, projected in odd-sized batches between the appends."""
    jobs = submit_jobs(ledger, 800)
    catch_up(ledger, database_url, batch_size=97)
    drive(ledger, jobs[:400])
    catch_up(ledger, database_url, batch_size=53)
    more = submit_jobs(ledger, 200, seed=5)
    drive(ledger, jobs[400:] + more)
    return catch_up(ledger, database_url, batch_size=211)


def test_the_incremental_views_hold_the_ledgers_job_object_for_every_job(
    ledger: Ledger, database_url: str
) -> None:
    build_incrementally(ledger, database_url)
    ids = all_job_ids(ledger)
    assert len(ids) > 1000  # the workload's jobs and the failure notices
    expected = {job_id: as_document(job) for job_id, job in ledger.load_many(ids).items()}
    assert run(documents(database_url, ids)) == expected


def test_a_rebuild_ends_with_tables_equal_row_for_row_to_the_incremental_ones(
    ledger: Ledger, database_url: str
) -> None:
    build_incrementally(ledger, database_url)
    incremental = view_rows(database_url)
    assert len(incremental["jobs"]) > 1000
    report = rebuild_views(ledger, database_url, batch_size=700)
    assert report.position == ledger.max_position() == tracked_position(database_url)
    assert report.events > 4000
    assert view_rows(database_url) == incremental


def test_the_counts_are_the_tally_of_the_job_rows(ledger: Ledger, database_url: str) -> None:
    build_incrementally(ledger, database_url)
    with psycopg.connect(database_url) as conn:
        tally = conn.execute(
            "SELECT org, job_type, status, count(*) FROM jl_view_jobs"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
    assert view_rows(database_url)["counts"] == tally


def test_a_batch_computed_from_a_stale_position_writes_nothing(
    ledger: Ledger, database_url: str
) -> None:
    submit_jobs(ledger, 60)
    with (
        psycopg.connect(database_url, autocommit=True) as conn_a,
        psycopg.connect(database_url, autocommit=True) as conn_b,
    ):
        stale = Follower(ledger, conn_a, page_size=30)
        other = Follower(ledger, conn_b, page_size=30)
        assert stale.step() == 30
        assert other.step() == 30  # goes on from the stored position
        moved_to = tracked_position(database_url)
        with pytest.raises(PositionMoved):
            stale.step()  # the same 30 events again, from the position it remembers
        assert tracked_position(database_url) == moved_to
        assert stale.position == moved_to  # it went back to the stored position
        while stale.step():
            pass
    projected = view_rows(database_url)
    rebuild_views(ledger, database_url)
    assert view_rows(database_url) == projected


def test_lag_counts_the_unprojected_events_and_the_age_of_the_oldest(
    ledger: Ledger, database_url: str
) -> None:
    async def lag() -> Lag:
        queries = await JobQueries.open(database_url)
        try:
            return await queries.lag()
        finally:
            await queries.close()

    assert run(lag()) == Lag(events=0, seconds=0.0)
    submit_jobs(ledger, 20)
    behind = run(lag())
    assert behind.events == ledger.max_position() > 20
    assert behind.seconds > 0
    catch_up(ledger, database_url)
    assert run(lag()) == Lag(events=0, seconds=0.0)


def test_a_follower_that_cannot_keep_its_rows_reads_them_back_and_builds_the_same_views(
    ledger: Ledger, database_url: str
) -> None:
    workload(ledger, 300)
    with psycopg.connect(database_url, autocommit=True) as conn:
        follower = Follower(
            ledger, conn, page_size=40, batch_size=120, cache_size=30, write_behind=True
        )
        while follower.step():
            pass
        follower.close()
    assert tracked_position(database_url) == ledger.max_position()
    forgetful = view_rows(database_url)
    rebuild_views(ledger, database_url)
    assert view_rows(database_url) == forgetful
