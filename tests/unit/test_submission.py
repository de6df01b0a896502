"""A submission as users write it: validation, defaults and the idempotency fingerprint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from ledger import InvalidJob, Submission, check_org, job_id_for_key, registry, to_spec
from ledger.domain import job as domain
from ledger.domain.events import Submitted
from tests.factories import T0


def spec_of(**body: Any) -> Any:
    return to_spec(
        Submission(**{"type": "diag.echo", **body}), org="acme", registry=registry, now=T0
    )


def test_a_bare_submission_gets_the_types_defaults() -> None:
    spec, _ = spec_of()
    assert spec.org == "acme"
    assert spec.job_type == "diag.echo"
    assert spec.payload == {
        "sleep_ms": 0, "fail_times": 0, "retryable": True, "error": "boom", "result": None,
    }  # fmt: skip
    assert spec.priority == "normal"
    assert spec.run_at is None
    assert spec.max_attempts == 4
    assert spec.timeout_s == 60.0
    assert spec.idempotency_key is None


def test_a_types_own_timeout_is_the_default() -> None:
    spec, _ = spec_of(
        type="content.generate", payload={"brand_id": "b", "brief": "x", "channel": "c"}
    )
    assert spec.timeout_s == 300.0


def test_run_at_without_a_time_zone_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        Submission(type="diag.echo", run_at=datetime(2026, 1, 1, 12, 0))


def test_run_at_is_kept_as_the_same_instant_in_utc() -> None:
    berlin = timezone(timedelta(hours=1))
    spec, _ = spec_of(run_at=datetime(2026, 1, 1, 13, 0, tzinfo=berlin))
    assert spec.run_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert spec.run_at is not None
    assert spec.run_at.utcoffset() == timedelta(0)


def test_run_at_and_delay_s_together_are_rejected() -> None:
    with pytest.raises(ValidationError, match="either run_at or delay_s"):
        Submission(type="diag.echo", run_at=T0, delay_s=5)


@pytest.mark.parametrize("delay_s", [-0.001, 31_536_000.5, float("nan"), float("inf")])
def test_delay_s_outside_zero_to_a_year_is_rejected(delay_s: float) -> None:
    with pytest.raises(ValidationError):
        Submission(type="diag.echo", delay_s=delay_s)


@pytest.mark.parametrize(("delay_s", "due"), [(0, None), (0.25, 0.25), (31_536_000, 31_536_000)])
def test_delay_s_may_be_fractional_and_zero_means_now(delay_s: float, due: float | None) -> None:
    """The delay counts from the instant the ledger records the job."""
    spec, _ = spec_of(delay_s=delay_s)
    [submitted, *rest] = domain.submit(uuid4(), spec, T0)
    assert isinstance(submitted, Submitted)
    assert submitted.run_at == T0 + timedelta(seconds=due or 0)
    assert [e.TYPE for e in rest] == (["queued"] if due is None else [])


@pytest.mark.parametrize(
    "body",
    [
        {"surprise": 1},
        {"priority": "urgent"},
        {"max_attempts": 0},
        {"timeout_s": 0},
        {"idempotency_key": ""},
        {"type": ""},
    ],
)
def test_unknown_fields_and_bad_options_are_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Submission(**{"type": "diag.echo", **body})


def test_an_unknown_field_in_the_payload_is_rejected_with_its_location() -> None:
    with pytest.raises(InvalidJob) as caught:
        spec_of(payload={"sleep_ms": 1, "colour": "red"})
    assert caught.value.errors[0]["loc"] == ["payload", "colour"]


def test_an_unknown_type_is_rejected_naming_it() -> None:
    with pytest.raises(InvalidJob, match=r"unknown job type 'diag\.nope'"):
        spec_of(type="diag.nope")


def test_equal_bodies_have_equal_fingerprints_once_defaults_are_filled_in() -> None:
    _, bare = spec_of()
    _, explicit = spec_of(
        payload={"sleep_ms": 0, "fail_times": 0}, priority="normal", max_attempts=4, timeout_s=60
    )
    assert bare == explicit
    _, same_instant = spec_of(
        run_at=datetime(2026, 2, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    )
    _, in_utc = spec_of(run_at=datetime(2026, 2, 1, 0, 0, tzinfo=UTC))
    assert same_instant == in_utc


@pytest.mark.parametrize(
    "body",
    [
        {"payload": {"sleep_ms": 1}},
        {"priority": "high"},
        {"max_attempts": 2},
        {"timeout_s": 5},
        {"delay_s": 10},
        {"run_at": datetime(2026, 2, 1, tzinfo=UTC)},
    ],
)
def test_a_different_body_has_a_different_fingerprint(body: dict[str, Any]) -> None:
    assert spec_of(**body)[1] != spec_of()[1]


def test_the_fingerprint_does_not_depend_on_the_clock_for_a_delay() -> None:
    submission = Submission(type="diag.echo", delay_s=30)
    later = T0 + timedelta(minutes=5)
    _, first = to_spec(submission, org="acme", registry=registry, now=T0)
    _, second = to_spec(submission, org="acme", registry=registry, now=later)
    assert first == second


def test_idempotency_keys_map_to_ids_scoped_by_organisation() -> None:
    assert job_id_for_key("acme", "k1") == job_id_for_key("acme", "k1")
    assert job_id_for_key("acme", "k1") != job_id_for_key("globex", "k1")
    assert job_id_for_key("acme", "k1") != job_id_for_key("acme", "k2")


@pytest.mark.parametrize("org", ["acme", "a", "acme-eu.2", "x_y"])
def test_organisation_slugs_are_accepted(org: str) -> None:
    assert check_org(org) == org


@pytest.mark.parametrize("org", ["", "Acme", "-acme", "ac me", "a" * 64, "acme/x"])
def test_other_organisation_names_are_rejected(org: str) -> None:
    with pytest.raises(InvalidJob, match="invalid organisation"):
        check_org(org)
