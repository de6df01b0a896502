"""The ledger benchmark runs on a scratch database and leaves nothing behind."""

from __future__ import annotations

import psycopg

from jobledger.bench import ledger as bench
from ledger import Settings
from tests.conftest import PG_SERVER


def databases() -> set[str]:
    with psycopg.connect(f"{PG_SERVER}/postgres") as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def test_the_benchmark_reports_both_append_rates_and_drops_its_database(
    settings: Settings,
) -> None:
    figures = bench.run(settings, single_jobs=10, batch_jobs=100, batches=1)
    assert set(figures) == {"ledger_single_events_s", "ledger_batch_events_s"}
    assert all(value > 0 for value in figures.values())
    ours = settings.database_url.rsplit("/", 1)[1] + "_lbench_"  # the test's database is unique
    assert not [name for name in databases() if name.startswith(ours)]
