"""A fresh, migrated database and Redis prefix for a benchmark, dropped afterwards.

Figures must never depend on what a database already holds, so every part of
`jobledger bench` runs on a scratch database beside the one DATABASE_URL names.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from ledger import Settings, ensure_database

NO_QUOTA = 10**9  # the quota check still runs in every append; it just never refuses


@contextmanager
def scratch_settings(settings: Settings, tag: str = "bench") -> Iterator[Settings]:
    from jobledger import roles
    from jobledger.wiring import make_ledger

    name = f"jl_{tag}_{uuid.uuid4().hex[:8]}"
    url = urlsplit(settings.database_url)._replace(path=f"/{name}").geturl()
    scratch = settings.model_copy(
        update={
            "database_url": url,
            "redis_prefix": f"jl{tag}{uuid.uuid4().hex[:8]}",
            "active_limit": NO_QUOTA,
        }
    )
    ensure_database(url)
    try:
        make_ledger(scratch, create_tables=True).close()
        roles.migrate(scratch)
        yield scratch
    finally:
        _delete_prefix(scratch)  # the direct publishes left messages nobody reads
        admin = urlsplit(url)._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


def _delete_prefix(settings: Settings) -> None:
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(match="{" + settings.redis_prefix + "}:*", count=10_000))
        for start in range(0, len(keys), 10_000):
            client.delete(*keys[start : start + 10_000])
    except redis.RedisError:
        pass  # nothing to tidy on a Redis that is gone
    finally:
        client.close()
