"""`jobledger bench`: throughput, latency and concurrency of one worker process."""

from __future__ import annotations

from ledger import Settings


def main(settings: Settings, *, as_json: bool) -> int:
    raise NotImplementedError("jobledger bench is being written")
