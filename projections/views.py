"""The job-status views in PostgreSQL and the projector's tracking position.

`ViewStore.commit` writes a batch's rows, counts and metrics and moves the
tracking position in ONE transaction, a handful of statements whatever the
batch size, after locking the tracking row and checking that the position is
the one the batch was computed from. So a batch lands whole or not at all,
never twice, and two writers (a projector and a rebuild, or a leader that lost
its lock) can never interleave.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from uuid import UUID

import psycopg

from projections.errors import PositionMoved
from projections.job_status import Batch, JobRow

PROJECTION = "job_status"
JOBS = "jl_view_jobs"
COUNTS = "jl_view_counts"
METRICS = "jl_view_metrics"
TRACKING = "jl_view_tracking"
VIEW_TABLES = (JOBS, COUNTS, METRICS)

# `doc` is the contract's job object and `state` the ledger snapshot the next
# event folds into; both `json` (not jsonb) so the object keeps its key order.
CREATE_VIEWS = """
CREATE TABLE IF NOT EXISTS jl_view_jobs (
    job_id uuid PRIMARY KEY,
    seq bigint NOT NULL,
    org text NOT NULL,
    job_type text NOT NULL,
    status text NOT NULL,
    priority text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    version integer NOT NULL,
    state json NOT NULL,
    doc json NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jl_view_jobs_seq ON jl_view_jobs (seq);
CREATE INDEX IF NOT EXISTS jl_view_jobs_org ON jl_view_jobs (org, seq);
CREATE INDEX IF NOT EXISTS jl_view_jobs_org_status ON jl_view_jobs (org, status, seq);
CREATE INDEX IF NOT EXISTS jl_view_jobs_org_type ON jl_view_jobs (org, job_type, seq);
CREATE INDEX IF NOT EXISTS jl_view_jobs_status ON jl_view_jobs (status, seq);
CREATE INDEX IF NOT EXISTS jl_view_jobs_dead ON jl_view_jobs (org, updated_at, seq)
    WHERE status = 'failed';
CREATE TABLE IF NOT EXISTS jl_view_counts (
    org text NOT NULL,
    job_type text NOT NULL,
    status text NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (org, job_type, status)
);
CREATE TABLE IF NOT EXISTS jl_view_metrics (
    job_type text NOT NULL,
    metric text NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (job_type, metric)
);
"""
CREATE_TRACKING = """
CREATE TABLE IF NOT EXISTS jl_view_tracking (
    name text PRIMARY KEY,
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO jl_view_tracking (name, position) VALUES ('job_status', 0)
ON CONFLICT (name) DO NOTHING;
"""
DROP_VIEWS = "DROP TABLE IF EXISTS jl_view_jobs, jl_view_counts, jl_view_metrics"
RESET_TRACKING = "UPDATE jl_view_tracking SET position = 0, updated_at = now() WHERE name = %s"

LOCK_POSITION = "SELECT position FROM jl_view_tracking WHERE name = %s FOR UPDATE"
READ_POSITION = "SELECT position FROM jl_view_tracking WHERE name = %s"
SELECT_ROWS = "SELECT job_id, seq, state FROM jl_view_jobs WHERE job_id = ANY(%s)"
UPSERT_JOBS = """
INSERT INTO jl_view_jobs AS j (job_id, seq, org, job_type, status, priority,
    created_at, updated_at, version, state, doc)
SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],
    %s::timestamptz[], %s::timestamptz[], %s::integer[], %s::json[], %s::json[])
ON CONFLICT (job_id) DO UPDATE SET
    status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, version = EXCLUDED.version,
    state = EXCLUDED.state, doc = EXCLUDED.doc
"""
UPSERT_COUNTS = """
INSERT INTO jl_view_counts AS c (org, job_type, status, n)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])
ON CONFLICT (org, job_type, status) DO UPDATE SET n = c.n + EXCLUDED.n
"""
# Rows that fell to zero go, so the counts hold exactly what a rebuild makes.
DELETE_EMPTY_COUNTS = """
DELETE FROM jl_view_counts c USING unnest(%s::text[], %s::text[], %s::text[]) AS k(o, t, s)
WHERE c.org = k.o AND c.job_type = k.t AND c.status = k.s AND c.n = 0
"""
UPSERT_METRICS = """
INSERT INTO jl_view_metrics AS m (job_type, metric, n)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[])
ON CONFLICT (job_type, metric) DO UPDATE SET n = m.n + EXCLUDED.n
"""
MOVE_POSITION = "UPDATE jl_view_tracking SET position = %s, updated_at = now() WHERE name = %s"


def create(conn: psycopg.Connection[Any]) -> None:
    """Create the views and the tracking row if missing (safe to repeat)."""
    with conn.transaction():
        conn.execute(CREATE_VIEWS)
        conn.execute(CREATE_TRACKING)


def recreate(conn: psycopg.Connection[Any]) -> None:
    """Drop the views and start them empty at position 0, in one transaction."""
    with conn.transaction():
        conn.execute(CREATE_TRACKING)
        conn.execute(LOCK_POSITION, (PROJECTION,))
        conn.execute(DROP_VIEWS)
        conn.execute(CREATE_VIEWS)
        conn.execute(RESET_TRACKING, (PROJECTION,))


def _columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


class ViewStore:
    """Reads rows and commits batches on one connection of its own."""

    def __init__(self, conn: psycopg.Connection[Any], name: str = PROJECTION) -> None:
        self.conn = conn
        self.name = name

    def position(self) -> int:
        row = self.conn.execute(READ_POSITION, (self.name,)).fetchone()
        self.conn.commit()
        return int(row[0]) if row else 0

    def commit(self, expected: int, batch_of: Any, wanted: Iterable[UUID]) -> Batch:
        """Lock the position, read the rows `batch_of(rows)` needs, write its batch.

        `batch_of` gets the stored rows of the `wanted` jobs and returns the
        Batch; raises PositionMoved (and writes nothing) when the position is
        not `expected`, i.e. another writer got there first.
        """
        conn = self.conn
        ids = list(wanted)
        with conn.pipeline(), conn.transaction():
            locked = conn.execute(LOCK_POSITION, (self.name,))
            found = conn.execute(SELECT_ROWS, (ids,)) if ids else None
            row = locked.fetchone()
            position = int(row[0]) if row else -1
            if position != expected:
                raise PositionMoved(expected, position)
            stored = {
                job_id: JobRow.from_state(state, seq)
                for job_id, seq, state in (found.fetchall() if found else [])
            }
            batch: Batch = batch_of(stored)
            self._write(batch)
        return batch

    def _write(self, batch: Batch) -> None:
        conn = self.conn
        if batch.rows:
            dumps = json.dumps
            rows = (
                (
                    job_id, row.seq, row.job.org, row.job.type, row.job.status.value,
                    row.job.priority, row.job.created_at, row.job.updated_at, row.job.version,
                    dumps(row.state()), dumps(row.document()),
                )
                for job_id, row in batch.rows.items()
            )  # fmt: skip
            conn.execute(UPSERT_JOBS, _columns(rows, 11))
        if batch.counts:
            orgs, types, statuses, deltas = _columns(
                ((*key, n) for key, n in batch.counts.items()), 4
            )
            conn.execute(UPSERT_COUNTS, (orgs, types, statuses, deltas))
            conn.execute(DELETE_EMPTY_COUNTS, (orgs, types, statuses))
        if batch.metrics:
            conn.execute(
                UPSERT_METRICS, _columns(((*key, n) for key, n in batch.metrics.items()), 3)
            )
        conn.execute(MOVE_POSITION, (batch.position, self.name))
