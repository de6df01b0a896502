"""Publish once: the direct path and the dispatcher share one Lua script and never both publish.

Whoever appends a `queued` event publishes the job right after the commit
(`DirectPublisher`, installed as the ledger's publish hook); the dispatcher,
following the log, publishes what that direct path missed (a process that
died after its commit, Redis down at that moment). Both go through
`PUBLISH_ONCE`, with a marker key per (job id, version of its `queued`
event): the first to come *sets* the marker and XADDs, the second finds it,
*deletes* it and skips. So each queued event costs one message and leaves no
key behind, whichever side comes first. A marker whose partner never comes
(the direct publish failed after the dispatcher's, or the dispatcher re-reads
a page after a crash) expires after `MARKER_TTL_MS`.

Only the ledger's own retries and losses of Redis give duplicates, as before;
a duplicate stays harmless (the worker's append fails on the job's version).
Every key is in the streams' hash slot and named in KEYS, so a Redis Cluster
runs the script.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from consumers.streams import GROUP, StreamKeys, encode
from ledger import Job

MARKER_TTL_MS = 600_000

# KEYS: marker, stream, marker, stream, ... (one pair per job)
# ARGV: marker ttl (ms), group, then one message body per job
# A stream this creates gets its group at once (what `Streams.publish` ensures),
# so a worker's first read finds the message.
PUBLISH_ONCE = """
local published = 0
for i = 1, #KEYS, 2 do
    if redis.call('DEL', KEYS[i]) == 0 then
        redis.call('SET', KEYS[i], '1', 'PX', ARGV[1])
        if redis.call('EXISTS', KEYS[i + 1]) == 0 then
            redis.call('XGROUP', 'CREATE', KEYS[i + 1], ARGV[2], '0', 'MKSTREAM')
        end
        redis.call('XADD', KEYS[i + 1], '*', 'job', ARGV[2 + (i + 1) / 2])
        published = published + 1
    end
end
return published
"""

# KEYS: markers. Deletes them; 1 for each that was there (its job is published).
CONSUME = """
local found = {}
for i = 1, #KEYS do
    found[i] = redis.call('DEL', KEYS[i])
end
return found
"""

Queued = tuple[Job, int]  # a job to publish and the version of its `queued` event


def marker(keys: StreamKeys, job_id: UUID, version: int) -> str:
    return keys.key(f"pub:{job_id}:{version}")


def script_arguments(
    keys: StreamKeys, queued: Sequence[Queued], ttl_ms: int
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of `PUBLISH_ONCE` for these jobs."""
    names: list[str] = []
    bodies: list[Any] = [ttl_ms, GROUP]
    for job, version in queued:
        names += [marker(keys, job.id, version), keys.stream(job.type, job.priority)]
        bodies.append(encode(job)["job"])
    return names, bodies


class _Hook:
    """What both direct publishers share: short timeouts, and standing aside after a failure.

    A hook runs right after an append's commit, so it must be quick even when
    Redis is not: short socket timeouts, no retries, and after a failure it
    stands aside for `pause_s` (appends do not each wait for a timeout while
    Redis is away; the dispatcher publishes those jobs). Failures raise; the
    ledger logs them and carries on.
    """

    def __init__(
        self,
        keys: StreamKeys,
        redis_url: str,
        *,
        timeout_s: float = 0.5,
        pause_s: float = 1.0,
        ttl_ms: int = MARKER_TTL_MS,
    ) -> None:
        self.keys = keys
        self.redis_url = redis_url
        self.pause_s = pause_s
        self.ttl_ms = ttl_ms
        self.options: dict[str, Any] = {
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
        }
        self._paused_until = 0.0

    def _arguments(self, jobs: Sequence[Job]) -> tuple[list[str], list[Any]] | None:
        """The script's arguments, or None when there is nothing to do (or Redis just failed)."""
        if not jobs or time.monotonic() < self._paused_until:
            return None
        return script_arguments(self.keys, [(j, j.version) for j in jobs], self.ttl_ms)

    def _failed(self) -> None:
        self._paused_until = time.monotonic() + self.pause_s


class DirectPublisher(_Hook):
    """The ledger's publish hook for its own (blocking) appends: one EVALSHA per append."""

    def __init__(self, keys: StreamKeys, redis_url: str, **options: Any) -> None:
        super().__init__(keys, redis_url, **options)
        self.client = redis.Redis.from_url(redis_url, **self.options)
        self._script = self.client.register_script(PUBLISH_ONCE)

    def __call__(self, jobs: Sequence[Job]) -> None:
        arguments = self._arguments(jobs)
        if arguments is None:
            return
        try:
            self._script(keys=arguments[0], args=arguments[1])
        except (redis.RedisError, OSError):
            self._failed()
            raise

    def close(self) -> None:
        self.client.close()


class AsyncDirectPublisher(_Hook):
    """The hook for appends committed on an event loop (`BatchWriter`): the loop never blocks.

    Its client is made on first use, in the running loop (a client belongs to
    one loop), and closed by `aclose` when the writer using it ends.
    """

    def __init__(self, keys: StreamKeys, redis_url: str, **options: Any) -> None:
        super().__init__(keys, redis_url, **options)
        self._client: aioredis.Redis | None = None
        self._script: Any = None

    async def __call__(self, jobs: Sequence[Job]) -> None:
        arguments = self._arguments(jobs)
        if arguments is None:
            return
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.redis_url, **self.options)
            self._script = self._client.register_script(PUBLISH_ONCE)
        try:
            await self._script(keys=arguments[0], args=arguments[1])
        except (redis.RedisError, OSError):
            self._failed()
            raise

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class OncePublisher:
    """The dispatcher's side of the protocol, on its asyncio client."""

    def __init__(
        self, client: aioredis.Redis, keys: StreamKeys, *, ttl_ms: int = MARKER_TTL_MS
    ) -> None:
        self.keys = keys
        self.ttl_ms = ttl_ms
        self._publish = client.register_script(PUBLISH_ONCE)
        self._consume = client.register_script(CONSUME)

    async def consume(self, pairs: Sequence[tuple[UUID, int]]) -> list[bool]:
        """For each (job id, queued version): was it published already? Its marker is gone now."""
        if not pairs:
            return []
        found = await self._consume(keys=[marker(self.keys, j, v) for j, v in pairs])
        return [bool(int(f)) for f in found]

    async def publish(self, queued: Sequence[Queued]) -> int:
        """Publish those the direct path has not; how many this call published."""
        if not queued:
            return 0
        names, bodies = script_arguments(self.keys, queued, self.ttl_ms)
        return int(await self._publish(keys=names, args=bodies))
