"""The worker: reads "run this attempt" messages and runs up to N attempts at once.

    async with Worker(ledger, streams, registry, config) as worker:
        await worker.run()          # until worker.stop()

Messages are read in batches as large as the free slots (high priority
first), plus up to `prefetch` more while every slot is taken. The starts of a
batch are decided on the messages' snapshots (no ledger read) and appended
together (`Recorder`); each started attempt then runs under its timeout on
one of `concurrency` long-lived runner tasks. Outcomes of attempts that end
together are recorded in one append, then their messages are acknowledged in
one round trip. Appends go through one `BatchWriter`, so starts and outcomes
share transactions under load. One query every half second renews the leases of all attempts in
flight and brings back cancel requests; an attempt whose job left `running`
meanwhile (the reaper declared it lost) is stopped and its result dropped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Generic, TypeVar
from uuid import UUID

import anyio
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from consumers import attempts
from consumers.attempts import Attempt, Outcome
from consumers.outages import OUTAGES, REDIS_DOWN, first_line
from consumers.recording import Recorder
from consumers.streams import GROUP, Message, Streams
from ledger import DATABASE_DOWN, BatchWriter, Job, Ledger, Registry

log = structlog.get_logger("jobledger.worker")
T = TypeVar("T")

RENEW_INTERVAL_S = 0.5
IDLE_BLOCK_MS = 500
# Outcomes are recorded once attempts stop ending (OUTCOME_QUIET_S without a
# new one, OUTCOME_LINGER_S at most), so that attempts ending together share
# a commit, and after any starts being gathered: those are what attempts wait for.
OUTCOME_LINGER_S = 0.005
OUTCOME_QUIET_S = 0.001
# Attempts that end together start their successors in one batch: after a slot
# frees, the reader waits while more keep freeing (each within START_QUIET_S of
# the last), never longer than START_LINGER_S.
START_QUIET_S = 0.001
START_LINGER_S = 0.005
PRIORITY_WAIT_S = 0.05

# Renews the leases of this worker's attempts and reports, for each, whether it
# is still this worker's (running, same attempt), its version and any cancel
# request. Rows another transaction holds are skipped, never waited for: an
# append locks its rows in its own order, and waiting here could deadlock with
# it. Every part of the statement sees one snapshot, so a skipped row still
# reads as running and mine.
RENEW_LEASES = """
WITH wanted AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(attempts)s::integer[]) AS w(job_id, attempt)
), free AS (
    SELECT j.job_id FROM jl_jobs AS j JOIN wanted AS w USING (job_id)
    WHERE j.attempts = w.attempt AND j.status = 'running'
    FOR UPDATE OF j SKIP LOCKED
), renewed AS (
    UPDATE jl_jobs AS j
    SET lease_until = GREATEST(j.lease_until, now() + %(lease_s)s * interval '1 second')
    FROM free WHERE j.job_id = free.job_id
)
SELECT j.job_id, j.cancel_requested, j.version
FROM jl_jobs AS j JOIN wanted AS w USING (job_id)
WHERE j.attempts = w.attempt AND j.status = 'running'
"""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    concurrency: int = 100
    lease_s: float = 30.0
    shutdown_grace_s: float = 30.0
    retry_delays_s: tuple[float, ...] | None = None
    prefetch: int = 100  # messages read ahead while every slot is taken


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    def __init__(
        self,
        ledger: Ledger,
        streams: Streams,
        registry: Registry,
        config: WorkerConfig,
        *,
        name: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.streams = streams
        self.config = config
        self.name = name or consumer_name()
        self.types = {t.name: t for t in registry if t.handler is not None}
        self.levels = streams.keys.by_priority(self.types)
        self.active: dict[UUID, Attempt] = {}  # started, outcome not yet recorded
        self._free = config.concurrency
        self._slot_freed = anyio.Event()
        self._backlog: list[Message] = []
        self._stopping = anyio.Event()
        self._starting = 0  # start batches in flight
        self._redis_pause = 0.0
        self._no_starts = anyio.Event()
        self._gathered = anyio.Event()  # unset while the reader gathers a batch of starts
        self._gathered.set()
        self._grace = anyio.CancelScope()
        self._ended: Batcher[tuple[Attempt, Outcome]] = Batcher(
            self._finish, OUTCOME_LINGER_S, OUTCOME_QUIET_S
        )
        self._exit = AsyncExitStack()
        self.recorder: Recorder
        self._attempts: MemoryObjectSendStream[Attempt]  # to the runners, while `run` runs
        self._background: TaskGroup

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Worker:
        writer = await self._exit.enter_async_context(BatchWriter(self.ledger))
        self.recorder = Recorder(
            self.ledger,
            writer,
            self.name,
            self.config.lease_s,
            self.config.retry_delays_s,
            self.types,
        )
        self._background = await self._exit.enter_async_context(anyio.create_task_group())
        self._background.start_soon(self._renew_loop)
        self._background.start_soon(self._ended.run)
        await self.streams.ensure_groups([s for level in self.levels for s in level])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.stop()
        self._background.cancel_scope.cancel()
        return await self._exit.__aexit__(exc_type, exc, tb)

    def stop(self) -> None:
        """Stop reading; `run` lets attempts in flight finish within the grace period."""
        self._stopping.set()
        self._slot_freed.set()  # wakes the reader if it waits for a free slot

    def shutdown_now(self) -> None:
        """Stop reading and end the grace period at once."""
        self.stop()
        self._grace.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Run attempts until `stop()`, then drain: grace period, then stop the rest.

        Attempts run on `concurrency` long-lived runner tasks fed by a memory
        stream, not on a task each: anyio spawns a task in ~40 µs here, a
        hand-over costs ~9 µs, and a wave of 100 attempts starts 3-4 ms sooner.
        """
        send, receive = anyio.create_memory_object_stream[Attempt](self.config.concurrency)
        async with anyio.create_task_group() as group:
            with receive:
                for _ in range(self.config.concurrency):
                    group.start_soon(self._runner, receive.clone())
            with send:
                self._attempts = send
                await self._read_loop(group)
                await self._hand_back()
                self._grace.deadline = anyio.current_time() + self.config.shutdown_grace_s
                with self._grace:
                    while self._free < self.config.concurrency:
                        await self._wait_for_slot()
                for attempt in list(self.active.values()):
                    if not attempt.ended:
                        attempt.stop("shutdown")
        await self._ended.flush()

    # ------------------------------------------------------------ reading

    async def _read_loop(self, group: TaskGroup) -> None:
        """Start what slots allow; read ahead up to `prefetch` more while they are full."""
        while not self._stopping.is_set():
            if self._free > 0 and self._backlog:
                self._launch(group, self._backlog[: self._free])
                continue
            room = self._free + self.config.prefetch - len(self._backlog)
            if room > 0:
                if not self._free and self._starting:
                    await self._after_starts()
                    continue  # slots may have freed meanwhile: look again
                # Block only with nothing in hand, or read-ahead would hold up starts.
                block = self._free > 0 and not self._backlog
                try:
                    messages = await self._read(room, block=block)
                except REDIS_DOWN as e:
                    await self._redis_down(e)
                    continue
                self._redis_pause = 0.0
                if messages:
                    self._backlog.extend(messages)
                    continue
                if self._free > 0:
                    continue  # the blocking read timed out: read again
            await self._wait_for_slot()
            await self._gather_slots()

    async def _redis_down(self, error: BaseException) -> None:
        """Wait and read again: the dispatcher re-publishes whatever Redis lost."""
        if not self._redis_pause:
            log.warning("redis unreachable; reading again when it is back", error=str(error))
        self._redis_pause = min(max(self._redis_pause * 2, 0.1), 2.0)
        await anyio.sleep(self._redis_pause)

    def _launch(self, group: TaskGroup, messages: list[Message]) -> None:
        del self._backlog[: len(messages)]
        self._free -= len(messages)
        if not self._starting:
            self._no_starts = anyio.Event()
        self._starting += 1
        group.start_soon(self._start, messages)

    async def _after_starts(self) -> None:
        """Let batches of starts go first (gathered, then committed): attempts wait for them."""
        with anyio.move_on_after(PRIORITY_WAIT_S):
            await self._gathered.wait()
            if self._starting:
                await self._no_starts.wait()

    async def _hand_back(self) -> None:
        """Messages read ahead but not started go back to the stream for other workers."""
        backlog, self._backlog = self._backlog, []
        if backlog:
            try:
                await self.streams.publish([m.job for m in backlog])
            except REDIS_DOWN:
                return  # Redis lost them anyway; the dispatcher re-publishes queued jobs
            await ack(self.streams, backlog)

    async def _wait_for_slot(self) -> None:
        await self._slot_freed.wait()
        self._slot_freed = anyio.Event()

    async def _gather_slots(self) -> None:
        """Wait while slots keep freeing, so attempts ending together start one batch.

        One batch is one commit, and a batch launched while the rest of a wave
        is still ending would make the rest wait for its commit. An idle worker
        does not wait: a slot freed with nothing to start, or every slot free.
        """
        self._gathered = anyio.Event()
        try:
            await settle(
                self._wait_for_slot,
                quiet_s=START_QUIET_S,
                linger_s=START_LINGER_S,
                enough=lambda: self._free >= min(len(self._backlog), self.config.concurrency),
            )
        finally:
            self._gathered.set()

    def _release_slot(self) -> None:
        self._free += 1
        self._slot_freed.set()

    async def _read(self, count: int, *, block: bool) -> list[Message]:
        """Up to `count` messages, high priority first; waits briefly for some if `block`."""
        got: list[Message] = []
        for streams in self.levels:
            if len(got) >= count:
                return got
            got += await self.streams.read(self.name, streams, count - len(got), None)
        if got or not block:
            return got
        everything = [s for level in self.levels for s in level]
        # A blocking read over many streams may return up to `count` from each.
        return await self.streams.read(self.name, everything, count, IDLE_BLOCK_MS)

    # ------------------------------------------------------------ attempts

    async def _start(self, messages: list[Message]) -> None:
        """Record the starts of a batch in one append, then run each started attempt."""
        try:
            await self._start_batch(messages)
        finally:
            self._starting -= 1
            if not self._starting:
                self._no_starts.set()

    async def _start_batch(self, messages: list[Message]) -> None:
        started: list[Job | None] = [None] * len(messages)
        fresh = [i for i, m in enumerate(messages) if m.job.id not in self.active]
        try:
            recorded = await self.recorder.start([messages[i].job for i in fresh])
        except DATABASE_DOWN as e:
            # Back to the stream, to start as soon as the ledger is back (left
            # pending, they would wait for the reaper's claim, a lease later).
            log.warning("starts not recorded: ledger unreachable", error=first_line(e))
            for _ in messages:
                self._release_slot()
            with contextlib.suppress(*REDIS_DOWN):
                await self.streams.publish([m.job for m in messages])
                await ack(self.streams, messages)
            return
        except Exception:
            # The messages stay pending in the stream and are claimed again later.
            log.exception("attempt_start_failed", messages=len(messages))
            for _ in messages:
                self._release_slot()
            return
        for i, job in zip(fresh, recorded, strict=True):
            started[i] = job
        dropped = []
        for message, job in zip(messages, started, strict=True):
            if job is None:
                dropped.append(message)
                self._release_slot()
                continue
            attempt = Attempt(message, job)
            self.active[job.id] = attempt
            # Never blocks: at most `concurrency` attempts hold a slot, and the
            # buffer holds as many.
            self._attempts.send_nowait(attempt)
        if dropped:
            await ack(self.streams, dropped)  # duplicates, stale or cancelled: nothing to run

    async def _runner(self, attempts_in: MemoryObjectReceiveStream[Attempt]) -> None:
        """Run attempts one after another until the worker stops handing them over."""
        async with attempts_in:
            async for attempt in attempts_in:
                await self._run(attempt)

    async def _run(self, attempt: Attempt) -> None:
        try:
            outcome = await attempts.run(attempt, self.types[attempt.job.type])
        finally:
            self._release_slot()
        self._ended.add((attempt, outcome))

    async def _finish(self, ended: list[tuple[Attempt, Outcome]]) -> None:
        """Record the outcomes of attempts that ended, then acknowledge their messages."""
        await self._after_starts()
        recorded: list[Job | None] = [None] * len(ended)
        try:
            recorded = await self.recorder.finish(ended)
            await ack(self.streams, [attempt.message for attempt, _ in ended])
        finally:
            for (attempt, outcome), after in zip(ended, recorded, strict=True):
                self.active.pop(attempt.job.id, None)
                _log_end(attempt, outcome, after)

    # ------------------------------------------------------------ leases

    async def _renew_loop(self) -> None:
        touched = 0.0
        outage = False  # warned once per outage, not every half second
        while True:
            await anyio.sleep(RENEW_INTERVAL_S)
            held = list(self.active.values())
            if not held:
                continue
            try:
                rows = await anyio.to_thread.run_sync(self._renew, held)
                if anyio.current_time() - touched >= min(self.config.lease_s / 4, 5.0):
                    touched = anyio.current_time()
                    messages = [a.message for a in held] + self._backlog
                    await self.streams.touch(self.name, messages)
            except OUTAGES as e:
                if not outage:
                    log.warning("leases not renewed: ledger or redis down", error=first_line(e))
                outage = True
                continue
            except Exception:
                log.exception("lease_renewal_failed")
                continue
            if outage:
                log.info("leases renewed again")
                outage = False
                await anyio.to_thread.run_sync(self.ledger.discard_broken_connections)
            for attempt in held:
                row = rows.get(attempt.job.id)
                if row is None:
                    if not attempt.ended and self.active.get(attempt.job.id) is attempt:
                        attempt.stop("lost")
                    continue
                cancel_requested, version = row
                if version != attempt.job.version:
                    attempt.stale = True
                if cancel_requested and not attempt.ended:
                    attempt.stop("cancelled")

    def _renew(self, held: Sequence[Attempt]) -> dict[UUID, tuple[bool, int]]:
        ids = [a.job.id for a in held]
        numbers = [a.number for a in held]
        with self.ledger.connection() as conn:
            params = {"ids": ids, "attempts": numbers, "lease_s": self.config.lease_s}
            rows = conn.execute(RENEW_LEASES, params).fetchall()
        return {r["job_id"]: (r["cancel_requested"], r["version"]) for r in rows}


