"""A job's whole state as plain JSON, to travel in a stream message.

A worker that receives the state with its version can decide and append the
next events without reading the job back; if the job moved on meanwhile, the
ledger's version check rejects the append and the worker reloads.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.domain.job import Job
from ledger.domain.status import Status

_DATETIMES = frozenset(
    {
        "created_at",
        "run_at",
        "updated_at",
        "lease_until",
        "started_at",
        "finished_at",
        "next_attempt_at",
    }
)
_FIELDS = tuple(f.name for f in fields(Job))


def to_snapshot(job: Job) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(job, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, UUID):
            value = str(value)
        out[name] = value
    return out


def from_snapshot(data: dict[str, Any]) -> Job:
    values = dict(data)
    values["id"] = UUID(values["id"])
    values["status"] = Status(values["status"])
    for name in _DATETIMES:
        if values.get(name) is not None:
            values[name] = datetime.fromisoformat(values[name])
    return Job(**values)
