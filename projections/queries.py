"""The read API over the job-status views, for the HTTP layer: one query per call.

`org=None` means an admin caller (every organisation); otherwise every query
is scoped to that org, and another org's job reads as missing.
"""

from __future__ import annotations

import base64
import binascii
import builtins
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ledger import Status
from projections.errors import InvalidCursor
from projections.job_status import (
    COUNTERS,
    DURATION_BUCKETS_S,
    DURATION_COUNT,
    DURATION_SUM_US,
    bucket_metric,
    document,
)

EVENTS_TABLE = "jobledger_events"
STATUSES = tuple(s.value for s in Status)
_NO_CURSOR = 2**63 - 1

GET_JOB = "SELECT state FROM jl_view_jobs WHERE job_id = %(id)s"
GET_ORG_JOB = "SELECT state FROM jl_view_jobs WHERE job_id = %(id)s AND org = %(org)s"

# One named statement per filter combination, so each one has a plan on its index.
_LIST = "SELECT state, seq FROM jl_view_jobs WHERE seq < %(before)s{} ORDER BY seq DESC LIMIT %(n)s"
_FILTERS = {"org": " AND org = %(org)s", "status": " AND status = %(status)s",
            "type": " AND job_type = %(type)s"}  # fmt: skip
LIST_JOBS = {
    (org, status, type_): _LIST.format(
        (_FILTERS["org"] if org else "")
        + (_FILTERS["status"] if status else "")
        + (_FILTERS["type"] if type_ else "")
    )
    for org in (False, True)
    for status in (False, True)
    for type_ in (False, True)
}
STATS = "SELECT status, job_type, sum(n)::bigint FROM jl_view_counts GROUP BY status, job_type"
ORG_STATS = "SELECT status, job_type, n FROM jl_view_counts WHERE org = %(org)s"
DEAD_LETTERS = """
SELECT state FROM jl_view_jobs WHERE status = 'failed'
ORDER BY updated_at DESC, seq DESC LIMIT %(n)s
"""
ORG_DEAD_LETTERS = """
SELECT state FROM jl_view_jobs WHERE status = 'failed' AND org = %(org)s
ORDER BY updated_at DESC, seq DESC LIMIT %(n)s
"""
# The age of the oldest unprojected event comes from its recorded timestamp.
LAG = f"""
SELECT t.position,
    coalesce((SELECT max(notification_id) FROM {EVENTS_TABLE}), 0),
    coalesce((SELECT extract(epoch FROM clock_timestamp() - (
            convert_from(e.state, 'UTF8')::json -> 'timestamp' ->> '_data_')::timestamptz)
        FROM {EVENTS_TABLE} e WHERE e.notification_id > t.position
        ORDER BY e.notification_id LIMIT 1), 0)::float8
FROM jl_view_tracking t WHERE t.name = 'job_status'
"""  # noqa: S608  (a constant table name)
METRICS = """
SELECT job_type, metric, n FROM jl_view_metrics
UNION ALL
SELECT job_type, 'queued', sum(n)::bigint FROM jl_view_counts WHERE status = 'queued'
GROUP BY job_type
"""


@dataclass(frozen=True, slots=True)
class Lag:
    """How far the views are behind the ledger."""

    events: int  # ledger head position minus the projected position (an upper bound: gaps)
    seconds: float  # age of the oldest event not yet projected; 0 when caught up


