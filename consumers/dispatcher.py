"""The dispatcher: follows the ledger and publishes what the direct path did not.

Whoever appends a `queued` event publishes the job itself right after the
commit (the ledger's publish hook, `consumers.publisher.DirectPublisher`).
The dispatcher is the safety net behind it: it reads the ledger's
notification log (commit order) in pages, and for each `queued` event
consumes the marker the direct publish left (see `consumers.publisher`); only
jobs without one are loaded, folded and published, through the same
publish-once script, so a job the direct path published gets no second
message and one it missed (its process died after the commit, Redis was down
then) still gets one.

Its position is stored only after publishing, so a crash between an append
and its publish loses nothing: the restarted dispatcher reads the page again
and publishes what has no marker (the direct path's consumed markers are gone
by then, so its jobs are published again: a duplicate is harmless, the
worker's append of the attempt start fails on the job's version).

PostgreSQL's LISTEN/NOTIFY on the events table's channel wakes it; it then
lingers `linger_s` so one read covers many commits (it is off the latency
path now). A slow fallback poll covers a lost listening connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import anyio
import psycopg
import structlog
from eventsourcing.utils import get_topic
from psycopg import sql
from psycopg.rows import DictRow, dict_row

from consumers.outages import REDIS_DOWN
from consumers.publisher import OncePublisher, Queued
from consumers.streams import Streams
from ledger import EVENT_TYPES, Job, Ledger, Status

log = structlog.get_logger("jobledger.dispatcher")

QUEUED_TOPIC = get_topic(EVENT_TYPES["queued"])

CREATE_POSITION = """
CREATE TABLE IF NOT EXISTS jl_dispatch_position (
    name text PRIMARY KEY,
    position bigint NOT NULL
)
"""
SELECT_POSITION = "SELECT position FROM jl_dispatch_position WHERE name = %s"
# One round trip per page: store the position reached by the previous page (all of
# it is published by now), read the next page's size and its `queued` events'
# (job, version). Histories are read only for jobs the direct path missed.
STEP = """
WITH stored AS (
    INSERT INTO jl_dispatch_position (name, position) VALUES (%(name)s, %(after)s)
    ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position
), page AS (
    SELECT notification_id, originator_id, originator_version, topic FROM {table}
    WHERE notification_id > %(after)s ORDER BY notification_id LIMIT %(limit)s
), summary AS (
    SELECT max(notification_id) AS last, count(*) AS size FROM page
)
SELECT s.last, s.size, p.originator_id, p.originator_version
FROM summary AS s
LEFT JOIN page AS p ON p.topic = %(queued)s
ORDER BY p.notification_id
"""
HISTORIES = """
SELECT originator_id, originator_version, topic, state FROM {table}
WHERE originator_id = ANY(%(ids)s) ORDER BY originator_id, originator_version
"""


class Wakeup:
    """A flag that any number of notifications set and one waiter clears."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait until set or `timeout_s` passed; True if set. Clears the flag."""
        woken = False
        with anyio.move_on_after(max(timeout_s, 0.0)):
            await self._event.wait()
            woken = True
        woken = woken or self._event.is_set()
        if woken:
            self._event = anyio.Event()
        return woken


class LedgerListener:
    """LISTEN on the events table's channel; every NOTIFY (one per commit) wakes all subscribers."""

    def __init__(self, database_url: str, channel: str) -> None:
        self.database_url = database_url
        self.channel = channel
        self._subscribers: list[Wakeup] = []

    def subscribe(self) -> Wakeup:
        wakeup = Wakeup()
        self._subscribers.append(wakeup)
        return wakeup

    def wake_all(self) -> None:
        for wakeup in self._subscribers:
            wakeup.set()

    async def run(self) -> None:
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.channel))
        lost = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
                async with conn:
                    await conn.execute(listen)
                    if lost:
                        log.info("listening again", channel=self.channel)
                    lost = False
                    self.wake_all()  # whatever was committed while nobody listened
                    async for _ in conn.notifies():
                        self.wake_all()
            except psycopg.OperationalError as e:
                if not lost:
                    log.warning("lost the listening connection", error=str(e).strip())
                lost = True
                self.wake_all()
                await anyio.sleep(1.0)


async def fetch(
    ledger: Ledger, statement: str, params: Sequence[Any] | dict[str, Any] = ()
) -> list[DictRow]:
    """Rows of one query on the ledger's database, run in a worker thread."""

    def run() -> list[DictRow]:
        with ledger.connection() as conn:
            cursor = conn.execute(statement.encode(), params)
            return cursor.fetchall() if cursor.description else []

    return await anyio.to_thread.run_sync(run)


async def publish_queued(ledger: Ledger, streams: Streams, job_ids: Sequence[UUID]) -> int:
    """Publish the current snapshot of each of these jobs that is still queued."""
    if not job_ids:
        return 0
    jobs = await anyio.to_thread.run_sync(ledger.load_many, list(dict.fromkeys(job_ids)))
    ready = runnable(jobs.values())
    await streams.publish(ready)
    return len(ready)


