"""The retry policy: documented delays, jitter that only adds up to 10 %, budgets."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import RetryPolicy, Settings, Submission, registry, to_spec
from tests.factories import T0


def test_the_default_delays_are_one_five_and_fifteen_minutes_so_four_attempts() -> None:
    policy = RetryPolicy()
    assert [policy.delay_s(n) for n in (1, 2, 3)] == [60.0, 300.0, 900.0]
    assert policy.max_attempts == 4


def test_attempts_past_the_list_reuse_the_last_delay() -> None:
    policy = RetryPolicy(delays_s=(1.0, 2.0))
    assert policy.delay_s(5) == 2.0


@given(
    delays=st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=6),
    attempt=st.integers(min_value=1, max_value=20),
)
def test_jitter_never_makes_a_retry_earlier_and_adds_at_most_ten_percent(
    delays: list[float], attempt: int
) -> None:
    policy = RetryPolicy(delays_s=tuple(delays))
    job_id = uuid4()
    waited = (policy.next_attempt_at(job_id, attempt, attempt, T0) - T0).total_seconds()
    base = policy.delay_s(attempt)
    assert base - 1e-6 <= waited <= base * 1.1 + 1e-6


def test_the_same_failure_always_schedules_the_same_instant() -> None:
    job_id = uuid4()
    first = RetryPolicy().next_attempt_at(job_id, 2, 2, T0)
    assert RetryPolicy().next_attempt_at(job_id, 2, 2, T0) == first


def test_jobs_that_fail_together_spread_out() -> None:
    policy = RetryPolicy()
    instants = {policy.next_attempt_at(uuid4(), 1, 1, T0) for _ in range(50)}
    assert len(instants) > 40
    assert all(T0 + timedelta(seconds=60) <= at <= T0 + timedelta(seconds=66) for at in instants)


def test_without_jitter_the_delay_is_exact() -> None:
    policy = RetryPolicy(delays_s=(5.0,), jitter=0.0)
    assert policy.next_attempt_at(uuid4(), 1, 1, T0) == T0 + timedelta(seconds=5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delays_s": ()},
        {"delays_s": (-1.0,)},
        {"delays_s": (float("nan"),)},
        {"delays_s": (float("inf"),)},
        {"jitter": 0.2},
        {"jitter": -0.1},
    ],
)
def test_a_policy_rejects_impossible_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_listed_error_types_are_never_retried() -> None:
    policy = RetryPolicy(non_retryable=frozenset({"PermissionError"}))
    assert not policy.is_retryable("PermissionError", retryable=True)
    assert policy.is_retryable("RuntimeError", retryable=True)
    assert not policy.is_retryable("RuntimeError", retryable=False)


def test_a_type_may_set_its_own_delays() -> None:
    assert registry.get("token.refresh").policy().delays_s == (10.0, 60.0, 300.0)
    assert registry.get("diag.echo").policy().delays_s == (60.0, 300.0, 900.0)


def test_jobledger_retry_delays_overrides_every_type_and_sets_max_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBLEDGER_RETRY_DELAYS", "0.2,0.4,0.8,1.6")
    settings = Settings()
    assert settings.retry_delays_s == (0.2, 0.4, 0.8, 1.6)
    for name in ("diag.echo", "token.refresh"):
        policy = registry.get(name).policy(settings.retry_delays_s)
        assert policy.delays_s == (0.2, 0.4, 0.8, 1.6)
        assert policy.max_attempts == 5
    spec, _ = to_spec(
        Submission(type="diag.echo"), org="acme", registry=registry, now=T0,
        retry_delays_s=settings.retry_delays_s,
    )  # fmt: skip
    assert spec.max_attempts == 5


def test_a_job_submitted_with_its_own_max_attempts_keeps_it_under_the_override() -> None:
    spec, _ = to_spec(
        Submission(type="diag.echo", max_attempts=2), org="acme", registry=registry, now=T0,
        retry_delays_s=(0.2, 0.4, 0.8),
    )  # fmt: skip
    assert spec.max_attempts == 2
