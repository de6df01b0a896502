"""The `jobledger` command through a subprocess: ledger commands and bad input.

`jobledger migrate` is covered by tests/integration/test_ledger_migrate.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

JOBLEDGER = str(Path(sys.executable).with_name("jobledger"))


def jobledger(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JOBLEDGER, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def ok(env: dict[str, str], *args: str) -> str:
    done = jobledger(env, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_submitted_job_is_shown_and_its_history_listed(env: dict[str, str]) -> None:
    job_id = ok(env, "submit", "diag.echo", "--payload", '{"result": 7}', "--org", "acme")
    job_id = job_id.strip()
    uuid.UUID(job_id)

    shown = json.loads(ok(env, "show", job_id))
    assert shown["id"] == job_id
    assert (shown["org"], shown["type"], shown["status"]) == ("acme", "diag.echo", "queued")
    assert shown["payload"]["result"] == 7
    assert (shown["attempts"], shown["max_attempts"], shown["version"]) == (0, 4, 2)

    lines = [json.loads(line) for line in ok(env, "history", job_id, "--json").splitlines()]
    assert [(e["version"], e["type"]) for e in lines] == [(1, "submitted"), (2, "queued")]
    assert lines[0]["data"]["org"] == "acme"
    datetime.fromisoformat(lines[0]["at"])

    table = ok(env, "history", job_id)
    assert "submitted" in table
    assert "queued" in table
    assert lines[0]["at"] in table


def test_a_delayed_job_is_scheduled_and_show_at_replays_an_instant(env: dict[str, str]) -> None:
    job_id = ok(env, "submit", "diag.echo", "--org", "acme", "--delay-s", "3600").strip()
    shown = json.loads(ok(env, "show", job_id))
    assert shown["status"] == "scheduled"
    created = datetime.fromisoformat(shown["created_at"])
    due = datetime.fromisoformat(shown["next_attempt_at"])
    # The CLI reads the clock for the delay a moment before the ledger stamps the event.
    assert abs(due - (created + timedelta(hours=1))) < timedelta(seconds=1)

    key = ok(env, "submit", "diag.echo", "--org", "acme", "--idempotency-key", "k1").strip()
    again = ok(env, "submit", "diag.echo", "--org", "acme", "--idempotency-key", "k1").strip()
    assert again == key

    at = json.loads(ok(env, "show", job_id, "--at", shown["created_at"]))
    assert at == shown
    before = (created - timedelta(seconds=1)).isoformat()
    gone = jobledger(env, "show", job_id, "--at", before)
    assert gone.returncode == 2
    assert "not found" in gone.stderr


UNKNOWN = str(uuid.uuid4())
SUBMIT = ("submit", "diag.echo", "--org", "acme")
UNREACHABLE = {"DATABASE_URL": "postgresql://root@127.0.0.1:1/jobledger"}
BAD_INPUT: list[tuple[tuple[str, ...], str, dict[str, str]]] = [
    (("submit", "diag.nope", "--org", "acme"), "unknown job type 'diag.nope'", {}),
    (
        (*SUBMIT, "--payload", '{"sleep_ms": -1}'),
        "invalid payload for diag.echo: payload.sleep_ms",
        {},
    ),
    ((*SUBMIT, "--payload", '{"sleep_ms": '), "--payload is not valid JSON", {}),
    ((*SUBMIT, "--max-attempts", "0"), "--max-attempts: Input should be greater than", {}),
    (("submit", "diag.echo", "--org", "Bad Org"), "invalid organisation 'Bad Org'", {}),
    (
        (*SUBMIT, "--delay-s", "1", "--run-at", "2030-01-01T00:00:00Z"),
        "either run_at or delay_s",
        {},
    ),
    (("show", "not-a-uuid"), "not a job id (a UUID): 'not-a-uuid'", {}),
    (("history", UNKNOWN), f"job {UNKNOWN} not found", {}),
    (("show", UNKNOWN, "--at", "yesterday"), "not an ISO-8601 time", {}),
    (("show", UNKNOWN, "--at", "2026-01-01T00:00:00"), "needs a time zone", {}),
    (("show", UNKNOWN), "jobledger: error: cannot reach the database", UNREACHABLE),
    (SUBMIT, "jobledger: error: cannot reach the database", UNREACHABLE),
    (("show", UNKNOWN), "error: invalid JOBLEDGER_ACTIVE_LIMIT: ", {"JOBLEDGER_ACTIVE_LIMIT": "x"}),
]


def test_bad_input_exits_2_with_one_line_and_no_traceback(env: dict[str, str]) -> None:
    """Every case runs at once, each its own process."""
    running = [
        subprocess.Popen(
            [JOBLEDGER, *args],
            env={**env, **overrides},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, _, overrides in BAD_INPUT
    ]
    for (args, says, _), process in zip(BAD_INPUT, running, strict=True):
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 2, (args, stderr)
        assert stdout == "", args
        assert len(stderr.splitlines()) == 1, (args, stderr)
        assert says in stderr, (args, stderr)
        assert "Traceback" not in stderr


def test_an_unreachable_database_is_reported_within_seconds(env: dict[str, str]) -> None:
    started = time.monotonic()
    done = jobledger({**env, **UNREACHABLE}, "history", UNKNOWN)
    assert time.monotonic() - started < 8  # the ledger's pool alone would wait 10 s
    assert done.returncode == 2
    assert done.stderr.startswith("jobledger: error: cannot reach the database: ")


SCHEDULES = """
[[schedule]]
name = "nightly-analytics"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
type = "analytics.collect"
org = "acme"
payload = { connection_id = "c-1" }

