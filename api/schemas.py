"""The shapes the API answers with, as pydantic models for the OpenAPI document.

Handlers return plain dicts (`ledger.as_document`, the read models' rows): these
models describe them; the tests check every answer against the document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

StatusName = Literal[
    "scheduled", "queued", "running", "retrying", "succeeded", "failed", "cancelled"
]
PriorityName = Literal["high", "normal", "low"]
EventName = Literal[
    "submitted",
    "queued",
    "attempt_started",
    "attempt_succeeded",
    "attempt_failed",
    "retry_scheduled",
    "failed",
    "cancel_requested",
    "cancelled",
    "retry_requested",
]


class ErrorOut(BaseModel):
    status_code: int
    detail: str
    extra: Any = None


class JobError(BaseModel):
    type: str
    message: str


class JobOut(BaseModel):
    id: UUID
    org: str
    type: str
    status: StatusName
    priority: PriorityName
    payload: dict[str, Any]
    result: Any = None
    attempts: int = Field(ge=0)
    max_attempts: int = Field(ge=1)
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    last_error: JobError | None
    cancel_requested: bool
    idempotency_key: str | None
    version: int = Field(ge=1)


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class BatchOut(BaseModel):
    items: list[JobOut]


class EventOut(BaseModel):
    version: int = Field(ge=1)
    type: EventName
    at: datetime
    data: dict[str, Any]


class EventList(BaseModel):
    items: list[EventOut]


class StatsOut(BaseModel):
    by_status: dict[str, int]
    by_type: dict[str, int]


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    checks: dict[str, Any]
