"""Writers racing on PostgreSQL: optimistic concurrency, the quota, idempotency keys."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from ledger import (
    ConcurrencyConflict,
    IdempotencyConflict,
    InvalidJob,
    Job,
    JobSpec,
    Ledger,
    QuotaExceeded,
    Settings,
    Submission,
    change,
    to_spec,
    utc_now,
)
from ledger.domain import job as domain
from tests.factories import a_spec

T = TypeVar("T")
THREADS = 8


def race(count: int, action: Callable[[int], T]) -> list[T | BaseException]:
    """Run `action(i)` for i < count on THREADS threads, all released at once."""
    barrier = threading.Barrier(min(count, THREADS))

    def run(i: int) -> T | BaseException:
        if i < THREADS:
            barrier.wait(timeout=10)
        try:
            return action(i)
        except Exception as e:
            return e

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(run, range(count)))


def outcomes(results: list[Any]) -> Counter[str]:
    return Counter(type(r).__name__ for r in results)


def keyed(ledger: Ledger, key: str, org: str = "acme", **body: Any) -> tuple[JobSpec, str]:
    submission = Submission(type="diag.echo", idempotency_key=key, **body)
    return to_spec(submission, org=org, registry=ledger.registry, now=utc_now())


def submit_keyed(ledger: Ledger, key: str, org: str = "acme", **body: Any) -> tuple[Job, bool]:
    spec, fingerprint = keyed(ledger, key, org, **body)
    return ledger.submit(spec, fingerprint=fingerprint)


@pytest.fixture
def small_ledger(settings: Settings) -> Any:
    from jobledger.wiring import make_ledger

    ledger = make_ledger(settings, pool_size=THREADS)
    yield ledger
    ledger.close()


def test_of_writers_racing_on_one_job_version_exactly_one_wins(small_ledger: Ledger) -> None:
    for _ in range(3):
        job, _ = small_ledger.submit(a_spec())
        before = small_ledger.load(job.id)

        def start(i: int, before: Any = before) -> Any:
            return small_ledger.append(
                [change(before, domain.start_attempt(before, f"w-{i}", 30.0, utc_now()))]
            )

        results = race(THREADS, start)
        assert outcomes(results) == {"list": 1, "ConcurrencyConflict": THREADS - 1}
        after = small_ledger.load(job.id)
        assert after.version == before.version + 1
        assert after.attempts == 1
        assert [e.TYPE for e in small_ledger.history(job.id)][-1] == "attempt_started"


def test_execute_decides_again_on_fresh_state_after_a_conflict(small_ledger: Ledger) -> None:
    job, _ = small_ledger.submit(a_spec(max_attempts=1))
    started = small_ledger.execute(
        job.id, lambda j: domain.start_attempt(j, "w-1", 30.0, utc_now())
    )

    def cancel(i: int) -> Any:
        return small_ledger.execute(job.id, lambda j: domain.request_cancel(j, f"u{i}", utc_now()))

    race(THREADS, cancel)
    events = [e.TYPE for e in small_ledger.history(job.id)]
    assert events.count("cancel_requested") == 1  # a second request on fresh state is a no-op
    assert small_ledger.load(job.id).version == started.version + 1


def test_concurrent_submissions_for_one_org_accept_exactly_the_limit(
    small_ledger: Ledger,
) -> None:
    assert small_ledger.active_limit == 50
    results = race(80, lambda i: small_ledger.submit(a_spec(org="crowded")))
    assert outcomes(results) == {"tuple": 50, "QuotaExceeded": 30}
    with small_ledger.connection() as conn:
        count = conn.execute("SELECT count(*) AS n FROM jl_jobs WHERE org = 'crowded'").fetchone()
    assert count == {"n": 50}


def test_a_job_that_ends_frees_its_quota_slot(ledger: Ledger) -> None:
    jobs = [ledger.submit(a_spec(org="tight"))[0] for _ in range(ledger.active_limit)]
    with pytest.raises(QuotaExceeded):
        ledger.submit(a_spec(org="tight"))
    ledger.execute(jobs[0].id, lambda j: domain.request_cancel(j, "cli", utc_now()))
    ledger.submit(a_spec(org="tight"))
    with pytest.raises(QuotaExceeded):
        ledger.submit(a_spec(org="tight"))


def test_a_repeated_key_with_the_same_body_answers_the_existing_job(ledger: Ledger) -> None:
    first, created = submit_keyed(ledger, "k-1")
    again, created_again = submit_keyed(ledger, "k-1")
    assert created
    assert not created_again
    assert again.id == first.id
    assert len(ledger.history(first.id)) == 2  # submitted, queued: nothing appended again


def test_a_repeated_key_with_a_different_body_is_a_conflict(ledger: Ledger) -> None:
    submit_keyed(ledger, "k-1")
    with pytest.raises(IdempotencyConflict):
        submit_keyed(ledger, "k-1", payload={"sleep_ms": 5})


def test_two_orgs_may_use_the_same_key(ledger: Ledger) -> None:
    acme, _ = submit_keyed(ledger, "k-1", org="acme")
    globex, created = submit_keyed(ledger, "k-1", org="globex")
    assert created
    assert globex.id != acme.id
    assert globex.org == "globex"


def test_a_repeated_key_answers_its_job_also_when_the_org_is_at_its_quota(
    ledger: Ledger,
) -> None:
    keyed_job, _ = submit_keyed(ledger, "k-1")
    for _ in range(ledger.active_limit - 1):
        ledger.submit(a_spec())
    again, created = submit_keyed(ledger, "k-1")
    assert (again.id, created) == (keyed_job.id, False)


def test_racing_submissions_with_one_key_create_exactly_one_job(small_ledger: Ledger) -> None:
    spec, fingerprint = keyed(small_ledger, "race")
    results = race(THREADS, lambda i: small_ledger.submit(spec, fingerprint=fingerprint))
    assert all(isinstance(r, tuple) for r in results), results
    created = [r for r in results if isinstance(r, tuple) and r[1]]
    assert len(created) == 1
    assert {r[0].id for r in results if isinstance(r, tuple)} == {created[0][0].id}


def test_a_batch_over_the_quota_writes_nothing(small_ledger: Ledger) -> None:
    for _ in range(45):
        small_ledger.submit(a_spec(org="batchy"))
    before = small_ledger.max_position()
    with pytest.raises(QuotaExceeded):
        small_ledger.submit_many([(a_spec(org="batchy"), None) for _ in range(6)])
    assert small_ledger.max_position() == before
    assert len(small_ledger.submit_many([(a_spec(org="batchy"), None) for _ in range(5)])) == 5


def test_a_batch_with_one_taken_id_writes_nothing(ledger: Ledger) -> None:
    taken, _ = ledger.submit(a_spec())
    before = ledger.max_position()
    ids = [None, None, taken.id, None]
    with pytest.raises(ConcurrencyConflict):
        ledger.submit_many([(a_spec(), None) for _ in ids], job_ids=ids)
    assert ledger.max_position() == before
    with ledger.connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM jl_jobs").fetchone() == {"n": 1}


def test_a_failed_job_submits_one_notice_for_its_org(ledger: Ledger) -> None:
    job, _ = ledger.submit(a_spec(org="acme", max_attempts=1))
    ledger.execute(job.id, lambda j: domain.start_attempt(j, "w-1", 30.0, utc_now()))
    failed = ledger.execute(
        job.id,
        lambda j: domain.fail_attempt(
            j, 1, reason="error", error_type="RuntimeError", message="boom", retryable=True,
            duration_ms=1.0, policy=ledger.registry.get("diag.echo").policy(), now=utc_now(),
        ),
    )  # fmt: skip
    assert failed.status == "failed"
    with ledger.connection() as conn:
        rows = conn.execute(
            "SELECT job_id, org, status FROM jl_jobs WHERE job_type = 'notify.send'"
        ).fetchall()
    assert len(rows) == 1
    notice = ledger.load(rows[0]["job_id"])
    assert (notice.org, notice.status) == ("acme", "queued")
    assert notice.payload["job_id"] == str(job.id)
    assert notice.payload["kind"] == "job_failed"
    assert "RuntimeError: boom" in notice.payload["message"]


def test_a_failed_notice_does_not_notify_about_itself(ledger: Ledger) -> None:
    spec = ledger.spec_for("notify.send", "acme", {"subject": "hello"})
    job, _ = ledger.submit(JobSpec(**{**_fields(spec), "max_attempts": 1}))
    ledger.execute(job.id, lambda j: domain.start_attempt(j, "w-1", 30.0, utc_now()))
    ledger.execute(
        job.id,
        lambda j: domain.fail_attempt(
            j, 1, reason="error", error_type="RuntimeError", message="boom", retryable=False,
            duration_ms=1.0, policy=ledger.registry.get("notify.send").policy(), now=utc_now(),
        ),
    )  # fmt: skip
    with ledger.connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM jl_jobs").fetchone() == {"n": 1}


def _fields(spec: JobSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__slots__}


def test_a_batch_repeating_an_idempotency_key_is_rejected_and_writes_nothing(
    ledger: Ledger,
) -> None:
    spec, fingerprint = keyed(ledger, "twice")
    before = ledger.max_position()
    with pytest.raises(InvalidJob, match="job 2 of the batch repeats"):
        ledger.submit_many([(a_spec(), None), (spec, fingerprint), (spec, fingerprint)])
    assert ledger.max_position() == before


def test_a_batch_over_quota_names_the_organisation_that_is_full(ledger: Ledger) -> None:
    for _ in range(ledger.active_limit):
        ledger.submit(a_spec(org="zz-full"))
    with pytest.raises(QuotaExceeded) as caught:
        ledger.submit_many([(a_spec(org="aa-room"), None), (a_spec(org="zz-full"), None)])
    assert caught.value.org == "zz-full"
