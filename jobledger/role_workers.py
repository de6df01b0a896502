"""Sub-commands of this area (filled in by the area's owner)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ledger import Settings

COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {}


def add_parsers(sub: Any) -> None:
    """Add this area's sub-commands to the `jobledger` parser."""
    from jobledger import role_control  # dispatcher, reconcile, up (engineer B1)

    role_control.add_parsers(sub)
    COMMANDS.update(role_control.COMMANDS)


def migrate(settings: Settings) -> None:
    """Create this area's tables; safe to repeat."""
    from jobledger import role_control

    role_control.migrate(settings)
