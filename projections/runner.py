"""The projector: follows the ledger's log into the views, one transaction per batch.

`Follower` is the synchronous core (read a batch, fold it, commit it with the
tracking position); `Projector` is the long-running role around it: leader
election among projector processes, LISTEN on the events channel to wake at
once, a fallback poll, and an explicit stop. `rebuild` drops the views and
replays the whole log through the same Follower.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from uuid import UUID

import anyio
import psycopg
import structlog
from eventsourcing.persistence import PersistenceError
from psycopg import sql

from ledger import JobEvent, Leadership, Ledger
from projections import views
from projections.errors import PositionMoved
from projections.job_status import JobRow, project

log = structlog.get_logger("jobledger.projector")

EVENTS_CHANNEL = "jobledger_events"
LEADER_NAME = "projector"


class Follower:
    """Applies the ledger's log to the views, `batch_size` events per transaction.

    Rows it wrote are kept in memory, valid while the tracking position is the
    one it last wrote (the views are a function of the log up to it): a batch
    then reads no rows back. With `write_behind`, a batch commits in a thread
    while the next one is read and folded (for `rebuild`).
    """

    def __init__(
        self,
        ledger: Ledger,
        conn: psycopg.Connection[Any],
        *,
        page_size: int = 1000,
        batch_size: int | None = None,
        cache_size: int = 200_000,
        write_behind: bool = False,
    ) -> None:
        self.ledger = ledger
        self.store = views.ViewStore(conn)
        self.page_size = page_size
        self.batch_size = batch_size or page_size
        self.cache_size = cache_size
        self.cache: dict[UUID, JobRow] = {}
        self.position = -1  # the position of the last batch (committed or in flight)
        self._writer = ThreadPoolExecutor(1, "view-writer") if write_behind else None
        self._pending: Future[None] | None = None

    def close(self) -> None:
        """Wait for the batch in flight; if it fails, it simply did not land."""
        try:
            self.flush()
        except Exception as e:
            log.info("the last batch did not land", error=str(e).strip()[:200])
        finally:
            if self._writer is not None:
                self._writer.shutdown()

    def reset(self) -> None:
        """Forget what is cached and go on from the stored position."""
        pending, self._pending = self._pending, None
        if pending is not None:
            wait([pending])  # landed or not, the stored position says which
        self.cache.clear()
        self.position = self.store.position()

    def flush(self) -> None:
        """Wait for the batch in flight; PositionMoved if another writer got there first."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except BaseException:
                self.position = -1
                raise

    def step(self) -> int:
        """Project the next batch of the log; the number of events (0: caught up).

        Raises PositionMoved, after resetting, when another writer moved the
        position: the caller simply goes on.
        """
        try:
            if self.position < 0:
                self.reset()
            events = self._read()
            if events:
                self._apply(events)
            else:
                self.flush()
        except PositionMoved:
            self.reset()
            raise
        except BaseException:
            self.position = -1  # start again from the stored position, with no cache
            raise
        return len(events)

    def _read(self) -> list[tuple[int, JobEvent]]:
        events: list[tuple[int, JobEvent]] = []
        after = self.position
        while len(events) < self.batch_size:
            page = self.ledger.read_log(after, min(self.page_size, self.batch_size - len(events)))
            events += page
            if len(page) < self.page_size:
                break
            after = page[-1][0]
        return events

    def _apply(self, events: Sequence[tuple[int, JobEvent]]) -> None:
        cache = self.cache
        rows: dict[UUID, JobRow] = {}
        wanted: set[UUID] = set()
        for _, event in events:
            job_id = event.originator_id
            if job_id in cache:
                rows[job_id] = cache[job_id]
            elif event.originator_version > 1:
                wanted.add(job_id)
        if wanted:
            self.flush()  # the rows must reflect every batch before this one
            rows.update(self.store.rows(wanted, self.position))
        batch = project(events, rows, self.position)
        if len(cache) + len(batch.rows) > self.cache_size:
            cache.clear()
        cache.update(batch.rows)
        expected, self.position = self.position, batch.position
        if self._writer is None:
            self.store.commit(expected, batch)
            return
        self.flush()
        self._pending = self._writer.submit(self.store.commit, expected, batch)


