"""`jobledger worker`: one worker process, wired from the settings, stopped by signals."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

import anyio
import structlog

from consumers.control_plane import redis_client
from consumers.streams import StreamKeys, Streams
from consumers.worker import Worker, WorkerConfig
from jobledger.runtime import settle_heap
from jobledger.signals import until_signalled
from jobledger.wiring import make_ledger
from ledger import Settings, registry

LOG_FLUSH_S = 0.2


class LogBuffer:
    """Log lines written out a few times a second rather than one system call each."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self._lines.append(text)

    def flush(self) -> None:
        """Called by the logger after every line: the periodic `drain` does the work."""

    def drain(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        if lines:
            self._out.write("".join(lines))
            self._out.flush()

    async def drain_every(self, seconds: float) -> None:
        while True:
            await anyio.sleep(seconds)
            self.drain()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; a second signal stops attempts at once."""
    logs = LogBuffer(sys.stderr)
    structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=logs))  # type: ignore[arg-type]
    ledger = make_ledger(settings, pool_size=4)
    client = redis_client(settings)
    config = WorkerConfig(
        concurrency=settings.worker_concurrency,
        prefetch=settings.worker_concurrency,
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
            group.start_soon(logs.drain_every, LOG_FLUSH_S)
            settle_heap()
            await until_signalled(worker.run, lambda _: _on_signal(worker))
            group.cancel_scope.cancel()
    finally:
        logs.drain()
        await client.aclose()
        ledger.close()


def _on_signal(worker: Worker) -> None:
    """The first signal drains within the grace period, a second one ends it."""
    if worker.stopping:
        worker.shutdown_now()
    else:
        worker.stop()
