"""Group commit for async callers: many callers' changes share one transaction.

Round trips and commits, not SQL, bound the ledger's write rate, so a worker
with a hundred attempts in flight or an API taking concurrent submissions
should not pay one transaction each. The writer owns one async connection and
commits on the event loop: at once when idle (no added latency), and while a
commit is in flight it gathers everything that arrives into the next one
(throughput under load). No thread: a commit handed to a thread and back
costs two wake-ups, and the thread then fights the busy event loop for the
GIL at every step of the call, which on a loaded 2-core machine doubled the
time a batch of starts took. Each caller still gets its own outcome: a batch
that fails on one caller's conflict or quota is split until the culprit is
alone, so the others' changes land.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from uuid import UUID

import anyio
import psycopg
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ledger.database import DATABASE_DOWN
from ledger.domain.errors import ConcurrencyConflict, QuotaExceeded
from ledger.domain.job import Job, JobSpec
from ledger.store import Change, Ledger

RECONNECT_ATTEMPTS = 10
RECONNECT_WAIT_S = 0.2


@dataclass(eq=False)
class _Request:
    changes: Sequence[Change]
    done: anyio.Event = field(default_factory=anyio.Event)
    jobs: list[Job] = field(default_factory=list)
    error: BaseException | None = None


class BatchWriter:
    """`async with BatchWriter(ledger) as writer: await writer.append(changes)`."""

    def __init__(self, ledger: Ledger, *, max_batch: int = 1000) -> None:
        self.ledger = ledger
        self.max_batch = max_batch
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._send: MemoryObjectSendStream[_Request]
        self._receive: MemoryObjectReceiveStream[_Request]
        self._send, self._receive = anyio.create_memory_object_stream[_Request](10_000)
        self._group: TaskGroup | None = None

    async def __aenter__(self) -> BatchWriter:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self._send.aclose()  # the loop drains what is queued, then ends
        assert self._group is not None
        try:
            return await self._group.__aexit__(exc_type, exc, tb)  # publishes included
        finally:
            await self._disconnect()
            publisher = self.ledger.async_publisher
            if publisher is not None:
                with anyio.CancelScope(shield=True):
                    await publisher.aclose()

    async def append(self, changes: Sequence[Change]) -> list[Job]:
        """Like `Ledger.append`: all of these changes land together, or none does."""
        if not changes:
            return []
        request = _Request(changes)
        await self._send.send(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.jobs

    async def submit_many(
        self,
        items: Sequence[tuple[JobSpec, str | None]],
        *,
        job_ids: Sequence[UUID | None] | None = None,
    ) -> list[tuple[Job, bool]]:
        """Like `Ledger.submit_many`, committed together with other callers' work."""
        keyed = any(spec.idempotency_key for spec, _ in items)
        for attempt in range(5):
            if keyed:  # looking the keys up reads the database: not on the event loop
                prepared = await anyio.to_thread.run_sync(
                    self.ledger.prepare_submissions, items, job_ids
                )
            else:  # fresh ids: preparing reads nothing, a thread hop would only add latency
                prepared = self.ledger.prepare_submissions(items, job_ids)
            try:
                created = await self.append(prepared.changes)
            except ConcurrencyConflict:
                if attempt == 4:
                    raise
                continue  # a racing submission bound a key first: answer with its job
            return prepared.results(created)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self) -> None:
        async with self._receive:
            async for first in self._receive:
                batch, size = [first], len(first.changes)
                while size < self.max_batch:
                    try:
                        request = self._receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    batch.append(request)
                    size += len(request.changes)
                with anyio.CancelScope(shield=True):
                    await self._commit(batch)
                for request in batch:
                    request.done.set()

    async def _commit(self, batch: list[_Request]) -> None:
        """Append the whole batch; on a conflict or quota error, split it and retry."""
        try:
            jobs = await self._append([c for r in batch for c in r.changes])
        except (ConcurrencyConflict, QuotaExceeded) as e:
            if len(batch) == 1:
                batch[0].error = e
                return
            middle = len(batch) // 2
            await self._commit(batch[:middle])
            await self._commit(batch[middle:])
            return
        except Exception as e:
            for request in batch:
                request.error = e
            return
        start = 0
        for request in batch:
            request.jobs = jobs[start : start + len(request.changes)]
            start += len(request.changes)

    async def _append(self, changes: Sequence[Change]) -> list[Job]:
        """One append, reconnecting as the library's recorder does when the connection fails.

        A failed call rolled back, or (if the connection died after the
        commit) landed: then the retry meets the versions it wrote and reports
        a conflict, which callers already handle by reading the job back.
        """
        for attempt in range(RECONNECT_ATTEMPTS):
            try:
                conn = await self._connect()
                hand_over = self._hand_over if self.ledger.async_publisher is not None else None
                return await self.ledger.append_async(changes, conn, hand_over=hand_over)
            except DATABASE_DOWN:
                await self._disconnect()
                if attempt == RECONNECT_ATTEMPTS - 1:
                    raise
                await anyio.sleep(RECONNECT_WAIT_S)
        raise AssertionError("unreachable")  # pragma: no cover

    def _hand_over(self, jobs: list[Job]) -> None:
        """Publish what a commit queued beside the callers, who need not wait for Redis."""
        assert self._group is not None
        self._group.start_soon(self._publish, jobs)

    async def _publish(self, jobs: list[Job]) -> None:
        publisher = self.ledger.async_publisher
        assert publisher is not None
        try:
            await publisher(jobs)
        except Exception as e:
            self.ledger.publish_failed(e)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.ledger.database_url, autocommit=True, connect_timeout=10
            )
        return self._conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with anyio.CancelScope(shield=True), contextlib.suppress(psycopg.Error):
                await conn.close()
