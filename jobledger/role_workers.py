"""Sub-commands of this area (filled in by the area's owner)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ledger import Settings

COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {}


def add_parsers(sub: Any) -> None:
    """Add this area's sub-commands to the `jobledger` parser."""


def migrate(settings: Settings) -> None:
    """Create this area's tables; safe to repeat."""
