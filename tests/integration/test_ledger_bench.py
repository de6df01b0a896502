"""The ledger benchmark runs on a scratch database, and the scratch database goes away."""

from __future__ import annotations

import psycopg

from jobledger.bench import ledger as bench
from jobledger.bench.scratch import scratch_settings
from ledger import Settings
from tests.conftest import PG_SERVER


def databases() -> set[str]:
    with psycopg.connect(f"{PG_SERVER}/postgres") as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def test_the_benchmark_reports_both_append_rates_on_a_scratch_database_it_drops(
    settings: Settings,
) -> None:
    with scratch_settings(settings, "lbench") as scratch:
        name = scratch.database_url.rsplit("/", 1)[1]
        assert name in databases()
        figures = bench.run(scratch, single_jobs=10, batch_jobs=100, batches=1)
    assert set(figures) == {"ledger_single_events_s", "ledger_batch_events_s"}
    assert all(value > 0 for value in figures.values())
    assert name not in databases()
