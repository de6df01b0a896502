"""The projector's sub-commands: `jobledger projector` and `jobledger rebuild`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ledger import Settings


def add_parsers(sub: Any) -> None:
    """Add this area's sub-commands to the `jobledger` parser."""
    p = sub.add_parser(
        "projector",
        help="keep the job-status views up to date (one active instance, the others stand by)",
    )
    p.add_argument("--batch-size", type=int, default=5000, help="most events per transaction")
    p = sub.add_parser(
        "rebuild", help="drop the projection tables and rebuild them from the ledger"
    )
    p.add_argument("--batch-size", type=int, default=50_000, help="events per transaction")


def projector(args: argparse.Namespace, settings: Settings) -> int:
    """Follow the ledger until SIGTERM or Ctrl-C; exits 0."""
    import anyio

    from jobledger.cli import UsageError

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    anyio.run(_serve, settings, args.batch_size)
    return 0


async def _serve(settings: Settings, batch_size: int) -> None:

    from jobledger.runtime import settle_heap
    from jobledger.signals import until_signalled
    from jobledger.wiring import make_ledger
    from projections import Projector

    ledger = make_ledger(settings)
    try:
        async with Projector(
            ledger,
            settings.database_url,
            page_size=min(1000, batch_size),
            batch_size=batch_size,
        ) as p:
            settle_heap()
            await until_signalled(p.run, lambda _signum: p.stop())
    finally:
        ledger.close()


def rebuild(args: argparse.Namespace, settings: Settings) -> int:
    """Drop and rebuild every view from the ledger, with a progress bar and the rate."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from jobledger.cli import UsageError
    from jobledger.wiring import make_ledger
    from projections import rebuild_views

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    console = Console(stderr=True)
    ledger = make_ledger(settings)
    try:
        with Progress(
            TextColumn("rebuilding views"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("log position"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("rebuild", total=ledger.max_position() or 1)

            def progress(position: int, head: int) -> None:
                bar.update(task, completed=position, total=max(head, 1))

            report = rebuild_views(
                ledger, settings.database_url, batch_size=args.batch_size, progress=progress
            )
            bar.update(task, completed=max(report.position, 1), total=max(report.position, 1))
    finally:
        ledger.close()
    print(
        f"rebuilt the views from {report.events} events in {report.seconds:.2f} s "
        f"({report.rate:,.0f} events/s; {report.cpu_rate:,.0f} per CPU-second of this process), "
        f"up to log position {report.position}"
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "projector": projector,
    "rebuild": rebuild,
}


def migrate(settings: Settings) -> None:
    """Create the projection views and their tracking row; safe to repeat."""
    import psycopg

    from projections import create_views

    with psycopg.connect(settings.database_url) as conn:
        create_views(conn)
