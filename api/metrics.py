"""Prometheus text from the projections' totals: a collector over one snapshot.

The totals live in the views (the projector counts every event once), so any
API process answers the same figures and a restart loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from projections import Lag, MetricsSnapshot

COUNTERS = (
    ("submitted", "Jobs submitted"),
    ("started", "Attempts started"),
    ("succeeded", "Jobs succeeded"),
    ("failed", "Jobs that reached failed"),
    ("attempts_failed", "Attempts that failed (error, timeout, lost worker, shutdown)"),
)


class SnapshotCollector(Collector):
    def __init__(self, snapshot: MetricsSnapshot, lag: Lag) -> None:
        self.snapshot = snapshot
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        for name, doc in COUNTERS:
            family = CounterMetricFamily(f"jobledger_jobs_{name}", doc, labels=["type"])
            for job_type, n in sorted(getattr(self.snapshot, name).items()):
                family.add_metric([job_type], n)
            yield family
        durations = HistogramMetricFamily(
            "jobledger_attempt_duration_seconds", "Attempt durations", labels=["type"]
        )
        for job_type, hist in sorted(self.snapshot.durations.items()):
            durations.add_metric([job_type], hist.prometheus_buckets(), hist.sum_s)
        yield durations
        depth = GaugeMetricFamily("jobledger_queue_depth", "Jobs queued now", labels=["type"])
        for job_type, n in sorted(self.snapshot.queue_depth.items()):
            depth.add_metric([job_type], n)
        yield depth
        yield GaugeMetricFamily(
            "jobledger_projection_lag_events",
            "Ledger events not yet in the views",
            value=self.lag.events,
        )
        yield GaugeMetricFamily(
            "jobledger_projection_lag_seconds",
            "Age of the oldest event not yet in the views",
            value=self.lag.seconds,
        )


def render(snapshot: MetricsSnapshot, lag: Lag) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, lag))
    return generate_latest(registry)
