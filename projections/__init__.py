"""Projections: the job-status views folded from the ledger, their projector and reads.

Other packages use what is named here.
"""

from projections.errors import InvalidCursor, PositionMoved, ProjectionError
from projections.queries import Histogram, JobQueries, Lag, MetricsSnapshot
from projections.views import create as create_views

__all__ = [
    "Histogram",
    "InvalidCursor",
    "JobQueries",
    "Lag",
    "MetricsSnapshot",
    "PositionMoved",
    "ProjectionError",
    "create_views",
]
