"""`jobledger migrate` creates a missing database and is safe to run again."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import PG_SERVER

JOBLEDGER = str(Path(sys.executable).with_name("jobledger"))


@pytest.fixture
def missing_database() -> Iterator[str]:
    name = f"jl_m_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def migrate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JOBLEDGER, "migrate"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_migrate_creates_a_missing_database_and_is_safe_to_repeat(
    env: dict[str, str], missing_database: str
) -> None:
    env = {**env, "DATABASE_URL": f"{PG_SERVER}/{missing_database}"}
    first = migrate(env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "created database and tables"
    second = migrate(env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "tables are up to date"
    with psycopg.connect(f"{PG_SERVER}/{missing_database}") as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables")}
    assert {"jobledger_events", "jl_jobs", "jl_quota", "jl_schedule_ticks"} <= tables
