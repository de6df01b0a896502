"""A submission as users write it, and how it becomes a job spec.

The same model validates `POST /api/jobs`, the batch route and the CLI, so
every entry point accepts and rejects the same things.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from ledger.domain.errors import InvalidJob
from ledger.domain.job import JobSpec
from ledger.domain.job_types import Registry

MAX_DELAY_S = 31_536_000


class Submission(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: Literal["high", "normal", "low"] = "normal"
    run_at: AwareDatetime | None = None
    delay_s: float | None = Field(None, ge=0, le=MAX_DELAY_S, allow_inf_nan=False)
    max_attempts: int | None = Field(None, ge=1, le=100)
    timeout_s: float | None = Field(None, gt=0, le=86_400, allow_inf_nan=False)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)

    @field_validator("run_at")
    @classmethod
    def _representable_in_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("run_at is out of range") from None

    @model_validator(mode="after")
    def _one_of_run_at_or_delay(self) -> Submission:
        if self.run_at is not None and self.delay_s is not None:
            raise ValueError("give either run_at or delay_s, not both")
        return self


def job_id_for_key(org: str, key: str) -> UUID:
    """Deterministic: the event store's uniqueness makes a second job impossible."""
    return uuid5(NAMESPACE_URL, f"jobledger:/orgs/{org}/idempotency/{key}")


def to_spec(
    submission: Submission,
    *,
    org: str,
    registry: Registry,
    now: datetime,
    retry_delays_s: tuple[float, ...] | None = None,
) -> tuple[JobSpec, str]:
    """The validated spec, and a fingerprint of the body with defaults filled in."""
    job_type = registry.get(submission.type)
    payload = job_type.validate_payload(submission.payload)
    policy = job_type.policy(retry_delays_s)
    max_attempts = submission.max_attempts or policy.max_attempts
    timeout_s = submission.timeout_s or job_type.timeout_s
    run_at = submission.run_at.astimezone(now.tzinfo) if submission.run_at else None
    spec = JobSpec(
        org=org,
        job_type=job_type.name,
        payload=payload,
        priority=submission.priority,
        run_at=run_at,
        delay_s=submission.delay_s or None,
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        idempotency_key=submission.idempotency_key,
    )
    body = {
        "type": job_type.name,
        "payload": payload,
        "priority": submission.priority,
        "run_at": run_at.isoformat() if submission.run_at and run_at else None,
        "delay_s": submission.delay_s or None,
        "max_attempts": max_attempts,
        "timeout_s": timeout_s,
    }
    fingerprint = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return spec, fingerprint


ORG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def check_org(org: str) -> str:
    """Organisation names are short slugs: they appear in keys, logs and URLs."""
    if not ORG_PATTERN.match(org):
        raise InvalidJob(
            f"invalid organisation {org!r}: "
            "use 1-63 of a-z 0-9 . _ -, starting with a letter or digit",
            [{"loc": ["org"], "msg": "invalid organisation name", "type": "value_error"}],
        )
    return org
