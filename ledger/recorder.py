"""The PostgreSQL recorder: the library's event insert plus the ledger's job index.

The job index (`jl_jobs`) and the per-organisation active counts (`jl_quota`)
are written in the same transaction as the events, after the table lock the
library takes for every insert. So the quota check sees every earlier commit
(no two submissions can both take the last slot), and timers, lease reapers
and reconcilers find what they need without reading a projection that may lag.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

QUOTA_CONSTRAINT = "jl_quota_within_limit"
UNLIMITED = 2**31 - 1

CREATE_JOBS = """
CREATE TABLE IF NOT EXISTS {schema}.jl_jobs (
    job_id uuid PRIMARY KEY,
    org text NOT NULL,
    job_type text NOT NULL,
    status text NOT NULL,
    priority smallint NOT NULL,
    version integer NOT NULL,
    attempts integer NOT NULL,
    due_at timestamptz,
    lease_until timestamptz,
    cancel_requested boolean NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    body_hash text
)
"""
CREATE_JOBS_INDEXES = (
    "CREATE INDEX IF NOT EXISTS jl_jobs_due ON {schema}.jl_jobs (due_at)"
    " WHERE status IN ('scheduled', 'retrying')",
    "CREATE INDEX IF NOT EXISTS jl_jobs_lease ON {schema}.jl_jobs (lease_until)"
    " WHERE status = 'running'",
    "CREATE INDEX IF NOT EXISTS jl_jobs_queued ON {schema}.jl_jobs (priority, created_at)"
    " WHERE status = 'queued'",
)
CREATE_QUOTA = """
CREATE TABLE IF NOT EXISTS {schema}.jl_quota (
    org text PRIMARY KEY,
    active integer NOT NULL,
    lim integer NOT NULL,
    CONSTRAINT jl_quota_within_limit CHECK (active <= lim)
)
"""
UPSERT_QUOTA = """
INSERT INTO {schema}.jl_quota AS q (org, active, lim) VALUES (%s, %s, %s)
ON CONFLICT (org) DO UPDATE SET
    active = q.active + EXCLUDED.active,
    lim = CASE WHEN EXCLUDED.active > 0 THEN EXCLUDED.lim
               ELSE GREATEST(q.lim, q.active + EXCLUDED.active) END
"""
UPSERT_JOB = """
INSERT INTO {schema}.jl_jobs AS j (job_id, org, job_type, status, priority, version,
    attempts, due_at, lease_until, cancel_requested, created_at, updated_at, body_hash)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (job_id) DO UPDATE SET
    status = EXCLUDED.status, version = EXCLUDED.version, attempts = EXCLUDED.attempts,
    due_at = EXCLUDED.due_at, lease_until = EXCLUDED.lease_until,
    cancel_requested = EXCLUDED.cancel_requested, updated_at = EXCLUDED.updated_at
"""

IndexRow = tuple[Any, ...]
QuotaDelta = tuple[str, int, int]  # org, change in active jobs, limit to check


class LedgerRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
        self.sql_create_statements.append(SQL(CREATE_JOBS).format(schema=schema))
        for statement in CREATE_JOBS_INDEXES:
            self.sql_create_statements.append(SQL(statement).format(schema=schema))
        self.sql_create_statements.append(SQL(CREATE_QUOTA).format(schema=schema))
        self.upsert_quota = SQL(UPSERT_QUOTA).format(schema=schema)
        self.upsert_job = SQL(UPSERT_JOB).format(schema=schema)

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        index_rows: Sequence[IndexRow] = (),
        quota: Sequence[QuotaDelta] = (),
        **kwargs: Any,
    ) -> None:
        if not index_rows and not quota:
            return
        # Take the insert lock first, so the quota sees every earlier commit.
        self._lock_table(curs)
        for org, delta, limit in quota:
            curs.execute(self.upsert_quota, (org, delta, limit), prepare=True)
        if index_rows:
            curs.executemany(self.upsert_job, index_rows)
