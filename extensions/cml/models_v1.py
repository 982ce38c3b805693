"""`cml.models_v1`: the `cml_model` decorator for a model's function."""

from workbench.metrics import model_metrics
from workbench.models import call_model

__all__ = ["call_model", "cml_model"]


def cml_model(func=None, *, metrics=False):
    """Mark a function as a model's function.

    `@cml_model` returns the function unchanged; `@cml_model(metrics=True)` is the metrics
    decorator (`workbench.metrics.model_metrics`): the function's result becomes
    `{"uuid": …, "prediction": …}` and `track_metric` records into the prediction.
    """

    def decorate(f):
        return model_metrics(f) if metrics else f

    if func is None:
        return decorate
    if not callable(func):
        raise TypeError("use @cml_model or @cml_model(metrics=True)")
    return decorate(func)
