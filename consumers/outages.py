"""What an outage of PostgreSQL or Redis raises, and how it is told in a log line.

A part that meets one of these waits and tries again: the state it needs is
in the ledger, and nothing is lost by waiting. It says so in one line per
outage, not with a traceback every time it tries.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ledger import DATABASE_DOWN

REDIS_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
OUTAGES: tuple[type[Exception], ...] = (*DATABASE_DOWN, *REDIS_DOWN)


def is_outage(error: BaseException) -> bool:
    """Whether the error (every one of a group's) is an outage."""
    if isinstance(error, BaseExceptionGroup):
        return all(is_outage(inner) for inner in error.exceptions)
    return isinstance(error, OUTAGES)


def first_line(error: BaseException) -> str:
    """The error in one line (psycopg's messages run over several; a group names its first)."""
    if isinstance(error, BaseExceptionGroup) and error.exceptions:
        return first_line(error.exceptions[0])
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
