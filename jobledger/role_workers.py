"""Sub-commands of this area (filled in by the area's owner)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ledger import Settings


def add_parsers(sub: Any) -> None:
    """Add this area's sub-commands to the `jobledger` parser."""
    sub.add_parser("worker", help="run attempts of queued jobs (one worker process)")
    p = sub.add_parser("bench", help="the project's benchmark on a fresh database")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from jobledger import role_control  # dispatcher, reconcile, up (engineer B1)

    role_control.add_parsers(sub)
    COMMANDS.update(role_control.COMMANDS)


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """One worker process until SIGTERM/Ctrl-C, then a graceful drain; exits 0."""
    import anyio

    from jobledger.worker_process import serve

    anyio.run(serve, settings)
    return 0


def bench(args: argparse.Namespace, settings: Settings) -> int:
    from jobledger.bench.suite import main

    return main(settings, as_json=args.json)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "worker": worker,
    "bench": bench,
}


def migrate(settings: Settings) -> None:
    """Create this area's tables; safe to repeat."""
    from jobledger import role_control

    role_control.migrate(settings)
