"""Cloudera ML's current modules: `cml.models_v1` and `cml.metrics_v1`, on the workbench.

import cml.models_v1 as models
import cml.metrics_v1 as metrics

@models.cml_model(metrics=True)
def predict(args):
    metrics.track_metric("input", args)
    return {"label": 1}
"""
