"""`jobledger worker`: one worker process, wired from the settings, stopped by signals."""

from __future__ import annotations

import signal

import anyio
import redis.asyncio as aioredis

from consumers.streams import StreamKeys, Streams
from consumers.worker import Worker, WorkerConfig
from jobledger.wiring import make_ledger
from ledger import Settings, registry


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; a second signal stops attempts at once."""
    ledger = make_ledger(settings, pool_size=4)
    client = aioredis.Redis.from_url(settings.redis_url)
    config = WorkerConfig(
        concurrency=settings.worker_concurrency,
        lease_s=settings.lease_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        retry_delays_s=settings.retry_delays_s,
    )
    streams = Streams(client, StreamKeys(settings.redis_prefix))
    try:
        async with (
            Worker(ledger, streams, registry, config) as worker,
            anyio.create_task_group() as group,
        ):
            group.start_soon(_stop_on_signals, worker)
            await worker.run()
            group.cancel_scope.cancel()
    finally:
        await client.aclose()
        ledger.close()


async def _stop_on_signals(worker: Worker) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            if worker.stopping:
                worker.shutdown_now()
            else:
                worker.stop()
