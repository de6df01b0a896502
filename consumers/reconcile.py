"""Reconcile: rebuild what Redis lost from the ledger.

Redis keeps nothing on disk here: after a FLUSHALL or a restart the consumer
groups and every message are gone. Reconcile recreates the groups and
publishes every job that the ledger's job index says is `queued` again
(duplicates are harmless: the ledger's version check lets one start win).
Running jobs need nothing: their leases are in PostgreSQL and the reaper
retries them if their worker is lost too.

The watcher notices a loss in two ways: a connection error followed by a
successful PING, or its marker key missing (a FLUSHALL keeps the connection).
Every `interval_s` it also compares the streams' length with the number of
queued jobs and, if the streams hold fewer, publishes the jobs queued for
longer than that: a safety net for whatever the two signals miss.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import structlog

from consumers.dispatcher import SELECT_POSITION, fetch, publish_queued
from consumers.outages import REDIS_DOWN
from consumers.streams import Streams
from ledger import Ledger, utc_now

log = structlog.get_logger("jobledger.reconcile")

SELECT_QUEUED = """
SELECT job_id, priority, created_at FROM jl_jobs
WHERE status = 'queued' AND updated_at <= %s
  AND (priority, created_at, job_id) > (%s, %s, %s)
ORDER BY priority, created_at, job_id LIMIT %s
"""
COUNT_QUEUED = "SELECT count(*) AS n FROM jl_jobs WHERE status = 'queued'"
FIRST_KEY: tuple[Any, ...] = (-1, datetime(1970, 1, 1, tzinfo=UTC), uuid.UUID(int=0))


async def reconcile(
    ledger: Ledger,
    streams: Streams,
    stream_names: Sequence[str],
    *,
    queued_for_s: float = 0.0,
    page_size: int = 1000,
) -> int:
    """Recreate the groups, publish every job queued for at least `queued_for_s`; the count."""
    await streams.ensure_groups(stream_names)
    cutoff = utc_now() - timedelta(seconds=queued_for_s)
    key = FIRST_KEY
    published = 0
    while True:
        rows = await fetch(ledger, SELECT_QUEUED, (cutoff, *key, page_size))
        if not rows:
            return published
        published += await publish_queued(ledger, streams, [row["job_id"] for row in rows])
        last = rows[-1]
        key = (last["priority"], last["created_at"], last["job_id"])
        if len(rows) < page_size:
            return published


class RedisWatch:
    """Reconciles when Redis comes back or loses its data, and every `interval_s`."""

    def __init__(
        self,
        ledger: Ledger,
        streams: Streams,
        stream_names: Sequence[str],
        *,
        interval_s: float = 30.0,
        check_s: float = 0.5,
        dispatcher_name: str = "dispatcher",
    ) -> None:
        self.ledger = ledger
        self.streams = streams
        self.stream_names = list(stream_names)
        self.interval_s = interval_s
        self.check_s = check_s
        self.dispatcher_name = dispatcher_name  # whose stored position tells a first start
        self.marker = streams.keys.key("dispatcher:alive")
        self.reconciled = 0

    async def run(self) -> None:
        cause = await self._lost()  # the marker survives leaders, not a loss of Redis
        if cause is not None and await self._published_before():
            await self._reconcile(cause, 0.0)
        elif cause is not None:  # a first start: the log holds everything, nothing was lost
            await self._set_marker()
        last_full = anyio.current_time()
        while True:
            await anyio.sleep(self.check_s)
            cause = await self._lost()
            if cause is not None:
                await self._reconcile(cause, 0.0)
                last_full = anyio.current_time()
            elif anyio.current_time() - last_full >= self.interval_s:
                if await self._streams_short():
                    await self._reconcile("periodic", self.interval_s)
                last_full = anyio.current_time()

    async def _streams_short(self) -> bool:
        """Fewer messages in the streams than queued jobs: something was lost.

        A cheap test, so the safety net does not flood a long backlog with
        duplicates every interval. Messages of running attempts and duplicates
        count too, so it can miss a loss; the marker and reconnects catch those.
        """
        rows = await fetch(self.ledger, COUNT_QUEUED)
        queued = int(rows[0]["n"])
        if not queued:
            return False
        try:
            async with self.streams.client.pipeline(transaction=False) as pipe:
                for name in self.stream_names:
                    pipe.xlen(name)
                lengths = await pipe.execute()
        except REDIS_DOWN:
            return True
        return sum(int(n) for n in lengths) < queued

    async def _lost(self) -> str | None:
        """Why Redis needs reconciling now, or None."""
        try:
            present = await self.streams.client.exists(self.marker)
        except REDIS_DOWN:
            await self._wait_until_back()
            return "redis reconnected"
        return None if present else "redis marker missing (first start, or redis lost its data)"

    async def _published_before(self) -> bool:
        rows = await fetch(self.ledger, SELECT_POSITION, (self.dispatcher_name,))
        return bool(rows) and int(rows[0]["position"]) > 0

    async def _set_marker(self) -> None:
        while True:
            try:
                await self.streams.client.set(self.marker, "1")
            except REDIS_DOWN:
                await self._wait_until_back()
                continue
            return

    async def _wait_until_back(self) -> None:
        log.warning("redis unreachable; waiting for it")
        delay = 0.1
        while True:
            await anyio.sleep(delay)
            try:
                await self.streams.client.ping()
            except REDIS_DOWN:
                delay = min(delay * 2, 2.0)
                continue
            return

    async def _reconcile(self, cause: str, queued_for_s: float) -> None:
        while True:
            try:
                await self.streams.client.set(self.marker, "1")
                count = await reconcile(
                    self.ledger, self.streams, self.stream_names, queued_for_s=queued_for_s
                )
            except REDIS_DOWN:
                await self._wait_until_back()
                continue
            break
        self.reconciled += count
        if count or cause != "periodic":
            log.info("reconciled", cause=cause, republished=count)
