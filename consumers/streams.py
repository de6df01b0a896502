"""Redis Streams: where "run this attempt" messages travel from dispatcher to workers.

One stream per job type and priority, `{prefix}:q:<type>:<priority>`, all in
one hash slot (the prefix is a hash tag) so a Redis Cluster can serve the
multi-stream reads. Every stream has one consumer group, `workers`. A message
carries the job's state and version as JSON: a worker decides the attempt
start without reading the ledger, and the ledger's version check turns a
duplicate or stale message into a harmless conflict.

Redis may lose everything at any moment (it keeps nothing on disk here), so
every call that needs a group recreates it on NOGROUP; the ledger re-dispatches
what was lost (see `consumers.dispatcher`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ledger import Job, from_snapshot, to_snapshot

PRIORITIES = ("high", "normal", "low")
GROUP = "workers"


@dataclass(frozen=True, slots=True)
class StreamKeys:
    prefix: str = "jl"

    @property
    def tag(self) -> str:
        return "{" + self.prefix + "}"

    def stream(self, job_type: str, priority: str) -> str:
        return f"{self.tag}:q:{job_type}:{priority}"

    def by_priority(self, job_types: Iterable[str]) -> list[list[str]]:
        """The streams of these types, high priority first."""
        names = sorted(job_types)
        return [[self.stream(t, p) for t in names] for p in PRIORITIES]

    def key(self, name: str) -> str:
        """Any other key of the system, in the same hash slot."""
        return f"{self.tag}:{name}"


@dataclass(frozen=True, slots=True)
class Message:
    stream: str
    id: str
    job: Job


def encode(job: Job) -> dict[str, str]:
    return {"job": json.dumps(to_snapshot(job), separators=(",", ":"))}


def decode(stream: str, message_id: str, fields: dict[str, str]) -> Message:
    return Message(stream, message_id, from_snapshot(json.loads(fields["job"])))


def _is_nogroup(e: ResponseError) -> bool:
    return str(e).startswith("NOGROUP")


class Streams:
    def __init__(self, client: aioredis.Redis, keys: StreamKeys) -> None:
        self.client = client
        self.keys = keys
        self._known: set[str] = set()

    async def ensure_groups(self, streams: Iterable[str]) -> None:
        """Create the stream and its group if either is missing (idempotent)."""
        async with self.client.pipeline(transaction=False) as pipe:
            names = list(streams)
            for name in names:
                pipe.xgroup_create(name, GROUP, id="0", mkstream=True)
            results = await pipe.execute(raise_on_error=False)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
            self._known.add(name)

    async def publish(self, jobs: Sequence[Job]) -> list[str]:
        """XADD one message per job, pipelined in one round trip."""
        if not jobs:
            return []
        streams = {self.keys.stream(j.type, j.priority) for j in jobs}
        if not streams <= self._known:
            await self.ensure_groups(streams - self._known)
        async with self.client.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.xadd(self.keys.stream(job.type, job.priority), encode(job))  # type: ignore[arg-type]
            ids: list[Any] = await pipe.execute()
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def read(
        self, consumer: str, streams: Sequence[str], count: int, block_ms: int | None
    ) -> list[Message]:
        """New messages for this consumer; recreates lost groups and retries once."""
        if not streams or count <= 0:
            return []
        for _ in range(2):
            try:
                reply = await self.client.xreadgroup(
                    GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
                )
            except ResponseError as e:
                if not _is_nogroup(e):
                    raise
                await self.ensure_groups(streams)
                continue
            return _messages(reply)
        return []

    async def ack(self, messages: Sequence[Message]) -> None:
        """Acknowledge and delete, so finished messages do not pile up in memory."""
        if not messages:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for m in messages:
                pipe.xack(m.stream, GROUP, m.id)
                pipe.xdel(m.stream, m.id)
            await pipe.execute(raise_on_error=False)

    async def touch(self, consumer: str, messages: Sequence[Message]) -> None:
        """Reset the idle time of messages still being worked on (a lease renewal)."""
        by_stream: dict[str, list[str]] = {}
        for m in messages:
            by_stream.setdefault(m.stream, []).append(m.id)
        if not by_stream:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xclaim(stream, GROUP, consumer, 0, ids, justid=True)  # type: ignore[arg-type]
            await pipe.execute(raise_on_error=False)

    async def claim_idle(
        self, consumer: str, streams: Sequence[str], min_idle_ms: int, count: int = 100
    ) -> list[Message]:
        """Messages whose consumer went quiet for `min_idle_ms`, now owned by `consumer`."""
        claimed: list[Message] = []
        for stream in streams:
            try:
                reply = await self.client.xautoclaim(
                    stream, GROUP, consumer, min_idle_ms, "0-0", count=count
                )
            except ResponseError as e:
                if _is_nogroup(e):
                    continue
                raise
            for message_id, fields in reply[1]:
                if fields:
                    claimed.append(decode(stream, _text(message_id), _fields(fields)))
        return claimed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in dict(raw).items()}


def _messages(reply: Any) -> list[Message]:
    out: list[Message] = []
    if not reply:
        return out
    items = reply.items() if isinstance(reply, dict) else reply
    for stream, entries in items:
        name = _text(stream)
        for message_id, fields in entries:
            if fields:
                out.append(decode(name, _text(message_id), _fields(fields)))
    return out
