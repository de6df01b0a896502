"""The projections' errors.

ProjectionError
├── InvalidCursor (also a ValueError): a list cursor this API did not hand out
└── PositionMoved: another writer moved the tracking position first
"""

from __future__ import annotations


class ProjectionError(Exception):
    """Root of the projections' errors."""


class InvalidCursor(ProjectionError, ValueError):
    def __init__(self, cursor: str) -> None:
        super().__init__(f"invalid cursor {cursor[:40]!r}")
        self.cursor = cursor


class PositionMoved(ProjectionError):
    """The batch was computed from a position that is no longer current."""

    def __init__(self, expected: int, found: int) -> None:
        super().__init__(f"tracking position is {found}, expected {expected}")
        self.expected = expected
        self.found = found
