"""Ledger append rate: events/s with one job per transaction, and with batches of 1,000.

Runs on a scratch database created next to the one DATABASE_URL names and
dropped afterwards, so the figures never depend on what a database holds. Run
alone with `python -m jobledger.bench.ledger` (prints JSON), or through
`jobledger bench`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ledger import JobSpec, Ledger, Settings, registry
from ledger.database import connection_params, maintenance_url

SINGLE_JOBS = 300
BATCH_JOBS = 1_000
BATCHES = 3
EVENTS_PER_JOB = 2  # submitted, queued
NO_QUOTA = 10**9  # the quota check still runs in every append; it just never refuses


@contextmanager
def scratch_database(database_url: str) -> Iterator[str]:
    """A fresh, empty database on the same server, dropped on exit."""
    name = f"{connection_params(database_url)['dbname']}_lbench_{uuid.uuid4().hex[:8]}"[:63]
    admin = maintenance_url(database_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(database_url, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _spec(org: str) -> JobSpec:
    echo = registry.get("diag.echo")
    return JobSpec(org=org, job_type=echo.name, payload=echo.validate_payload({}))


def run(
    settings: Settings,
    *,
    single_jobs: int = SINGLE_JOBS,
    batch_jobs: int = BATCH_JOBS,
    batches: int = BATCHES,
) -> dict[str, float]:
    with scratch_database(settings.database_url) as url:
        ledger = Ledger(url, registry=registry, active_limit=NO_QUOTA, create_tables=True)
        try:
            ledger.submit(_spec("warmup"))  # connections open, statements prepared
            started = time.perf_counter()
            for _ in range(single_jobs):
                ledger.submit(_spec("bench"))
            single_s = time.perf_counter() - started

            started = time.perf_counter()
            for _ in range(batches):
                ledger.submit_many([(_spec("bench"), None) for _ in range(batch_jobs)])
            batch_s = time.perf_counter() - started
        finally:
            ledger.close()
    return {
        "ledger_single_events_s": round(single_jobs * EVENTS_PER_JOB / single_s, 1),
        "ledger_batch_events_s": round(batches * batch_jobs * EVENTS_PER_JOB / batch_s, 1),
    }


def main() -> None:
    from jobledger.wiring import load_job_types, load_settings

    settings = load_settings()
    load_job_types(settings)
    print(json.dumps(run(settings)))


if __name__ == "__main__":
    main()
