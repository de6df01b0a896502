"""Every variable of the contract parses; a bad value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobledger.wiring import StartupError, load_job_types, load_settings
from ledger import Settings

VARIABLES = (
    "DATABASE_URL", "REDIS_URL", "JOBLEDGER_ACTIVE_LIMIT", "JOBLEDGER_WORKER_CONCURRENCY",
    "JOBLEDGER_RETRY_DELAYS", "JOBLEDGER_LEASE_S", "JOBLEDGER_SHUTDOWN_GRACE_S",
    "JOBLEDGER_SCHEDULES", "JOBLEDGER_HANDLERS", "JOBLEDGER_LOG_FORMAT", "JOBLEDGER_REDIS_PREFIX",
    "JOBLEDGER_NOTIFY_WEBHOOK",
)  # fmt: skip


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_defaults_are_those_of_the_contract() -> None:
    settings = load_settings()
    assert settings.database_url == "postgresql://localhost:5432/jobledger"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.active_limit == 50
    assert settings.worker_concurrency == 100
    assert settings.retry_delays_s is None  # each type's own delays
    assert settings.lease_s == 30.0
    assert settings.shutdown_grace_s == 30.0
    assert settings.schedules is None
    assert settings.handlers == ()
    assert settings.log_format == "json"
    assert settings.redis_prefix == "jl"


def test_every_variable_of_the_contract_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "DATABASE_URL": "postgresql://app@db.internal:6543/jobs",
        "REDIS_URL": "rediss://cache.internal:6380/2",
        "JOBLEDGER_ACTIVE_LIMIT": "7",
        "JOBLEDGER_WORKER_CONCURRENCY": "12",
        "JOBLEDGER_RETRY_DELAYS": "0.2, 0.4,0.8",
        "JOBLEDGER_LEASE_S": "2.5",
        "JOBLEDGER_SHUTDOWN_GRACE_S": "0",
        "JOBLEDGER_SCHEDULES": "/etc/jobledger/schedules.toml",
        "JOBLEDGER_HANDLERS": " myapp.jobs , other.jobs ,",
        "JOBLEDGER_LOG_FORMAT": "console",
        "JOBLEDGER_REDIS_PREFIX": "blue",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.database_url == values["DATABASE_URL"]
    assert settings.redis_url == values["REDIS_URL"]
    assert settings.active_limit == 7
    assert settings.worker_concurrency == 12
    assert settings.retry_delays_s == (0.2, 0.4, 0.8)
    assert settings.lease_s == 2.5
    assert settings.shutdown_grace_s == 0.0
    assert settings.schedules == Path("/etc/jobledger/schedules.toml")
    assert settings.handlers == ("myapp.jobs", "other.jobs")
    assert settings.log_format == "console"
    assert settings.redis_prefix == "blue"


def test_an_empty_retry_delays_variable_means_each_types_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBLEDGER_RETRY_DELAYS", " ")
    assert load_settings().retry_delays_s is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://localhost/jobs"),
        ("REDIS_URL", "http://localhost:6379"),
        ("JOBLEDGER_ACTIVE_LIMIT", "0"),
        ("JOBLEDGER_ACTIVE_LIMIT", "many"),
        ("JOBLEDGER_WORKER_CONCURRENCY", "-1"),
        ("JOBLEDGER_RETRY_DELAYS", "60,,900"),
        ("JOBLEDGER_RETRY_DELAYS", "60,-5"),
        ("JOBLEDGER_RETRY_DELAYS", "nan"),
        ("JOBLEDGER_RETRY_DELAYS", "inf"),
        ("JOBLEDGER_LEASE_S", "0"),
        ("JOBLEDGER_LEASE_S", "inf"),
        ("JOBLEDGER_LEASE_S", "soon"),
        ("JOBLEDGER_SHUTDOWN_GRACE_S", "-1"),
        ("JOBLEDGER_LOG_FORMAT", "xml"),
        ("JOBLEDGER_REDIS_PREFIX", "a b"),
        ("JOBLEDGER_NOTIFY_WEBHOOK", "ftp://hooks.example/x"),
    ],
)
def test_a_bad_value_is_one_error_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(StartupError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"invalid {name}: ")
    assert "\n" not in message


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.active_limit = 3  # type: ignore[misc]


def test_a_handlers_module_that_cannot_be_imported_is_named() -> None:
    settings = Settings(handlers=("myapp.no_such_jobs",))
    with pytest.raises(StartupError, match="cannot import JOBLEDGER_HANDLERS module 'myapp"):
        load_job_types(settings)