def runnable(jobs: Iterable[Job]) -> list[Job]:
    """The jobs that are queued, oldest first: what deserves a message."""
    ready = [job for job in jobs if job.status is Status.QUEUED]
    return sorted(ready, key=lambda job: (job.updated_at, str(job.id)))


class Dispatcher:
    """Follows the ledger from its stored position; `run()` until cancelled."""

    def __init__(
        self,
        ledger: Ledger,
        streams: Streams,
        wakeup: Wakeup,
        *,
        database_url: str,
        name: str = "dispatcher",
        page_size: int = 1000,
        fallback_poll_s: float = 1.0,
        linger_s: float = 0.05,
    ) -> None:
        self.ledger = ledger
        self.streams = streams
        self.once = OncePublisher(streams.client, streams.keys)
        self.linger_s = linger_s
        self.wakeup = wakeup
        self.database_url = database_url
        self.name = name
        self.page_size = page_size
        self.fallback_poll_s = fallback_poll_s
        self.position = 0
        self.published = 0  # messages this dispatcher published (the direct path's not counted)
        self._step = STEP.format(table=ledger.events_table).encode()
        self._histories = HISTORIES.format(table=ledger.events_table).encode()
        self._conn: psycopg.AsyncConnection[DictRow] | None = None

    async def load_position(self) -> int:
        rows = await fetch(self.ledger, SELECT_POSITION, (self.name,))
        self.position = int(rows[0]["position"]) if rows else 0
        return self.position

    async def run(self) -> None:
        await self.load_position()
        delay = 0.0
        try:
            while True:
                try:
                    more = await self.step()
                except REDIS_DOWN as e:
                    # The position did not move: the page is published again once Redis is back.
                    if not delay:
                        log.warning("cannot publish, redis unreachable", error=str(e))
                    delay = min(max(delay * 2, 0.05), 2.0)
                    await anyio.sleep(delay)
                    continue
                delay = 0.0
                if not more and await self.wakeup.wait(self.fallback_poll_s) and self.linger_s:
                    await anyio.sleep(self.linger_s)  # let more commits gather: one read for all
        finally:
            await self.close()

    async def step(self) -> bool:
        """Publish one page of the log; True if the page was full (more may follow)."""
        if self._conn is None or self._conn.closed:
            # The position is a hint that saves re-publishing: losing its last
            # updates in a crash of PostgreSQL only means duplicates, so its
            # commits need not wait for the WAL flush (one per page otherwise).
            self._conn = await psycopg.AsyncConnection.connect(
                self.database_url,
                autocommit=True,
                row_factory=dict_row,
                options="-c synchronous_commit=off",
            )
        params = {
            "name": self.name,
            "after": self.position,
            "limit": self.page_size,
            "queued": QUEUED_TOPIC,
        }
        rows = await (await self._conn.execute(self._step, params)).fetchall()
        if not rows or rows[0]["last"] is None:
            return False
        pairs = [(r["originator_id"], r["originator_version"]) for r in rows if r["originator_id"]]
        if pairs:
            self.published += await self._publish_missed(pairs)
        self.position = int(rows[0]["last"])  # stored with the next page's read
        return int(rows[0]["size"]) == self.page_size

    async def _publish_missed(self, pairs: Sequence[tuple[UUID, int]]) -> int:
        """Consume the page's markers, then publish the runnable jobs that had none.

        Publish-once makes every order of the two publishers safe; this order
        (markers first, histories only for the jobs without one) keeps the
        dispatcher's cost low while the direct path does the work.

        A job is published for its latest `queued` event only: an earlier
        one's job has been started or re-queued since, and a later one on a
        later page is that page's to publish.
        """
        latest: dict[UUID, int] = {}
        for job_id, version in pairs:
            latest[job_id] = max(version, latest.get(job_id, 0))
        consumed = await self.once.consume(pairs)
        done = {
            j for (j, v), found in zip(pairs, consumed, strict=True) if found and v == latest[j]
        }
        missed = [j for j in latest if j not in done]
        if not missed:
            return 0
        assert self._conn is not None
        cursor = await self._conn.execute(self._histories, {"ids": missed})
        rows = await cursor.fetchall()
        last_queued = {
            r["originator_id"]: r["originator_version"] for r in rows if r["topic"] == QUEUED_TOPIC
        }
        jobs = self.ledger.fold_rows(rows)
        ready: list[Queued] = [
            (job, latest[job.id])
            for job in runnable(jobs.values())
            if last_queued.get(job.id) == latest[job.id]
        ]
        published = await self.once.publish(ready)
        # A direct publish that landed after the first look, for a job that has
        # moved on since (a worker started it), left a marker nobody else takes.
        chosen = {job.id for job, _ in ready}
        await self.once.consume([(j, latest[j]) for j in missed if j not in chosen])
        return published

    async def close(self) -> None:
        if self._conn is not None:
            with anyio.CancelScope(shield=True):
                await self._conn.close()
            self._conn = None
