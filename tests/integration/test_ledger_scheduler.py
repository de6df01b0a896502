"""The scheduler against PostgreSQL: one job per tick however many run, catch-up, quota."""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from consumers.scheduler import Schedule, Scheduler, parse_schedules, tick_job_id
from jobledger.wiring import make_ledger
from ledger import Ledger, Settings, registry
from tests.factories import a_spec

T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


def a_schedule(catch_up: str = "skip", org: str = "acme") -> Schedule:
    document = f"""
        [[schedule]]
        name = "every-minute"
        cron = "* * * * *"
        type = "diag.echo"
        org = "{org}"
        payload = {{ result = "tick" }}
        catch_up = "{catch_up}"
    """
    [schedule] = parse_schedules(tomllib.loads(document), registry)
    return schedule


@pytest.fixture
def other_ledger(settings: Settings) -> Iterator[Ledger]:
    ledger = make_ledger(settings)
    yield ledger
    ledger.close()


def scheduled_jobs(ledger: Ledger) -> list[dict[str, Any]]:
    with ledger.connection() as conn:
        return conn.execute(
            "SELECT job_id, org, job_type FROM jl_jobs WHERE job_type = 'diag.echo' "
            "ORDER BY created_at"
        ).fetchall()


def test_two_schedulers_submit_exactly_one_job_per_tick(
    ledger: Ledger, other_ledger: Ledger
) -> None:
    schedule = a_schedule()
    first = Scheduler(ledger, [schedule], clock=lambda: T)
    second = Scheduler(other_ledger, [schedule], clock=lambda: T)
    first.start(at(0.5))
    second.start(at(0.5))
    outcomes = []
    for minute in (1, 2, 3):
        now = at(minute) + timedelta(milliseconds=20)
        outcomes += [f.outcome for f in first.fire_due(now) + second.fire_due(now)]
    assert sorted(outcomes) == ["already_submitted"] * 3 + ["submitted"] * 3
    jobs = scheduled_jobs(ledger)
    assert [row["job_id"] for row in jobs] == [tick_job_id(schedule, at(m)) for m in (1, 2, 3)]
    job = ledger.load(jobs[0]["job_id"])
    assert (job.org, job.status, job.payload["result"]) == ("acme", "queued", "tick")


def test_a_restarted_skip_schedule_drops_the_ticks_it_missed(
    ledger: Ledger, other_ledger: Ledger
) -> None:
    before = Scheduler(ledger, [a_schedule("skip")], clock=lambda: T)
    before.start(at(0.5))
    assert [f.tick for f in before.fire_due(at(1))] == [at(1)]
    after = Scheduler(other_ledger, [a_schedule("skip")], clock=lambda: T)
    after.start(at(5.5))  # down from 1:00 to 5:30
    assert after.fire_due(at(5.5)) == []
    assert [f.tick for f in after.fire_due(at(6))] == [at(6)]
    assert len(scheduled_jobs(ledger)) == 2


def test_a_restarted_once_schedule_fires_the_most_recent_missed_tick_once(
    ledger: Ledger, other_ledger: Ledger
) -> None:
    before = Scheduler(ledger, [a_schedule("once")], clock=lambda: T)
    before.start(at(0.5))
    before.fire_due(at(1))
    after = Scheduler(other_ledger, [a_schedule("once")], clock=lambda: T)
    after.start(at(5.5))
    assert [(f.tick, f.outcome) for f in after.fire_due(at(5.5))] == [(at(5), "submitted")]
    assert after.fire_due(at(5.9)) == []
    ids = [row["job_id"] for row in scheduled_jobs(ledger)]
    assert ids == [tick_job_id(a_schedule(), at(1)), tick_job_id(a_schedule(), at(5))]


def test_a_tick_for_an_org_at_its_quota_is_skipped(ledger: Ledger) -> None:
    for _ in range(ledger.active_limit):
        ledger.submit(a_spec(org="busy", job_type="brand.learn", payload={"brand_id": "b"}))
    scheduler = Scheduler(ledger, [a_schedule(org="busy")], clock=lambda: T)
    scheduler.start(at(0.5))
    assert [f.outcome for f in scheduler.fire_due(at(1))] == ["over_quota"]
    assert scheduled_jobs(ledger) == []


def test_the_running_scheduler_sleeps_until_the_next_tick_and_stops_promptly(
    ledger: Ledger,
) -> None:
    scheduler = Scheduler(ledger, [a_schedule()], clock=lambda: datetime.now(UTC))
    calls: list[datetime] = []
    fire_due = scheduler.fire_due

    checked_once = threading.Event()

    def counting(now: datetime) -> Any:
        calls.append(now)
        checked_once.set()
        return fire_due(now)

    scheduler.fire_due = counting  # type: ignore[method-assign]

    async def main() -> float:
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler.run)
            assert await anyio.to_thread.run_sync(checked_once.wait, 10)
            await anyio.sleep(0.5)
            stopping = anyio.current_time()
            scheduler.stop()
        return anyio.current_time() - stopping

    stopped_in = anyio.run(main)
    assert stopped_in < 1.0
    # One check at start, then asleep until the next minute (a second one only if
    # the minute turned during the test).
    assert 1 <= len(calls) <= 2