@dataclass(frozen=True, slots=True)
class Histogram:
    buckets: tuple[tuple[float, int], ...]  # (upper bound in s, cumulative count); last is +inf
    sum_s: float
    count: int

    def prometheus_buckets(self) -> list[tuple[str, float]]:
        """The buckets as prometheus-client's HistogramMetricFamily takes them."""
        return [("+Inf" if le == float("inf") else repr(le), n) for le, n in self.buckets]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Totals since the ledger began, by job type."""

    submitted: dict[str, int]
    started: dict[str, int]  # attempts started
    succeeded: dict[str, int]
    failed: dict[str, int]  # jobs that reached `failed`
    attempts_failed: dict[str, int]
    queue_depth: dict[str, int]  # jobs `queued` now
    durations: dict[str, Histogram]  # attempt durations (succeeded and failed attempts)


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(cursor) from None
    if len(cursor) > 40 or not raw.startswith("s") or not raw[1:].isdigit():
        raise InvalidCursor(cursor)
    seq = int(raw[1:])
    if seq >= _NO_CURSOR:
        raise InvalidCursor(cursor)
    return seq


class JobQueries:
    """`qs = await JobQueries.open(url)`; every method is one round trip."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, database_url: str, *, min_size: int = 1, max_size: int = 10) -> JobQueries:
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            database_url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            open=False,
            name="jobledger-queries",
        )
        await pool.open(wait=True, timeout=10)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> JobQueries:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _all(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def get(self, job_id: UUID, org: str | None) -> dict[str, Any] | None:
        """The job object, or None if missing or another org's."""
        query = GET_JOB if org is None else GET_ORG_JOB
        rows = await self._all(query, {"id": job_id, "org": org})
        return document(rows[0][0]) if rows else None

    async def list(
        self,
        org: str | None,
        *,
        status: str | None = None,
        type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        """Newest first; the next page's cursor, or None on the last page."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        before = decode_cursor(cursor) if cursor is not None else _NO_CURSOR
        query = LIST_JOBS[(org is not None, status is not None, type is not None)]
        params = {"org": org, "status": status, "type": type, "before": before, "n": limit + 1}
        rows = await self._all(query, params)
        items = [document(doc) for doc, _ in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1][1]) if len(rows) > limit else None
        return items, next_cursor

    async def stats(self, org: str | None) -> dict[str, dict[str, int]]:
        """{"by_status": every status -> n, "by_type": type -> n} of the org's jobs."""
        query = STATS if org is None else ORG_STATS
        by_status = dict.fromkeys(STATUSES, 0)
        by_type: dict[str, int] = {}
        for status, job_type, n in await self._all(query, {"org": org}):
            by_status[status] = by_status.get(status, 0) + int(n)
            by_type[job_type] = by_type.get(job_type, 0) + int(n)
        return {"by_status": by_status, "by_type": dict(sorted(by_type.items()))}

    async def dead_letters(self, org: str | None, limit: int = 50) -> builtins.list[dict[str, Any]]:
        """Failed jobs, the latest failure first."""
        query = DEAD_LETTERS if org is None else ORG_DEAD_LETTERS
        return [document(doc) for (doc,) in await self._all(query, {"org": org, "n": limit})]

    async def lag(self) -> Lag:
        rows = await self._all(LAG, {})
        if not rows:
            return Lag(events=0, seconds=0.0)
        position, head, seconds = rows[0]
        return Lag(events=max(0, int(head) - int(position)), seconds=max(0.0, float(seconds)))

    async def metrics(self) -> MetricsSnapshot:
        values: dict[str, dict[str, int]] = {}
        for job_type, metric, n in await self._all(METRICS, {}):
            values.setdefault(metric, {})[job_type] = int(n)
        counters = {name: values.get(name, {}) for name in (*COUNTERS, "queued")}
        durations = {
            job_type: _histogram(values, job_type) for job_type in values.get(DURATION_COUNT, {})
        }
        return MetricsSnapshot(
            submitted=counters["submitted"],
            started=counters["started"],
            succeeded=counters["succeeded"],
            failed=counters["failed"],
            attempts_failed=counters["attempts_failed"],
            queue_depth=counters["queued"],
            durations=durations,
        )


def _histogram(values: dict[str, dict[str, int]], job_type: str) -> Histogram:
    total = 0
    buckets = []
    for index, bound in enumerate((*DURATION_BUCKETS_S, float("inf"))):
        total += values.get(bucket_metric(index), {}).get(job_type, 0)
        buckets.append((bound, total))
    return Histogram(
        buckets=tuple(buckets),
        sum_s=values.get(DURATION_SUM_US, {}).get(job_type, 0) / 1_000_000,
        count=values[DURATION_COUNT][job_type],
    )
