"""`jobledger dispatcher`: dispatch, timers, reaper and reconcile, under one leadership lock.

Any number of dispatcher processes may run; the one holding the PostgreSQL
advisory lock works and the others stand by. If the leader's connection
dies, another takes over within a second, resuming from the stored position.
An unexpected error restarts the whole plane after a pause, so a hiccup of
PostgreSQL or Redis never ends the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio as aioredis
import structlog
from anyio.abc import TaskGroup
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from consumers.dispatcher import Dispatcher, LedgerListener
from consumers.outages import first_line, is_outage
from consumers.reaper import Reaper
from consumers.reconcile import RedisWatch
from consumers.streams import StreamKeys, Streams
from consumers.timers import Timers
from ledger import Leadership, Ledger, Settings

log = structlog.get_logger("jobledger.control_plane")

LOCK_NAME = "dispatcher"


def redis_client(settings: Settings) -> aioredis.Redis:
    """A client that fails fast when Redis is away, so callers can wait and reconcile."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        health_check_interval=5,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
    )


def stream_names(ledger: Ledger, keys: StreamKeys) -> list[str]:
    """Every stream of every job type this process knows, high priority first."""
    return [name for level in keys.by_priority(t.name for t in ledger.registry) for name in level]


@dataclass
class ControlPlane:
    """`await plane.run()` until cancelled: stand by, lead, restart on failure."""

    ledger: Ledger
    settings: Settings
    restart_after_s: float = 1.0
    reconcile_interval_s: float = 30.0
    parts: dict[str, Any] = field(default_factory=dict)
    down: bool = False  # in an outage, already told

    async def run(self) -> None:
        while True:
            try:
                await self._lead_once()
            except Exception as e:
                if is_outage(e):  # expected now and then: one line an outage, no traceback
                    if not self.down:
                        log.warning(
                            "database or redis unreachable; retrying every second",
                            error=first_line(e),
                        )
                    self.down = True
                else:
                    log.exception("control plane failed; restarting", error=first_line(e))
                await anyio.sleep(self.restart_after_s)

    async def _lead_once(self) -> None:
        client = redis_client(self.settings)
        try:
            async with Leadership(self.settings.database_url, LOCK_NAME) as lead:
                log.info("leading", role=LOCK_NAME)
                if self.down:  # the database is back: its old connections are dead
                    await anyio.to_thread.run_sync(self.ledger.discard_broken_connections)
                    self.down = False
                async with anyio.create_task_group() as tg:
                    self._start_parts(tg, client)
                    while await lead.still_held():  # noqa: ASYNC110  (polls a connection)
                        await anyio.sleep(1.0)
                    log.warning("lost the leadership lock; standing by")
                    tg.cancel_scope.cancel()
        finally:
            self.parts = {}
            with anyio.CancelScope(shield=True):
                await client.aclose()

    def _start_parts(self, tg: TaskGroup, client: aioredis.Redis) -> None:
        keys = StreamKeys(self.settings.redis_prefix)
        streams = Streams(client, keys)
        names = stream_names(self.ledger, keys)
        listener = LedgerListener(self.settings.database_url, self.ledger.events_table)
        self.parts = {
            "listener": listener,
            "dispatcher": Dispatcher(
                self.ledger,
                streams,
                listener.subscribe(),
                database_url=self.settings.database_url,
            ),
            "timers": Timers(self.ledger, listener.subscribe()),
            "reaper": Reaper(
                self.ledger, streams, lease_s=self.settings.lease_s, stream_names=names
            ),
            "watch": RedisWatch(self.ledger, streams, names, interval_s=self.reconcile_interval_s),
        }
        for part in self.parts.values():
            tg.start_soon(part.run)
