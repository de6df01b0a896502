"""The PostgreSQL recorder: the library's event insert plus the ledger's job index.

The job index (`jl_jobs`) and the per-organisation active counts (`jl_quota`)
are written in the same transaction as the events, after the table lock the
library takes for every insert. So the quota check sees every earlier commit
(no two submissions can both take the last slot), and timers, lease reapers
and reconcilers find what they need without reading a projection that may lag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg.sql import SQL, Identifier, Literal

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
# transaction takes a dozen of them per save. The rows travel as three JSON
# documents: one C-level json.dumps in Python and one jsonb parse in the
# server cost a fraction of what binding a dozen arrays element by element does.
CREATE_APPEND_FUNCTION = """
CREATE OR REPLACE FUNCTION {schema}.jl_append(events jsonb, jobs jsonb, quota jsonb)
RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$
BEGIN
    SET LOCAL lock_timeout = '30s';
    LOCK TABLE {schema}.{events} IN EXCLUSIVE MODE;
    IF jsonb_array_length(quota) > 0 THEN
        INSERT INTO {schema}.jl_quota AS q (org, active, lim)
        SELECT * FROM jsonb_to_recordset(quota) AS x(org text, active integer, lim integer)
        ON CONFLICT (org) DO UPDATE SET
            active = q.active + EXCLUDED.active,
            lim = CASE WHEN EXCLUDED.active > 0 THEN EXCLUDED.lim
                       ELSE GREATEST(q.lim, q.active + EXCLUDED.active) END;
    END IF;
    INSERT INTO {schema}.jl_jobs AS j (job_id, org, job_type, status, priority, version,
        attempts, due_at, lease_until, cancel_requested, created_at, updated_at, body_hash)
    SELECT (r->>0)::uuid, r->>1, r->>2, r->>3, (r->>4)::smallint, (r->>5)::integer,
        (r->>6)::integer, (r->>7)::timestamptz, (r->>8)::timestamptz, (r->>9)::boolean,
        (r->>10)::timestamptz, (r->>11)::timestamptz, r->>12
    FROM jsonb_array_elements(jobs) AS r
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
        SELECT (e.doc->>'i')::uuid, (e.doc->>'v')::integer, e.doc->>'t',
               convert_to(e.doc->>'s', 'UTF8')
        FROM jsonb_array_elements(events) WITH ORDINALITY AS e(doc, n)
        ORDER BY e.n
        RETURNING notification_id;
END;
$BODY$
"""
# The earlier signature (a dozen arrays), dropped so only one jl_append exists.
DROP_ARRAY_APPEND = """
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc AS p
             JOIN pg_namespace AS n ON n.oid = p.pronamespace
             WHERE p.proname = 'jl_append' AND n.nspname = {schema_literal} AND p.pronargs <> 3
    LOOP
        EXECUTE 'DROP FUNCTION ' || f;
    END LOOP;
END $$
"""
CALL_APPEND = "SELECT * FROM {schema}.jl_append(%s::jsonb, %s::jsonb, %s::jsonb) AS notification_id"

# A job index row as JSON values, in the column order of `jl_jobs`: ids and
# instants as text (ISO 8601), the rest as they are.
IndexRow = tuple[Any, ...]
QuotaDelta = tuple[str, int, int]  # org, change in active jobs, limit to check
AppendParams = tuple[str, str, str]  # events, job index rows, quota changes (JSON)


class LedgerRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
        self.sql_create_statements.append(SQL(CREATE_JOBS).format(schema=schema))
        for statement in CREATE_JOBS_INDEXES:
            self.sql_create_statements.append(SQL(statement).format(schema=schema))
        self.sql_create_statements.append(SQL(CREATE_QUOTA).format(schema=schema))
        self.sql_create_statements.append(
            SQL(DROP_ARRAY_APPEND).format(schema_literal=Literal(self.datastore.schema))
        )
        self.sql_create_statements.append(
            SQL(CREATE_APPEND_FUNCTION).format(
                schema=schema,
                events=Identifier(self.events_table_name),
                channel=Identifier(self.channel_name),
            )
        )
        self.call_append = SQL(CALL_APPEND).format(schema=schema)

    def append_params(
        self,
        stored_events: Sequence[StoredEvent],
        index_rows: Sequence[IndexRow] = (),
        quota: Sequence[QuotaDelta] = (),
    ) -> AppendParams:
        """The three JSON documents of one `jl_append` call."""
        events = [
            {
                "i": str(e.originator_id),
                "v": e.originator_version,
                "t": e.topic,
                "s": e.state.decode(),
            }
            for e in stored_events
        ]
        deltas = [{"org": org, "active": delta, "lim": lim} for org, delta, lim in quota]
        return (_dumps(events), _dumps(index_rows), _dumps(deltas))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_prepared(self, params: AppendParams) -> list[int]:
        """Insert events, job index rows and quota changes in one transaction.

        The events-table lock is taken before the quota is checked, so the
        check sees every earlier commit, and insert order stays commit order
        for readers tailing the notification log.
        """
        with self.datastore.get_connection() as conn:
            # One statement is one transaction: in the pool's default mode psycopg
            # would wrap it in BEGIN and COMMIT, two more round trips.
            conn.autocommit = True
            try:
                rows = conn.execute(self.call_append, params, prepare=True).fetchall()
            finally:
                conn.autocommit = False
        return [row["notification_id"] for row in rows]

    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        index_rows: Sequence[IndexRow] = (),
        quota: Sequence[QuotaDelta] = (),
        **kwargs: Any,
    ) -> Sequence[int] | None:
        """The library's insert, for whatever saves through it: the same one call."""
        ids: list[int] = self.insert_prepared(self.append_params(stored_events, index_rows, quota))
        return ids


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
