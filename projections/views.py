"""The job-status views in PostgreSQL and the projector's tracking position.

`ViewStore.commit` writes a batch's rows, counts and metrics and moves the
tracking position in ONE transaction, a handful of statements whatever the
batch size. It first moves the position, and only from the one the batch was
computed from: so a batch lands whole or not at all, never twice, and two
writers (a projector and a rebuild, or a leader that lost its lock) can never
interleave. Rows are read together with the position they reflect.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any
from uuid import UUID

import psycopg

from projections.errors import PositionMoved
from projections.job_status import Batch, JobRow

PROJECTION = "job_status"
# The comment on jl_view_jobs, bumped whenever the views' tables change: `create`
# then drops them and the projector rebuilds them from the ledger.
SCHEMA_VERSION = "jobledger views 2"

# `state` is the ledger's snapshot of the job (every field of the job object
# and what the next event folds into); `json`, not jsonb: cheaper to write,
# and it keeps its key order.
CREATE_TABLES = """
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
    state json NOT NULL
);
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
COMMENT ON TABLE jl_view_jobs IS 'jobledger views 2';
"""
TABLES_VERSION = """
SELECT to_regclass('jl_view_jobs') IS NOT NULL,
    obj_description(to_regclass('jl_view_jobs'), 'pg_class')
"""
# Secondary indexes: the list's filters (newest first by seq) and the dead letters.
CREATE_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS jl_view_jobs_seq ON jl_view_jobs (seq);
CREATE INDEX IF NOT EXISTS jl_view_jobs_org ON jl_view_jobs (org, seq);
CREATE INDEX IF NOT EXISTS jl_view_jobs_org_status ON jl_view_jobs (org, status, seq);
CREATE INDEX IF NOT EXISTS jl_view_jobs_org_type ON jl_view_jobs (org, job_type, seq);
CREATE INDEX IF NOT EXISTS jl_view_jobs_status ON jl_view_jobs (status, seq);
CREATE INDEX IF NOT EXISTS jl_view_jobs_dead ON jl_view_jobs (org, updated_at, seq)
    WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS jl_view_jobs_all_dead ON jl_view_jobs (updated_at, seq)
    WHERE status = 'failed';
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
LOCK_POSITION = "SELECT position FROM jl_view_tracking WHERE name = %s FOR UPDATE"
RESET_POSITION = "UPDATE jl_view_tracking SET position = 0, updated_at = now() WHERE name = %s"

READ_POSITION = "SELECT position FROM jl_view_tracking WHERE name = %s"
# One statement, one snapshot: the rows and the position they reflect.
SELECT_ROWS = """
SELECT t.position, j.job_id, j.seq, j.state
FROM jl_view_tracking t LEFT JOIN jl_view_jobs j ON j.job_id = ANY(%s)
WHERE t.name = %s
"""
MOVE_POSITION = """
UPDATE jl_view_tracking SET position = %s, updated_at = now()
WHERE name = %s AND position = %s RETURNING position
"""
UPSERT_JOBS = """
INSERT INTO jl_view_jobs AS j (job_id, seq, org, job_type, status, priority,
    created_at, updated_at, version, state)
SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[],
    %b::timestamptz[], %b::timestamptz[], %b::integer[], %b::json[])
ON CONFLICT (job_id) DO UPDATE SET
    status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, version = EXCLUDED.version,
    state = EXCLUDED.state
"""
UPSERT_COUNTS = """
INSERT INTO jl_view_counts AS c (org, job_type, status, n)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[])
ON CONFLICT (org, job_type, status) DO UPDATE SET n = c.n + EXCLUDED.n
"""
# Rows that fell to zero go, so the counts hold exactly what a rebuild makes.
DELETE_EMPTY_COUNTS = """
DELETE FROM jl_view_counts c USING unnest(%b::text[], %b::text[], %b::text[]) AS k(o, t, s)
WHERE c.org = k.o AND c.job_type = k.t AND c.status = k.s AND c.n = 0
"""
UPSERT_METRICS = """
INSERT INTO jl_view_metrics AS m (job_type, metric, n)
SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[])
ON CONFLICT (job_type, metric) DO UPDATE SET n = m.n + EXCLUDED.n
"""


def create(conn: psycopg.Connection[Any]) -> None:
    """Create the views, their indexes and the tracking row if missing (safe to repeat).

    Views of an older layout are dropped and start again from position 0: the
    projector rebuilds them from the ledger.
    """
    exists, version = conn.execute(TABLES_VERSION).fetchone() or (False, None)
    if exists and version != SCHEMA_VERSION:
        recreate(conn)
    with conn.transaction():
        conn.execute(CREATE_TABLES)
        conn.execute(CREATE_INDEXES)
        conn.execute(CREATE_TRACKING)


def recreate(conn: psycopg.Connection[Any]) -> None:
    """Drop the views and start them empty at position 0 (secondary indexes come later)."""
    with conn.transaction():
        conn.execute(CREATE_TRACKING)
        conn.execute(LOCK_POSITION, (PROJECTION,))
        conn.execute(DROP_VIEWS)
        conn.execute(CREATE_TABLES)
        conn.execute(RESET_POSITION, (PROJECTION,))


def create_indexes(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(CREATE_INDEXES)


def _columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


class ViewStore:
    """Reads rows and commits batches, on one autocommit connection of its own."""

    def __init__(self, conn: psycopg.Connection[Any], name: str = PROJECTION) -> None:
        self.conn = conn
        self.name = name

    def position(self) -> int:
        row = self.conn.execute(READ_POSITION, (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def rows(self, job_ids: Collection[UUID], expected: int) -> dict[UUID, JobRow]:
        """The stored rows of these jobs; PositionMoved unless they reflect `expected`."""
        found = self.conn.execute(SELECT_ROWS, (list(job_ids), self.name)).fetchall()
        position = int(found[0][0]) if found else -1
        if position != expected:
            raise PositionMoved(expected, position)
        return {
            job_id: JobRow.from_state(state, seq)
            for _, job_id, seq, state in found
            if job_id is not None
        }

    def commit(self, expected: int, batch: Batch) -> None:
        """Write the batch and move the position from `expected`, in one transaction."""
        conn = self.conn
        with conn.pipeline(), conn.transaction():
            moved = conn.execute(MOVE_POSITION, (batch.position, self.name, expected))
            self._write(batch)
            if moved.fetchone() is None:  # raising here rolls the writes back
                raise PositionMoved(expected, self.position())

    def _write(self, batch: Batch) -> None:
        conn = self.conn
        if batch.rows:
            dumps = json.dumps
            rows = (
                (
                    job_id, row.seq, row.job.org, row.job.type, row.job.status.value,
                    row.job.priority, row.job.created_at, row.job.updated_at, row.job.version,
                    dumps(row.state()),
                )
                for job_id, row in batch.rows.items()
            )  # fmt: skip
            conn.execute(UPSERT_JOBS, _columns(rows, 10))
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
