"""Helpers of the worker tests (no tests here): role subprocesses, submissions, waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from ledger import Job, Ledger, Settings, Submission, event_document, to_spec, utc_now

JOBLEDGER = str(Path(sys.executable).with_name("jobledger"))
DELAYS = (0.2, 0.4)


def role_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JOBLEDGER_REDIS_PREFIX": settings.redis_prefix,
        "JOBLEDGER_LOG_FORMAT": "json",
        "JOBLEDGER_RETRY_DELAYS": ",".join(str(d) for d in DELAYS),
        "JOBLEDGER_LEASE_S": "2",
        "JOBLEDGER_SHUTDOWN_GRACE_S": "1",
        "JOBLEDGER_ACTIVE_LIMIT": "10000",
        **extra,
    }


class Role:
    """A `jobledger <role>` subprocess whose stderr (the JSON log) goes to a file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [JOBLEDGER, name], env=env, stdout=subprocess.DEVNULL, stderr=self._log
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def terminate(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def roles(env: dict[str, str], log_dir: Path, *names: str) -> Iterator[list[Role]]:
    started = [Role(name, env, log_dir) for name in names]
    try:
        yield started
    finally:
        for role in started:
            role.kill()


@contextmanager
def cloned_database(template: str, server: str) -> Iterator[str]:
    """A database of its own, cloned from the migrated template (for shared fixtures)."""
    name = f"jl_w_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def submit(ledger: Ledger, org: str = "acme", **fields: Any) -> Job:
    """Submit a job as the API would, with the tests' retry delays."""
    fields.setdefault("type", "diag.echo")
    submission = Submission(**fields)
    spec, fingerprint = to_spec(
        submission, org=org, registry=ledger.registry, now=utc_now(), retry_delays_s=DELAYS
    )
    job, _ = ledger.submit(spec, fingerprint=fingerprint)
    return job


def status(ledger: Ledger, job_id: UUID) -> str | None:
    with ledger.connection() as conn:
        row = conn.execute("SELECT status FROM jl_jobs WHERE job_id = %s", (job_id,)).fetchone()
    return None if row is None else str(row["status"])


def wait_for(ledger: Ledger, job_id: UUID, *statuses: str, timeout: float = 20.0) -> Job:
    deadline = time.monotonic() + timeout
    while (now := status(ledger, job_id)) not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} is {now}, expected one of {statuses}"
        time.sleep(0.05)
    return ledger.load(job_id)


def history(ledger: Ledger, job_id: UUID) -> list[dict[str, Any]]:
    return [event_document(e) for e in ledger.history(job_id)]


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["at"])
