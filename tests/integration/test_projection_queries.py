"""The read API over the views: scoping, filters, pagination, stats, dead letters, metrics."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from ledger import Job, Ledger, Status
from projections import InvalidCursor, JobQueries
from tests.integration.projection_workload import ORGS, catch_up, submit_jobs, workload

T = TypeVar("T")


def query(database_url: str, ask: Callable[[JobQueries], Awaitable[T]]) -> T:
    async def main() -> T:
        queries = await JobQueries.open(database_url)
        try:
            return await ask(queries)
        finally:
            await queries.close()

    return asyncio.run(main())


def every_job(ledger: Ledger) -> list[Job]:
    with ledger.connection() as conn:
        ids = [row["job_id"] for row in conn.execute("SELECT job_id FROM jl_jobs").fetchall()]
    return list(ledger.load_many(ids).values())


@pytest.fixture
def jobs(ledger: Ledger, database_url: str) -> list[Job]:
    """Three orgs' jobs in every status, projected."""
    workload(ledger, 200)
    catch_up(ledger, database_url)
    return every_job(ledger)


def test_a_job_is_found_by_its_org_and_by_an_admin_but_not_by_another_org(
    jobs: list[Job], database_url: str
) -> None:
    job = jobs[0]
    other = next(org for org in ORGS if org != job.org)

    async def ask(q: JobQueries) -> list[Any]:
        return [await q.get(job.id, job.org), await q.get(job.id, None), await q.get(job.id, other)]

    own, admin, foreign = query(database_url, ask)
    assert own is not None
    assert own["id"] == str(job.id)
    assert admin == own
    assert foreign is None


def test_the_list_is_newest_first_and_its_pages_stay_stable_while_jobs_arrive(
    ledger: Ledger, database_url: str
) -> None:
    first = submit_jobs(ledger, 25, seed=3)
    catch_up(ledger, database_url)
    org = first[0].org
    expected = [str(j.id) for j in reversed(first) if j.org == org]

    async def ask(q: JobQueries) -> list[str]:
        seen: list[str] = []
        items, cursor = await q.list(org, limit=3)
        seen += [item["id"] for item in items]
        while cursor is not None:
            submit_jobs(ledger, 4, seed=len(seen))  # new jobs land between pages
            catch_up(ledger, database_url)
            items, cursor = await q.list(org, limit=3, cursor=cursor)
            seen += [item["id"] for item in items]
        return seen

    assert query(database_url, ask) == expected


def test_the_list_filters_by_status_type_and_org(jobs: list[Job], database_url: str) -> None:
    async def ask(q: JobQueries) -> dict[str, list[dict[str, Any]]]:
        return {
            "acme failed": (await q.list("acme", status="failed", limit=500))[0],
            "globex rss": (await q.list("globex", type="rss.sync", limit=500))[0],
            "admin queued echo": (await q.list(None, status="queued", type="diag.echo", limit=500))[
                0
            ],
            "admin": (await q.list(None, limit=500))[0],
        }

    found = query(database_url, ask)

    def ids(pick: Callable[[Job], bool]) -> set[str]:
        return {str(j.id) for j in jobs if pick(j)}

    def got(name: str) -> set[str]:
        return {item["id"] for item in found[name]}

    assert got("acme failed") == ids(lambda j: j.org == "acme" and j.status is Status.FAILED)
    assert got("globex rss") == ids(lambda j: j.org == "globex" and j.type == "rss.sync")
    assert got("admin queued echo") == ids(
        lambda j: j.status is Status.QUEUED and j.type == "diag.echo"
    )
    assert got("admin") == ids(lambda j: True)
    assert all(found[name] for name in found), "every filter matches some jobs"


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "czEw===x",
        base64.urlsafe_b64encode(b"x12").decode(),
        "czk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5",
    ],
)
def test_a_garbage_cursor_is_refused(ledger: Ledger, database_url: str, cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        query(database_url, lambda q: q.list("acme", cursor=cursor))
    assert issubclass(InvalidCursor, ValueError)


def test_stats_count_every_status_and_type_of_the_org_and_of_all_for_an_admin(
    jobs: list[Job], database_url: str
) -> None:
    async def ask(q: JobQueries) -> tuple[Any, Any]:
        return await q.stats("initech"), await q.stats(None)

    initech, admin = query(database_url, ask)
    for stats, mine in ((initech, [j for j in jobs if j.org == "initech"]), (admin, jobs)):
        by_status = {s.value: 0 for s in Status} | Counter(j.status.value for j in mine)
        assert stats["by_status"] == by_status
        assert stats["by_type"] == dict(Counter(j.type for j in mine))


def test_dead_letters_are_the_orgs_failed_jobs_latest_failure_first(
    jobs: list[Job], database_url: str
) -> None:
    dead = query(database_url, lambda q: q.dead_letters("acme", limit=500))
    failed = [j for j in jobs if j.org == "acme" and j.status is Status.FAILED]
    assert failed
    assert sorted(d["id"] for d in dead) == sorted(str(j.id) for j in failed)
    assert {d["status"] for d in dead} == {"failed"}
    times = [d["finished_at"] for d in dead]
    assert times == sorted(times, reverse=True)
    assert len(query(database_url, lambda q: q.dead_letters(None, limit=2))) == 2


def test_metrics_total_the_lifecycle_events_by_type(jobs: list[Job], database_url: str) -> None:
    metrics = query(database_url, lambda q: q.metrics())
    by_type = Counter(j.type for j in jobs)
    assert metrics.submitted == dict(by_type)
    assert metrics.started == {
        t: n for t in by_type if (n := sum(j.attempts for j in jobs if j.type == t))
    }
    ever_failed = [  # failed now, or failed and then retried by hand (a grown budget)
        j for j in jobs if j.status is Status.FAILED or j.max_attempts > j.original_max_attempts
    ]
    assert metrics.failed == dict(Counter(j.type for j in ever_failed))
    assert metrics.queue_depth == dict(Counter(j.type for j in jobs if j.status is Status.QUEUED))
    for job_type, histogram in metrics.durations.items():
        ended = metrics.succeeded.get(job_type, 0) + metrics.attempts_failed.get(job_type, 0)
        assert histogram.count == ended == histogram.buckets[-1][1]
        counts = [n for _, n in histogram.buckets]
        assert counts == sorted(counts)  # cumulative
        assert histogram.sum_s > 0
        assert histogram.prometheus_buckets()[-1][0] == "+Inf"
