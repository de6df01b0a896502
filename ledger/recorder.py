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

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
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

# One statement, one round trip, one transaction: lock, quota, index, notify, events.
# Round trips cost far more than SQL here, and the library's pipelined
# transaction takes a dozen of them per save.
CREATE_APPEND_FUNCTION = """
CREATE OR REPLACE FUNCTION {schema}.jl_append(
    events {schema}.{event_type}[],
    j_ids uuid[], j_orgs text[], j_types text[], j_status text[], j_prio smallint[],
    j_version integer[], j_attempts integer[], j_due timestamptz[], j_lease timestamptz[],
    j_cancel boolean[], j_created timestamptz[], j_updated timestamptz[], j_hash text[],
    q_orgs text[], q_deltas integer[], q_limits integer[]
) RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$
BEGIN
    SET LOCAL lock_timeout = '30s';
    LOCK TABLE {schema}.{events} IN EXCLUSIVE MODE;
    IF cardinality(q_orgs) > 0 THEN
        INSERT INTO {schema}.jl_quota AS q (org, active, lim)
        SELECT * FROM unnest(q_orgs, q_deltas, q_limits)
        ON CONFLICT (org) DO UPDATE SET
            active = q.active + EXCLUDED.active,
            lim = CASE WHEN EXCLUDED.active > 0 THEN EXCLUDED.lim
                       ELSE GREATEST(q.lim, q.active + EXCLUDED.active) END;
    END IF;
    INSERT INTO {schema}.jl_jobs AS j (job_id, org, job_type, status, priority, version,
        attempts, due_at, lease_until, cancel_requested, created_at, updated_at, body_hash)
    SELECT * FROM unnest(j_ids, j_orgs, j_types, j_status, j_prio, j_version, j_attempts,
        j_due, j_lease, j_cancel, j_created, j_updated, j_hash)
    ON CONFLICT (job_id) DO UPDATE SET
        status = EXCLUDED.status, version = EXCLUDED.version, attempts = EXCLUDED.attempts,
        due_at = EXCLUDED.due_at,
        -- a worker renews its lease in this row; an event of the same attempt
        -- (a cancel request) must not turn the clock back
        lease_until = CASE WHEN EXCLUDED.status = 'running' AND j.status = 'running'
                                AND EXCLUDED.attempts = j.attempts
                           THEN GREATEST(j.lease_until, EXCLUDED.lease_until)
                           ELSE EXCLUDED.lease_until END,
        cancel_requested = EXCLUDED.cancel_requested, updated_at = EXCLUDED.updated_at;
    NOTIFY {channel};
    RETURN QUERY INSERT INTO {schema}.{events} (originator_id, originator_version, topic, state)
        SELECT originator_id, originator_version, topic, state FROM unnest(events)
        RETURNING notification_id;
END;
$BODY$
"""
CALL_APPEND = """
SELECT * FROM {schema}.jl_append(%b, %b::uuid[], %b::text[], %b::text[], %b::text[],
    %b::smallint[], %b::integer[], %b::integer[], %b::timestamptz[], %b::timestamptz[],
    %b::boolean[], %b::timestamptz[], %b::timestamptz[], %b::text[],
    %b::text[], %b::integer[], %b::integer[]) AS notification_id
"""
INDEX_COLUMNS = 13

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
        self.sql_create_statements.append(
            SQL(CREATE_APPEND_FUNCTION).format(
                schema=schema,
                event_type=Identifier(self.stored_event_type_name),
                events=Identifier(self.events_table_name),
                channel=Identifier(self.channel_name),
            )
        )
        self.call_append = SQL(CALL_APPEND).format(schema=schema)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        index_rows: Sequence[IndexRow] = (),
        quota: Sequence[QuotaDelta] = (),
        **kwargs: Any,
    ) -> Sequence[int] | None:
        """Insert events, job index rows and quota changes in one transaction.

        The events-table lock is taken before the quota is checked, so the
        check sees every earlier commit, and insert order stays commit order
        for readers tailing the notification log.
        """
        events = [
            self.construct_pg_stored_event(e.originator_id, e.originator_version, e.topic, e.state)
            for e in stored_events
        ]
        index_columns = [list(c) for c in zip(*index_rows, strict=True)] or [
            [] for _ in range(INDEX_COLUMNS)
        ]
        quota_columns = [list(c) for c in zip(*quota, strict=True)] or [[], [], []]
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.call_append, (events, *index_columns, *quota_columns), prepare=True)
            return [row["notification_id"] for row in curs.fetchall()]
