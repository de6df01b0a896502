"""Ledger append rate: events/s with one job per transaction, and with batches of 1,000.

Part of `jobledger bench`; alone, `python -m jobledger.bench.ledger` prints
JSON. Both run it on a scratch database (see `jobledger.bench.scratch`).
"""

from __future__ import annotations

import json
import time

from jobledger.bench.scratch import scratch_settings
from jobledger.wiring import make_ledger
from ledger import JobSpec, Settings, registry

SINGLE_JOBS = 300
BATCH_JOBS = 1_000
BATCHES = 3
EVENTS_PER_JOB = 2  # submitted, queued


def _spec(org: str) -> JobSpec:
    echo = registry.get("diag.echo")
    return JobSpec(org=org, job_type=echo.name, payload=echo.validate_payload({}))


def run(
    settings: Settings,
    *,
    single_jobs: int = SINGLE_JOBS,
    batch_jobs: int = BATCH_JOBS,
    batches: int = BATCHES,
) -> dict[str, float]:
    """Append rates on `settings`' database (give it a scratch one)."""
    ledger = make_ledger(settings)
    try:
        ledger.submit(_spec("warmup"))  # connections open, statements prepared
        started = time.perf_counter()
        for _ in range(single_jobs):
            ledger.submit(_spec("bench"))
        single_s = time.perf_counter() - started

        started = time.perf_counter()
        for _ in range(batches):
            ledger.submit_many([(_spec("bench"), None) for _ in range(batch_jobs)])
        batch_s = time.perf_counter() - started
    finally:
        ledger.close()
    return {
        "ledger_single_events_s": round(single_jobs * EVENTS_PER_JOB / single_s, 1),
        "ledger_batch_events_s": round(batches * batch_jobs * EVENTS_PER_JOB / batch_s, 1),
    }


def main() -> None:
    from jobledger.wiring import load_job_types, load_settings

    settings = load_settings()
    load_job_types(settings)
    with scratch_settings(settings, "lbench") as scratch:
        print(json.dumps(run(scratch)))


if __name__ == "__main__":
    main()
