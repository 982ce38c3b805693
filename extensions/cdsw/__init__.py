"""Cloudera's legacy `cdsw` module, for model code and scripts written for Cloudera ML.

    import cdsw

    @cdsw.model_metrics
    def predict(args):
        cdsw.track_metric("input", args)
        return {"label": 1}

    cdsw.call_model(access_key, {"x": 1})["response"]["prediction"]
    cdsw.read_metrics(model_deployment_crn=crn)["metrics"]

Everything here is the workbench's own implementation (`workbench.metrics`, `workbench.models`)
under Cloudera's names and argument names (../shared/CML-COMPAT.md in the repository).
"""

from workbench.metrics import (
    model_metrics,
    read_metrics,
    track_aggregate_metrics,
    track_delayed_metrics,
    track_metric,
)
from workbench.models import call_model

__all__ = [
    "call_model",
    "model_metrics",
    "read_metrics",
    "track_aggregate_metrics",
    "track_delayed_metrics",
    "track_metric",
]
