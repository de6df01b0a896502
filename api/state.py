"""What the API holds open while it runs: the ledger's writer, the read models, pools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio as aioredis
from litestar import Litestar, Request
from psycopg_pool import AsyncConnectionPool

from api.access_log import LineBuffer
from api.keys import KeyStore
from ledger import BatchWriter, Ledger, Registry, Settings
from projections import JobQueries


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    registry: Registry
    ledger: Ledger
    writer: BatchWriter
    queries: JobQueries
    keys: KeyStore
    pool: AsyncConnectionPool
    redis: aioredis.Redis


def resources(request: Request[Any, Any, Any]) -> Resources:
    found: Resources = request.app.state.resources
    return found


def lifespan(settings: Settings, ledger: Ledger, registry: Registry, log_lines: LineBuffer) -> Any:
    """A Litestar lifespan that opens everything at start and closes it at stop."""

    @asynccontextmanager
    async def run(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            tasks = await stack.enter_async_context(anyio.create_task_group())
            tasks.start_soon(log_lines.run)
            stack.callback(tasks.cancel_scope.cancel)
            pool = AsyncConnectionPool(
                settings.database_url, min_size=1, max_size=4, open=False, timeout=5
            )
            await pool.open()
            stack.push_async_callback(pool.close)
            queries = await JobQueries.open(settings.database_url, min_size=2, max_size=8)
            stack.push_async_callback(queries.close)
            client = aioredis.Redis.from_url(
                settings.redis_url, socket_connect_timeout=1, socket_timeout=1
            )
            stack.push_async_callback(client.aclose)
            writer = await stack.enter_async_context(BatchWriter(ledger))
            app.state.resources = Resources(
                settings=settings,
                registry=registry,
                ledger=ledger,
                writer=writer,
                queries=queries,
                keys=KeyStore(pool),
                pool=pool,
                redis=client,
            )
            yield

    return run
