"""Fixtures shared by every tier: a fresh database per test, cloned from a template.

The template is migrated once per session; `CREATE DATABASE ... TEMPLATE` then
copies it in milliseconds, so tests never share rows. Redis isolation is by key
prefix: every test gets its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from psycopg import sql

from ledger import Ledger, Settings, registry

PG_SERVER = os.environ.get("JOBLEDGER_TEST_PG", "postgresql://root@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("JOBLEDGER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True)


def _drop(name: str) -> None:
    with _admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = f"jl_tpl_{uuid.uuid4().hex[:12]}"
    url = f"{PG_SERVER}/{name}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    settings = Settings(database_url=url, redis_url=REDIS_SERVER)
    ledger = Ledger(url, registry=registry, create_tables=True)
    ledger.close()
    from jobledger import roles

    roles.migrate(settings)
    yield name
    _drop(name)


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    name = f"jl_t_{uuid.uuid4().hex[:16]}"
    with _admin() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    yield f"{PG_SERVER}/{name}"
    _drop(name)


def fresh_prefix() -> str:
    return f"jlt{uuid.uuid4().hex[:10]}"


def delete_prefix(prefix: str) -> None:
    """Delete a test's keys from the shared Redis, so runs leave nothing behind."""
    client = redis.Redis.from_url(REDIS_SERVER)
    try:
        keys = list(client.scan_iter(match=f"{{{prefix}}}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # a test that stopped Redis on purpose: nothing left to delete
    finally:
        client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix; its keys are deleted afterwards."""
    prefix = fresh_prefix()
    yield prefix
    delete_prefix(prefix)


@pytest.fixture
def settings(database_url: str, redis_prefix: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=REDIS_SERVER,
        redis_prefix=redis_prefix,
        log_format="json",
    )


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    """A ledger without the direct publish: what reaches a stream is what the test's part sent.

    Tests of the direct path ask for `publishing_ledger`; subprocesses publish as in production.
    """
    from jobledger.wiring import make_ledger

    ledger = make_ledger(settings, publish=False)
    yield ledger
    ledger.close()


@pytest.fixture
def publishing_ledger(settings: Settings) -> Iterator[Ledger]:
    """A ledger as the composition root makes it: each append publishes the jobs it queued."""
    from jobledger.wiring import make_ledger

    ledger = make_ledger(settings)
    yield ledger
    ledger.close()


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """The environment a subprocess of this test runs with (its own db and prefix)."""
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JOBLEDGER_REDIS_PREFIX": settings.redis_prefix,
        "JOBLEDGER_LOG_FORMAT": "json",
    }
