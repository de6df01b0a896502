"""Schedules: parsing the TOML document, and which tick is due (a pure function)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.scheduler import (
    Schedule,
    ScheduleError,
    due_tick,
    latest_tick,
    next_tick,
    parse_schedules,
    resume_from,
    tick_job_id,
)
from ledger import registry

GOOD = """
[[schedule]]
name = "nightly-analytics"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
type = "analytics.collect"
org = "acme"
payload = { connection_id = "c-1" }
catch_up = "once"
enabled = true

[[schedule]]
name = "heartbeat"
cron = "*/5 * * * *"
type = "diag.echo"
org = "acme"
"""


def parse(text: str) -> list[Schedule]:
    return parse_schedules(tomllib.loads(text), registry)


def one(**fields: Any) -> str:
    """A one-schedule document with `fields` overriding a valid schedule."""
    values: dict[str, Any] = {
        "name": "s1", "cron": "* * * * *", "type": "diag.echo", "org": "acme", **fields,
    }  # fmt: skip
    lines = ["[[schedule]]"]
    for key, value in values.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, dict):
            inner = ", ".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}"
                              for k, v in value.items())  # fmt: skip
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines)


def test_a_good_file_gives_validated_schedules_with_defaults() -> None:
    nightly, heartbeat = parse(GOOD)
    assert nightly.name == "nightly-analytics"
    assert nightly.timezone.key == "Europe/Berlin"
    assert nightly.job_type == "analytics.collect"
    assert nightly.payload == {"connection_id": "c-1", "since_days": 7}  # defaults filled in
    assert nightly.catch_up == "once"
    assert heartbeat.timezone.key == "UTC"
    assert heartbeat.catch_up == "skip"
    assert heartbeat.enabled
    assert heartbeat.payload["sleep_ms"] == 0


def test_an_empty_document_has_no_schedules() -> None:
    assert parse("") == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "61 * * * *"}, "schedule 's1': cron: not a five-field cron expression"),
        ({"cron": "* * * * * *"}, "schedule 's1': cron: not a five-field cron expression"),
        ({"cron": "@daily"}, "schedule 's1': cron: not a five-field cron expression"),
        ({"timezone": "Mars/Olympus"}, "schedule 's1': timezone: not an IANA time zone"),
        ({"type": "diag.nope"}, "schedule 's1': type: unknown job type 'diag.nope'"),
        ({"payload": {"colour": "red"}}, "schedule 's1': payload.colour: Extra inputs"),
        ({"payload": {"sleep_ms": -5}}, "schedule 's1': payload.sleep_ms: "),
        ({"org": "Not An Org"}, "schedule 's1': org: invalid organisation name"),
        ({"catch_up": "always"}, "schedule 's1': catch_up: "),
        ({"enabled": "yes"}, "schedule 's1': enabled: "),
        ({"colour": "red"}, "schedule 's1': colour: Extra inputs are not permitted"),
        ({"name": ""}, "schedule #1: name: "),
    ],
)
def test_a_bad_field_is_an_error_naming_the_schedule_and_the_field(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse(one(**fields))
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_missing_field_is_named() -> None:
    with pytest.raises(ScheduleError, match=r"^schedule 's1': type: Field required"):
        parse('[[schedule]]\nname = "s1"\ncron = "* * * * *"\norg = "acme"')


def test_schedule_names_are_unique() -> None:
    with pytest.raises(ScheduleError, match=r"^schedule 's1': name: used by another schedule"):
        parse(one() + "\n" + one())


def test_a_top_level_key_other_than_schedule_is_rejected() -> None:
    with pytest.raises(ScheduleError, match="unknown top-level key"):
        parse('[schedules]\nname = "s1"')


# ---------------------------------------------------------------- ticks

T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def every_minute(**overrides: Any) -> Schedule:
    [schedule] = parse(one(**overrides))
    return schedule


def at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


def test_a_due_tick_fires_when_its_time_comes_and_never_before() -> None:
    schedule = every_minute()
    assert due_tick(schedule, at(0.5), at(0.99)) is None
    assert due_tick(schedule, at(0.5), at(1)) == at(1)
    assert due_tick(schedule, at(0.5), at(1.01)) == at(1)
    assert due_tick(schedule, at(1.01), at(1.5)) is None  # already handled


def test_a_running_scheduler_that_wakes_late_still_fires_the_tick_once() -> None:
    schedule = every_minute(catch_up="skip")
    assert due_tick(schedule, at(0.5), at(1.75)) == at(1)
    assert due_tick(schedule, at(0.5), at(3.5)) == at(3)  # only the latest of several


def test_a_disabled_schedule_never_fires() -> None:
    assert due_tick(every_minute(enabled=False), at(0.5), at(1)) is None


def test_a_schedule_never_checked_before_has_missed_nothing() -> None:
    schedule = every_minute(catch_up="once")
    resumed = resume_from(schedule, None, at(10.5))
    assert resumed == at(10.5)
    assert due_tick(schedule, resumed, at(10.9)) is None


def test_after_downtime_skip_fires_only_future_ticks() -> None:
    schedule = every_minute(catch_up="skip")
    resumed = resume_from(schedule, at(0.5), at(5.5))  # down from 0:30 to 5:30
    assert due_tick(schedule, resumed, at(5.5)) is None  # ticks 1..5 were missed
    assert due_tick(schedule, resumed, at(6)) == at(6)


def test_after_downtime_once_fires_the_single_most_recent_missed_tick() -> None:
    schedule = every_minute(catch_up="once")
    resumed = resume_from(schedule, at(0.5), at(5.5))
    assert due_tick(schedule, resumed, at(5.5)) == at(5)
    assert due_tick(schedule, at(5.5), at(5.9)) is None
    assert due_tick(schedule, at(5.5), at(6)) == at(6)


def test_a_restart_without_downtime_fires_nothing_twice() -> None:
    schedule = every_minute(catch_up="once")
    assert due_tick(schedule, resume_from(schedule, at(1.01), at(1.5)), at(1.5)) is None


def test_ticks_follow_the_schedules_time_zone_across_daylight_saving() -> None:
    schedule = every_minute(cron="0 3 * * *", timezone="Europe/Berlin")
    winter = datetime(2026, 1, 15, tzinfo=UTC)
    summer = datetime(2026, 7, 15, tzinfo=UTC)
    assert next_tick(schedule, winter) == datetime(2026, 1, 15, 2, 0, tzinfo=UTC)
    assert next_tick(schedule, summer) == datetime(2026, 7, 15, 1, 0, tzinfo=UTC)


def test_the_latest_tick_includes_one_falling_exactly_on_now() -> None:
    schedule = every_minute(cron="*/5 * * * *")
    assert latest_tick(schedule, at(10)) == at(10)
    assert latest_tick(schedule, at(9.99)) == at(5)
    assert next_tick(schedule, at(10)) == at(15)


def test_tick_job_ids_are_derived_from_schedule_and_tick() -> None:
    first, second = every_minute(), every_minute(name="s2")
    assert tick_job_id(first, at(1)) == tick_job_id(first, at(1))
    assert tick_job_id(first, at(1)) != tick_job_id(first, at(2))
    assert tick_job_id(first, at(1)) != tick_job_id(second, at(1))
