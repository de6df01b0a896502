"""The projector's sub-commands: `jobledger projector` and `jobledger rebuild`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ledger import Settings

COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {}


def add_parsers(sub: Any) -> None:
    """Add this area's sub-commands to the `jobledger` parser."""


def migrate(settings: Settings) -> None:
    """Create the projection views and their tracking row; safe to repeat."""
    import psycopg

    from projections import create_views

    with psycopg.connect(settings.database_url) as conn:
        create_views(conn)