def connect(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url, autocommit=True, connect_timeout=10)


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    seconds: float
    position: int
    cpu_seconds: float = 0.0  # this process's CPU time (all threads) during the rebuild

    @property
    def rate(self) -> float:
        """Events projected per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_rate(self) -> float:
        """Events per CPU-second of this process: the rate on a machine with a core to spare."""
        return self.events / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


def rebuild(
    ledger: Ledger,
    database_url: str,
    *,
    batch_size: int = 50_000,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> RebuildReport:
    """Drop the views and replay the whole log into them; `progress(position, head)`.

    A running projector may go on meanwhile: each batch commits only from the
    position it was computed from, so the two never apply an event twice.
    """
    with connect(database_url) as conn:
        views.recreate(conn)
        follower = Follower(ledger, conn, page_size=2000, batch_size=batch_size, write_behind=True)
        head = ledger.max_position()
        done = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            while True:
                try:
                    n = follower.step()
                except PositionMoved:  # a running projector got there first: go on from it
                    head = ledger.max_position()
                    continue
                done += n
                progress(follower.position, max(head, follower.position))
                if not n:
                    break
        finally:
            follower.close()
        views.create_indexes(conn)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    return RebuildReport(
        events=done, seconds=seconds, position=follower.position, cpu_seconds=cpu_seconds
    )


class Projector:
    """`async with Projector(ledger, url) as p: await p.run()`; `p.stop()` ends it.

    Only the holder of the `projector` advisory lock works; other instances
    wait and take over within `leader_retry_s` when it dies.
    """

    def __init__(
        self,
        ledger: Ledger,
        database_url: str,
        *,
        page_size: int = 1000,
        batch_size: int = 5000,
        poll_s: float = 1.0,
        leader_retry_s: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.database_url = database_url
        self.page_size = page_size
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.leader_retry_s = leader_retry_s
        self._stop = anyio.Event()

    async def __aenter__(self) -> Projector:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Lead when possible and follow the log until stopped."""
        async with anyio.create_task_group() as tg:

            async def cancel_on_stop() -> None:
                await self._stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_on_stop)
            while not self._stop.is_set():
                try:
                    await self._lead()
                except (psycopg.Error, PersistenceError, OSError) as e:
                    log.warning("projector error, retrying", error=str(e).strip()[:200])
                    await anyio.sleep(self.poll_s)
            tg.cancel_scope.cancel()

    async def _lead(self) -> None:
        leadership = Leadership(self.database_url, LEADER_NAME, retry_s=self.leader_retry_s)
        async with leadership:
            log.info("projector leads")
            await self._follow(leadership)

    async def _step(self, follower: Follower) -> int:
        try:
            return await anyio.to_thread.run_sync(follower.step)
        except PositionMoved as e:
            log.info("another writer moved the position", expected=e.expected, found=e.found)
            return self.page_size  # go on at once from where it is

    async def _follow(self, leadership: Leadership) -> None:
        listen = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        conn = await anyio.to_thread.run_sync(connect, self.database_url)
        follower = Follower(
            self.ledger,
            conn,
            page_size=self.page_size,
            batch_size=self.batch_size,
            write_behind=True,
        )
        try:
            await listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_CHANNEL)))
            # Missing views or indexes (a rebuild that died half-way) are made again.
            await anyio.to_thread.run_sync(views.create, conn)
            while True:
                while await self._step(follower) >= self.page_size // 2:
                    pass  # a busy log: go on without waiting
                woken = False
                async for _ in listen.notifies(timeout=self.poll_s, stop_after=1):
                    woken = True
                if not woken and not await leadership.still_held():
                    log.warning("projector lost its lock")
                    return
        finally:
            with anyio.CancelScope(shield=True):
                await listen.close()
                await anyio.to_thread.run_sync(follower.close)
                await anyio.to_thread.run_sync(conn.close)