[[schedule]]
name = "paused"
cron = "*/5 * * * *"
type = "diag.echo"
org = "acme"
enabled = false
"""


def test_schedules_lists_each_schedule_with_its_next_fire_time(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(SCHEDULES)
    table = ok({**env, "JOBLEDGER_SCHEDULES": str(path)}, "schedules")
    header, nightly, paused = table.strip().splitlines()
    assert header.split() == ["name", "cron", "timezone", "type", "org", "enabled", "next", "fire"]
    assert nightly.split()[:10] == [
        "nightly-analytics", "0", "3", "*", "*", "*", "Europe/Berlin", "analytics.collect",
        "acme", "yes",
    ]  # fmt: skip
    upcoming = datetime.fromisoformat(nightly.split()[10])
    assert upcoming.astimezone(ZoneInfo("Europe/Berlin")).hour == 3
    assert paused.split()[-2:] == ["no", "-"]


@pytest.mark.parametrize("command", ["scheduler", "up"])
def test_a_bad_schedules_file_stops_the_scheduler_naming_schedule_and_field(
    env: dict[str, str], tmp_path: Path, command: str
) -> None:
    """`up` checks the file itself before it starts any role."""
    path = tmp_path / "schedules.toml"
    path.write_text(SCHEDULES.replace("Europe/Berlin", "Europe/Atlantis"))
    done = jobledger({**env, "JOBLEDGER_SCHEDULES": str(path)}, command)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "jobledger: error: schedule 'nightly-analytics': timezone: "
        "not an IANA time zone: 'Europe/Atlantis'"
    )


def test_the_scheduler_runs_until_sigterm_and_exits_0(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(SCHEDULES)
    process = subprocess.Popen(
        [JOBLEDGER, "scheduler"],
        env={**env, "JOBLEDGER_SCHEDULES": str(path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    assert "scheduler started" in process.stderr.readline()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_types_lists_every_type_with_the_delays_in_effect(env: dict[str, str]) -> None:
    lines = ok({**env, "JOBLEDGER_RETRY_DELAYS": "0.2,0.4"}, "types", "--json").splitlines()
    types = {row["name"]: row for row in map(json.loads, lines)}
    assert set(types) >= {
        "diag.echo", "content.generate", "content.publish", "context.scrape", "rss.sync",
        "analytics.collect", "token.refresh", "brand.learn", "notify.send",
    }  # fmt: skip
    generate = types["content.generate"]
    assert (generate["timeout_s"], generate["retry_delays_s"]) == (300.0, [0.2, 0.4])
    assert generate["max_attempts"] == 3
    assert generate["payload_schema"]["additionalProperties"] is False
    assert "brief" in generate["payload_schema"]["required"]
