"""Plain factory functions with keyword overrides; no shared state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from ledger import JobSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def a_spec(**overrides: Any) -> JobSpec:
    values: dict[str, Any] = {
        "org": "acme",
        "job_type": "diag.echo",
        "payload": {
            "sleep_ms": 0,
            "fail_times": 0,
            "retryable": True,
            "error": "boom",
            "result": None,
        },
        "priority": "normal",
        "run_at": None,
        "max_attempts": 4,
        "timeout_s": 60.0,
        "idempotency_key": None,
    }
    values.update(overrides)
    return JobSpec(**values)


def a_job_id() -> UUID:
    return uuid4()
