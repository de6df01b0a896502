"""Projections: the job-status views folded from the ledger, their projector and reads.

Other packages use what is named here.
"""

from projections.errors import InvalidCursor, PositionMoved, ProjectionError
from projections.queries import Histogram, JobQueries, Lag, MetricsSnapshot
from projections.runner import Follower, Projector, RebuildReport
from projections.runner import rebuild as rebuild_views
from projections.views import create as create_views

__all__ = [
    "Follower",
    "Histogram",
    "InvalidCursor",
    "JobQueries",
    "Lag",
    "MetricsSnapshot",
    "PositionMoved",
    "ProjectionError",
    "Projector",
    "RebuildReport",
    "create_views",
    "rebuild_views",
]
