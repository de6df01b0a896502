"""The ledger: an eventsourcing Application on PostgreSQL holding every job's events.

The pure domain decides events; this module appends them atomically (many jobs
per transaction when asked), maps the library's errors to ours, and reads
histories back. It is synchronous, like the library: async callers go through
a thread or a batching writer.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID, uuid4

import psycopg
import structlog
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresDatastore
from psycopg import AsyncConnection, Connection
from psycopg.rows import DictRow

from ledger.database import connection_params
from ledger.domain import job as domain
from ledger.domain.errors import (
    ConcurrencyConflict,
    IdempotencyConflict,
    InvalidJob,
    JobNotFound,
    QuotaExceeded,
)
from ledger.domain.events import JobEvent, Queued
from ledger.domain.job import Job, JobSpec
from ledger.domain.job_types import Registry
from ledger.domain.notices import failure_notice
from ledger.domain.status import Status
from ledger.recorder import (
    QUOTA_CONSTRAINT,
    UNLIMITED,
    AppendParams,
    IndexRow,
    LedgerRecorder,
    QuotaDelta,
)
from ledger.submission import job_id_for_key

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
Clock = Callable[[], datetime]
Publisher = Callable[[Sequence[Job]], None]
HandOver = Callable[[list[Job]], None]
PUBLISH_WARNING_EVERY_S = 60.0

log = structlog.get_logger("jobledger.ledger")


def utc_now() -> datetime:
    return datetime.now(UTC)


class JobLedger(Application[UUID]):
    name = "jobledger"


@dataclass(frozen=True, slots=True)
class Change:
    """New events for one job: the state they start from and lead to."""

    before: Job | None
    after: Job
    events: Sequence[JobEvent]
    fingerprint: str | None = None
    enforce_quota: bool = True


def change(before: Job | None, events: Sequence[JobEvent], **kw: Any) -> Change:
    return Change(before, domain.apply_all(before, events), events, **kw)


@dataclass(frozen=True, slots=True)
class PreparedAppend:
    """An append decided and encoded: the changes (failure notices included) and the call's
    parameters."""

    changes: Sequence[Change]
    params: AppendParams
    quota: Sequence[QuotaDelta]


@dataclass(frozen=True, slots=True)
class PreparedSubmissions:
    """Submissions decided but not yet appended: `found` holds jobs already bound to a key."""

    found: Sequence[Job | None]
    changes: Sequence[Change]

    def results(self, created: Sequence[Job]) -> list[tuple[Job, bool]]:
        """Pair each submission with its job, and whether it was created now."""
        new = iter(created)
        return [(job, False) if job is not None else (next(new), True) for job in self.found]


class AsyncPublisher(Protocol):
    """The direct publish for appends committed on an event loop; closed by its writer."""

    async def __call__(self, jobs: Sequence[Job]) -> None: ...

    async def aclose(self) -> None: ...


def queued_by(changes: Sequence[Change]) -> list[Job]:
    """The jobs these changes made runnable, for a direct publish.

    Only changes that end with their `queued` event count, so the job's
    version is that event's, the one the dispatcher's check names; any other
    shape is left to the dispatcher.
    """
    return [
        c.after
        for c in changes
        if c.after.status is Status.QUEUED and c.events and isinstance(c.events[-1], Queued)
    ]


class Ledger:
    def __init__(
        self,
        database_url: str,
        *,
        registry: Registry,
        active_limit: int = 50,
        retry_delays_s: tuple[float, ...] | None = None,
        create_tables: bool = False,
        pool_size: int = 2,
        max_overflow: int = 8,
        clock: Clock = utc_now,
        publisher: Publisher | None = None,
    ) -> None:
        params = connection_params(database_url)
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "APPLICATION_RECORDER_TOPIC": "ledger.recorder:LedgerRecorder",
            "POSTGRES_DBNAME": params["dbname"],
            "POSTGRES_HOST": params["host"],
            "POSTGRES_PORT": params["port"],
            "POSTGRES_USER": params["user"],
            "POSTGRES_PASSWORD": params["password"],
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": str(max_overflow),
            "POSTGRES_CONNECT_TIMEOUT": "10",
            "POSTGRES_LOCK_TIMEOUT": "30",
            "CREATE_TABLE": "y" if create_tables else "n",
        }
        self.app = JobLedger(env=env)
        recorder = self.app.recorder
        assert isinstance(recorder, LedgerRecorder)
        self.recorder = recorder
        self.datastore: PostgresDatastore = recorder.datastore
        self.registry = registry
        self.active_limit = active_limit
        self.retry_delays_s = retry_delays_s
        self.clock = clock
        self.events_table = recorder.events_table_name
        self.database_url = database_url
        # Called after each commit with the jobs it made runnable, so their
        # messages need not wait for the dispatcher (which publishes whatever
        # this misses). The composition root installs one; None: no direct path.
        self.publisher = publisher
        # The same for appends committed on an event loop (`BatchWriter`): an
        # async publisher, so the loop is not blocked by a Redis round trip.
        self.async_publisher: AsyncPublisher | None = None
        self._publish_failures = 0
        self._publish_warned_at = -PUBLISH_WARNING_EVERY_S

    def close(self) -> None:
        close = getattr(self.publisher, "close", None)
        if close is not None:
            close()
        self.app.close()

    @contextmanager
    def connection(self) -> Iterator[Connection[DictRow]]:
        """A pooled connection to the ledger's database, for the ledger's own tables."""
        with self.datastore.get_connection() as conn:
            yield conn

    def discard_broken_connections(self) -> None:
        """Once the database is back after an outage: drop every pooled connection it closed.

        The pool learns that a connection is dead only by using it, so each
        stale one would otherwise fail one caller in turn.
        """
        self.datastore.pool.check()

    # ------------------------------------------------------------ writing

    def append(self, changes: Sequence[Change]) -> list[Job]:
        """Append every change in one transaction: all land or none does."""
        if not changes:
            return []
        prepared = self.prepare_append(changes)
        try:
            self.recorder.insert_prepared(prepared.params)
        except IntegrityError as e:
            raise self._refusal(str(e), prepared) from None
        return self._committed(prepared)

    async def append_async(
        self,
        changes: Sequence[Change],
        conn: AsyncConnection[Any],
        *,
        hand_over: HandOver | None = None,
    ) -> list[Job]:
        """`append` on an async connection that the caller owns: no thread, no pool.

        With `hand_over`, the jobs this commit queued go to it (to publish
        without blocking the event loop) instead of the ledger's publisher.
        """
        if not changes:
            return []
        prepared = self.prepare_append(changes)
        try:
            await conn.execute(self.recorder.call_append, prepared.params, prepare=True)
        except psycopg.IntegrityError as e:
            raise self._refusal(str(e), prepared) from None
        return self._committed(prepared, hand_over)

    def prepare_append(self, changes: Sequence[Change]) -> PreparedAppend:
        """Everything an append decides and encodes before its one round trip."""
        ids = [c.after.id for c in changes]
        if len(set(ids)) != len(ids):
            # Two changes to one job in one transaction were decided from the
            # same state; at most one of them can be right.
            raise ConcurrencyConflict([i for i in ids if ids.count(i) > 1])
        changes = [*changes, *self._failure_notices(changes)]
        events: list[JobEvent] = []
        rows: list[IndexRow] = []
        deltas: dict[str, int] = defaultdict(int)
        checked: set[str] = set()
        for c in changes:
            events.extend(c.events)
            rows.append(self._index_row(c))
            was_active = c.before is not None and c.before.status.is_active
            delta = int(c.after.status.is_active) - int(was_active)
            deltas[c.after.org] += delta
            if delta > 0 and c.enforce_quota:
                checked.add(c.after.org)
        quota: list[QuotaDelta] = [
            (org, delta, self.active_limit if org in checked else UNLIMITED)
            for org, delta in sorted(deltas.items())
            if delta
        ]
        stored = [self.app.mapper.to_stored_event(e) for e in events]
        params = self.recorder.append_params(stored, rows, quota)
        return PreparedAppend(changes, params, quota)

    def _refusal(self, message: str, prepared: PreparedAppend) -> Exception:
        """What an integrity error of an append means: a quota, or a job that moved on."""
        if QUOTA_CONSTRAINT in message:
            return QuotaExceeded(_org_over_quota(message, prepared.quota), self.active_limit)
        return ConcurrencyConflict([c.after.id for c in prepared.changes])

    def _committed(self, prepared: PreparedAppend, hand_over: HandOver | None = None) -> list[Job]:
        """The jobs as appended, after handing the ones this commit queued to a publisher."""
        jobs = [c.after for c in prepared.changes]
        if hand_over is None and self.publisher is None:
            return jobs  # nothing to publish to: skip looking for queued jobs
        ready = queued_by(prepared.changes)
        if ready:
            if hand_over is not None:
                hand_over(ready)
            elif self.publisher is not None:
                try:
                    self.publisher(ready)
                except Exception as e:
                    self.publish_failed(e)
        return jobs

    def publish_failed(self, error: BaseException) -> None:
        """A direct publish failed: the commit stands and the dispatcher publishes instead.

        One warning a minute at most, with the count of failures since the last.
        """
        self._publish_failures += 1
        now = time.monotonic()
        if now - self._publish_warned_at >= PUBLISH_WARNING_EVERY_S:
            log.warning(
                "direct publish failed; the dispatcher will publish",
                error=f"{type(error).__name__}: {error}",
                failures=self._publish_failures,
            )
            self._publish_warned_at = now
            self._publish_failures = 0

    def _index_row(self, c: Change) -> IndexRow:
        job = c.after
        due = job.next_attempt_at if job.status in (Status.SCHEDULED, Status.RETRYING) else None
        lease = job.lease_until if job.status is Status.RUNNING else None
        return (
            str(job.id), job.org, job.type, job.status.value, PRIORITY_RANK[job.priority],
            job.version, job.attempts, due and due.isoformat(), lease and lease.isoformat(),
            job.cancel_requested, job.created_at.isoformat(), job.updated_at.isoformat(),
            c.fingerprint,
        )  # fmt: skip

    def _failure_notices(self, changes: Sequence[Change]) -> list[Change]:
        if "notify.send" not in self.registry:
            return []
        notices = []
        for c in changes:
            if c.before is not None and c.before.status is Status.FAILED:
                continue
            notice = failure_notice(c.after)
            if notice is None:
                continue
            notice_id, payload = notice
            spec = self.spec_for("notify.send", c.after.org, payload)
            events = domain.submit(notice_id, spec, c.after.updated_at)
            notices.append(change(None, events, enforce_quota=False))
        return notices

    def spec_for(self, job_type: str, org: str, payload: dict[str, Any]) -> JobSpec:
        """A spec with the type's defaults, for jobs the system submits itself."""
        kind = self.registry.get(job_type)
        return JobSpec(
            org=org,
            job_type=kind.name,
            payload=kind.validate_payload(payload),
            max_attempts=kind.policy(self.retry_delays_s).max_attempts,
            timeout_s=kind.timeout_s,
        )

    def submit(
        self, spec: JobSpec, *, fingerprint: str | None = None, job_id: UUID | None = None
    ) -> tuple[Job, bool]:
        """Append a new job; with an idempotency key, the existing job if there is one.

        Returns the job and whether it was created now.
        """
        [(job, created)] = self.submit_many([(spec, fingerprint)], job_ids=[job_id])
        return job, created

    def submit_many(
        self,
        items: Sequence[tuple[JobSpec, str | None]],
        *,
        job_ids: Sequence[UUID | None] | None = None,
    ) -> list[tuple[Job, bool]]:
        """Submit all of them atomically; jobs whose key is already bound are returned."""
        for attempt in range(5):
            prepared = self.prepare_submissions(items, job_ids)
            try:
                created = self.append(prepared.changes)
            except ConcurrencyConflict:
                if attempt == 4:
                    raise
                continue  # a racing submission bound a key first: answer with its job
            return prepared.results(created)
        raise AssertionError("unreachable")  # pragma: no cover

    def prepare_submissions(
        self,
        items: Sequence[tuple[JobSpec, str | None]],
        job_ids: Sequence[UUID | None] | None = None,
    ) -> PreparedSubmissions:
        """The changes that submit these jobs, and the jobs their keys already name."""
        now = self.clock()
        ids = list(job_ids or [None] * len(items))
        found: list[Job | None] = []
        changes: list[Change] = []
        seen: set[UUID] = set()
        for index, ((spec, fingerprint), given_id) in enumerate(zip(items, ids, strict=True)):
            job_id = given_id or (
                job_id_for_key(spec.org, spec.idempotency_key) if spec.idempotency_key else uuid4()
            )
            if job_id in seen:  # else the batch would conflict with itself on every retry
                raise InvalidJob(
                    f"job {index} of the batch repeats the idempotency key or id of an earlier one",
                    [{"loc": ["jobs", index], "msg": "repeated key", "type": "duplicate"}],
                )
            seen.add(job_id)
            existing = self._existing(job_id, spec, fingerprint)
            found.append(existing)
            if existing is None:
                events = domain.submit(job_id, spec, now)
                changes.append(change(None, events, fingerprint=fingerprint))
        return PreparedSubmissions(found, changes)

    def _existing(self, job_id: UUID, spec: JobSpec, fingerprint: str | None) -> Job | None:
        if spec.idempotency_key is None:
            return None
        with self.connection() as conn:
            row = conn.execute(
                "SELECT body_hash FROM jl_jobs WHERE job_id = %s", (job_id,)
            ).fetchone()
        if row is None:
            return None
        if row["body_hash"] != fingerprint or fingerprint is None:
            raise IdempotencyConflict(spec.idempotency_key)
        return self.load(job_id)

    def execute(
        self, job_id: UUID, decide: Callable[[Job], Sequence[JobEvent]], *, retries: int = 5
    ) -> Job:
        """Load, decide, append; on a concurrent change, decide again on fresh state."""
        for attempt in range(retries):
            job = self.load(job_id)
            events = decide(job)
            if not events:
                return job
            try:
                [after, *_] = self.append([change(job, events)])
            except ConcurrencyConflict:
                if attempt == retries - 1:
                    raise
                continue
            return after
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------ reading

    def history(self, job_id: UUID) -> list[JobEvent]:
        events = [e for e in self.app.events.get(job_id) if isinstance(e, JobEvent)]
        if not events:
            raise JobNotFound(job_id)
        return events

    def load(self, job_id: UUID) -> Job:
        job = domain.fold(self.history(job_id))
        assert job is not None
        return job

    def load_many(self, job_ids: Sequence[UUID]) -> dict[UUID, Job]:
        """Many jobs in one query; ids without events are left out."""
        if not job_ids:
            return {}
        with self.connection() as conn:
            rows = conn.execute(
                f"SELECT originator_id, originator_version, topic, state "  # noqa: S608
                f"FROM {self.events_table} WHERE originator_id = ANY(%s) "
                "ORDER BY originator_id, originator_version",
                (list(job_ids),),
            ).fetchall()
        return self.fold_rows(rows)

    def fold_rows(self, rows: Iterable[Mapping[str, Any]]) -> dict[UUID, Job]:
        """Jobs from rows of the events table, given in (job, version) order."""
        jobs: dict[UUID, Job] = {}
        for row in rows:
            event = self.app.mapper.to_domain_event(
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
            )
            assert isinstance(event, JobEvent)
            jobs[event.originator_id] = domain.evolve(jobs.get(event.originator_id), event)
        return jobs

    def state_at(self, job_id: UUID, at: datetime) -> Job:
        """The job as it was at `at`: the fold of its events recorded up to then."""
        job = domain.fold_until(self.history(job_id), at)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def read_log(self, after: int, limit: int = 1000) -> list[tuple[int, JobEvent]]:
        """Events in commit order after position `after` (positions may have gaps)."""
        notifications = self.recorder.select_notifications(
            start=after, limit=limit, inclusive_of_start=False
        )
        out = []
        for n in notifications:
            event = self.app.mapper.to_domain_event(n)
            assert isinstance(event, JobEvent)
            out.append((n.id, event))
        return out

    def max_position(self) -> int:
        return self.recorder.max_notification_id() or 0


FAILING_ROW = re.compile(r"Failing row contains \(([^,]+),")


def _org_over_quota(message: str, quota: Sequence[QuotaDelta]) -> str:
    """The organisation whose row broke the quota check (PostgreSQL names it)."""
    found = FAILING_ROW.search(message)
    if found:
        return found.group(1)
    return next((o for o, d, lim in quota if d > 0 and lim != UNLIMITED), "?")
