"""Fixtures of the control-plane tests; a test module asks for them with `pytest_plugins`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from consumers.streams import StreamKeys, Streams
from ledger import Settings
from tests.control_plane_support import delete_prefix


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clean_redis(settings: Settings) -> Iterator[None]:
    """Delete this test's keys from the shared Redis afterwards."""
    yield
    delete_prefix(settings.redis_url, settings.redis_prefix)


@pytest.fixture
async def streams(settings: Settings, clean_redis: None) -> AsyncIterator[Streams]:
    client = aioredis.Redis.from_url(settings.redis_url)
    yield Streams(client, StreamKeys(settings.redis_prefix))
    await client.aclose()
