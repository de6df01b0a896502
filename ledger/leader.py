"""One active instance among many: a PostgreSQL advisory lock held on its own connection.

Dispatchers, timers and projectors may run several times for availability;
the one holding the lock works, the others stand by and take over within
`retry_s` when its process (and so its connection) dies.
"""

from __future__ import annotations

import hashlib
from types import TracebackType

import anyio
import psycopg


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for a role name."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Leadership:
    """`async with Leadership(url, "dispatcher"): ...` runs the body only while leader."""

    def __init__(self, database_url: str, name: str, *, retry_s: float = 1.0) -> None:
        self.database_url = database_url
        self.key = lock_key(name)
        self.retry_s = retry_s
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def acquire(self) -> None:
        """Wait until this process holds the lock."""
        while True:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True
                )
            row = await (
                await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            ).fetchone()
            if row and row[0]:
                return
            await anyio.sleep(self.retry_s)

    async def still_held(self) -> bool:
        """False once the lock's connection is gone (then another instance may lead)."""
        if self._conn is None or self._conn.closed:
            return False
        try:
            await self._conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    async def release(self) -> None:
        if self._conn is not None and not self._conn.closed:
            await self._conn.close()
        self._conn = None

    async def __aenter__(self) -> Leadership:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.release()
