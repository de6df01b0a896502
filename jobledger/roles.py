"""The long-running roles and their sub-commands, gathered from one module per area.

Each area module (`role_workers`, `role_projector`, `role_api`, `role_scheduler`)
exposes `add_parsers(sub)`, `COMMANDS` and `migrate(settings)`; this module only
gathers them, so areas never edit each other's code.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ledger import Settings

Command = Callable[[argparse.Namespace, Settings], int]


def _areas() -> list[ModuleType]:
    from jobledger import role_api, role_projector, role_scheduler, role_workers

    return [role_workers, role_projector, role_api, role_scheduler]


class _Commands(dict[str, Command]):
    def __missing__(self, key: str) -> Command:
        for area in _areas():
            if key in area.COMMANDS:
                return area.COMMANDS[key]  # type: ignore[no-any-return]
        raise KeyError(key)


COMMANDS: dict[str, Command] = _Commands()


def add_parsers(sub: Any) -> None:
    for area in _areas():
        area.add_parsers(sub)


def migrate(settings: Settings) -> None:
    """Create the tables of every area (the ledger's own are made by `migrate`)."""
    for area in _areas():
        area.migrate(settings)
