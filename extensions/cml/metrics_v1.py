"""`cml.metrics_v1`: model metrics under Cloudera ML's current module name."""

from workbench.metrics import (
    read_metrics,
    track_aggregate_metrics,
    track_delayed_metrics,
    track_metric,
)

__all__ = ["read_metrics", "track_aggregate_metrics", "track_delayed_metrics", "track_metric"]
