"""`jobledger bench`: every benchmark of the project, each on a scratch database.

Workers (throughput, latency, concurrency), the projection's rebuild rate on
the ledger the worker runs left behind, the HTTP API under load, and the
ledger's raw append rates. `--json` prints one object; the keys the peers
comparison reads (`throughput_jobs_s`, `latency_p50_ms`, `latency_p99_ms`,
`sleep_wall_s`) are among them.
"""

from __future__ import annotations

import json
from typing import Any

from jobledger.bench import api, ledger, workers
from jobledger.bench.scratch import scratch_settings
from jobledger.wiring import make_ledger
from ledger import Settings


def rebuild_rate(settings: Settings) -> dict[str, float]:
    """Drop the views of `settings`' database and rebuild them from its ledger."""
    from projections import rebuild_views

    report = rebuild_views(make_ledger(settings), settings.database_url)
    return {"rebuild_events": report.events, "rebuild_events_s": round(report.rate, 1)}


def compile_packages() -> None:
    """Byte-compile the project's packages, as a non-editable install would have.

    An editable install leaves our modules as source, and where
    PYTHONDONTWRITEBYTECODE is set nothing ever caches their bytecode: every
    role the bench starts would compile them again, a few hundred ms of its
    start-up that the peers' installed libraries never pay.
    """
    import compileall
    import importlib.util
    from pathlib import Path

    for package in ("ledger", "consumers", "projections", "api", "jobledger"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            compileall.compile_dir(Path(spec.origin).parent, quiet=2)


def run(settings: Settings) -> dict[str, Any]:
    compile_packages()
    with scratch_settings(settings) as scratch:
        figures: dict[str, Any] = workers.run(scratch)
        figures.update(rebuild_rate(scratch))
    with scratch_settings(settings, "abench") as scratch:
        figures.update(api.run(scratch))
    with scratch_settings(settings, "lbench") as scratch:
        figures.update(ledger.run(scratch))
    return {**figures, "config": workers.configuration(settings)}


def main(settings: Settings, *, as_json: bool) -> int:
    figures = run(settings)
    if as_json:
        print(json.dumps(figures))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("figure", "value", title="jobledger bench")
    for name, value in figures.items():
        if name != "config":
            table.add_row(name, f"{value:,}" if isinstance(value, int | float) else str(value))
    config = Table("configuration", "value")
    for name, value in figures["config"].items():
        config.add_row(name, str(value))
    console = Console()
    console.print(table)
    console.print(config)
    return 0
