"""Group commit for async callers: many callers' changes share one transaction.

Round trips and commits, not SQL, bound the ledger's write rate, so a worker
with a hundred attempts in flight or an API taking concurrent submissions
should not pay one transaction each. The writer commits at once when idle
(no added latency: a small append after a quiet spell is committed on the
caller's own thread) and, while a commit is in flight, gathers everything that
arrives into the next one (throughput under load). Each caller still gets its
own outcome: a batch that fails on one caller's conflict or quota is split
until the culprit is alone, so the others' changes land.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from uuid import UUID

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ledger.domain.errors import ConcurrencyConflict, QuotaExceeded
from ledger.domain.job import Job, JobSpec
from ledger.store import Change, Ledger


@dataclass(eq=False)
class _Request:
    changes: Sequence[Change]
    done: anyio.Event = field(default_factory=anyio.Event)
    jobs: list[Job] = field(default_factory=list)
    error: BaseException | None = None


class BatchWriter:
    """`async with BatchWriter(ledger) as writer: await writer.append(changes)`."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        max_batch: int = 1000,
        inline_max: int = 4,
        quiet_s: float = 0.005,
    ) -> None:
        self.ledger = ledger
        self.max_batch = max_batch
        self.inline_max = inline_max
        self.quiet_s = quiet_s
        self._committing = False
        self._last_append = 0.0
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
        return await self._group.__aexit__(exc_type, exc, tb)

    async def append(self, changes: Sequence[Change]) -> list[Job]:
        """Like `Ledger.append`: all of these changes land together, or none does."""
        if not changes:
            return []
        now = time.monotonic()
        quiet = now - self._last_append > self.quiet_s
        self._last_append = now
        if quiet and self._idle() and len(changes) <= self.inline_max:
            # Handing a commit to a thread and back costs two thread wake-ups,
            # several milliseconds on a busy VM, more than the commit itself.
            # When nothing has been written for a while, a small append blocks
            # the event loop for one commit instead: what an idle system's
            # latency wants. Under load, appends go to the batching thread.
            return self.ledger.append(changes)
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

    def _idle(self) -> bool:
        return not self._committing and self._send.statistics().current_buffer_used == 0

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
                self._committing = True
                try:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self._commit, batch)
                finally:
                    self._committing = False
                for request in batch:
                    request.done.set()

    def _commit(self, batch: list[_Request]) -> None:
        """Append the whole batch; on a conflict or quota error, split it and retry."""
        try:
            jobs = self.ledger.append([c for r in batch for c in r.changes])
        except (ConcurrencyConflict, QuotaExceeded) as e:
            if len(batch) == 1:
                batch[0].error = e
                return
            middle = len(batch) // 2
            self._commit(batch[:middle])
            self._commit(batch[middle:])
            return
        except Exception as e:
            for request in batch:
                request.error = e
            return
        start = 0
        for request in batch:
            request.jobs = jobs[start : start + len(request.changes)]
            start += len(request.changes)