class Batcher(Generic[T]):
    """Collects items and hands all that are waiting to one call: at once when idle."""

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[None]],
        linger_s: float = 0.0,
        quiet_s: float = 0.0,
    ) -> None:
        self._flush = flush
        self._linger_s = linger_s
        self._quiet_s = quiet_s or linger_s
        self._items: list[T] = []
        self._ready = anyio.Event()
        self._lock = anyio.Lock()

    def add(self, item: T) -> None:
        self._items.append(item)
        self._ready.set()

    async def run(self) -> None:
        """Hand over once items stop coming (`quiet_s`), or `linger_s` after the first."""
        while True:
            await self._ready.wait()
            self._ready = anyio.Event()
            await settle(self._next_item, quiet_s=self._quiet_s, linger_s=self._linger_s)
            await self.flush()

    async def _next_item(self) -> None:
        await self._ready.wait()
        self._ready = anyio.Event()

    async def flush(self) -> None:
        """Return once everything added so far has been handed over."""
        async with self._lock:
            while self._items:
                items, self._items = self._items, []
                try:
                    await self._flush(items)
                except Exception:
                    log.exception("batch_flush_failed", items=len(items))


async def settle(
    wait: Callable[[], Awaitable[None]],
    *,
    quiet_s: float,
    linger_s: float,
    enough: Callable[[], bool] = lambda: False,
) -> None:
    """Return once `wait()` has not returned for `quiet_s`, `linger_s` passed, or `enough()`.

    What ends together (attempts of one wave) then goes into one batch, and
    a batch never waits longer than `linger_s` for stragglers.
    """
    deadline = anyio.current_time() + linger_s
    while not enough():
        quiet = min(quiet_s, deadline - anyio.current_time())
        if quiet <= 0:
            return
        with anyio.move_on_after(quiet):
            await wait()
            continue
        return  # nothing came for a while


async def ack(streams: Streams, messages: Sequence[Message]) -> None:
    """XACK and XDEL a batch: two commands per stream, in one round trip."""
    by_stream: dict[str, list[str]] = {}
    for m in messages:
        by_stream.setdefault(m.stream, []).append(m.id)
    if not by_stream:
        return
    try:
        async with streams.client.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute(raise_on_error=False)
    except REDIS_DOWN as e:
        # Unacknowledged messages of finished jobs are harmless: whoever claims
        # them finds the job no longer queued and drops them.
        log.warning("cannot acknowledge, redis unreachable", error=str(e))


def _log_end(attempt: Attempt, outcome: Outcome, after: Job | None) -> None:
    job = attempt.job
    log.info(
        "attempt_ended",
        job_id=str(job.id),
        type=job.type,
        org=job.org,
        attempt=attempt.number,
        duration_ms=outcome.duration_ms,
        outcome=outcome.kind if after is not None or outcome.kind == "lost" else "dropped",
        status=after.status.value if after is not None else None,
        started_at=_iso(attempt.started_at),
    )


def _iso(epoch: float) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch else None
