"""The long-running roles (`up`, `worker`, `api`, ...) and their tables.

Each role package adds its sub-commands here; `migrate` creates their tables.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ledger import Settings

COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {}


def add_parsers(sub: Any) -> None:
    """Sub-commands of the roles."""


def migrate(settings: Settings) -> None:
    """Create the tables of the projections and the API (the ledger's are done)."""
