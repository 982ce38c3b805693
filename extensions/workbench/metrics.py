"""Model metrics: Cloudera's `model_metrics` decorator and the metrics REST calls.

In a deployed model (docs/models.md) the model server opens a *prediction context* around each
call of the function: the prediction's uuid and an empty dict of metrics. `track_metric(key,
value)` adds to that dict; when the function is decorated with `model_metrics`, the server keeps
the record `[uuid, start_ms, end_ms, metrics]` and sends it to the control plane, and the
decorated function returns `{"uuid": <the prediction's uuid>, "prediction": <its result>}`.

    from workbench.metrics import model_metrics, track_metric

    @model_metrics
    def predict(args):
        label = int(model.predict([args["features"]])[0])
        track_metric("label", label)
        return label

Called directly in a session (no model server), the decorated function makes a new uuid for
each call and appends the record to `session_records` (in memory only).

`track_delayed_metrics`, `track_aggregate_metrics` and `read_metrics` call the workbench API
with the SDK's default client (`WORKBENCH_API_URL`, `WORKBENCH_TOKEN`).
"""

import contextvars
import functools
import inspect
import os
import time
import uuid

__all__ = [
    "Metrics",
    "PredictionContext",
    "model_metrics",
    "prediction_context",
    "read_metrics",
    "session_records",
    "track_aggregate_metrics",
    "track_delayed_metrics",
    "track_metric",
]


class PredictionContext:
    """One call of a model function: its prediction uuid and the metrics tracked so far.

    `tracked` becomes True when the call goes through a `model_metrics`-decorated function;
    only then does the model server keep the record.
    """

    __slots__ = ("metrics", "tracked", "uuid")

    def __init__(self, prediction_uuid):
        self.uuid = prediction_uuid
        self.metrics = {}
        self.tracked = False


#: The context of the call being served; set by the model server (and by the decorator in a
#: session) before the function runs.
prediction_context = contextvars.ContextVar("workbench_prediction_context")

#: Records of decorated calls made in a session (no model server): dicts with
#: `predictionUuid`, `startTimeStampMs`, `endTimeStampMs` and `metrics`.
session_records = []


def model_metrics(func):
    """Decorate a model function so that its calls keep the metrics `track_metric` adds.

    The decorated function returns `{"uuid": <prediction uuid>, "prediction": <result>}`
    (Cloudera's `@cdsw.model_metrics`). `async def` functions are supported.
    """
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args, **kwargs):
            call = prediction_context.get(None)
            if call is None:
                return await _session_call_async(func, args, kwargs)
            call.tracked = True
            return {"uuid": call.uuid, "prediction": await func(*args, **kwargs)}

        async_wrapper.__workbench_metrics__ = True
        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        call = prediction_context.get(None)
        if call is None:
            return _session_call(func, args, kwargs)
        call.tracked = True
        return {"uuid": call.uuid, "prediction": func(*args, **kwargs)}

    wrapper.__workbench_metrics__ = True
    return wrapper


def _session_call(func, args, kwargs):
    call = PredictionContext(str(uuid.uuid4()))
    call.tracked = True
    token = prediction_context.set(call)
    start = time.time_ns() // 1_000_000
    try:
        result = func(*args, **kwargs)
    finally:
        prediction_context.reset(token)
    _keep_session_record(call, start)
    return {"uuid": call.uuid, "prediction": result}


async def _session_call_async(func, args, kwargs):
    call = PredictionContext(str(uuid.uuid4()))
    call.tracked = True
    token = prediction_context.set(call)
    start = time.time_ns() // 1_000_000
    try:
        result = await func(*args, **kwargs)
    finally:
        prediction_context.reset(token)
    _keep_session_record(call, start)
    return {"uuid": call.uuid, "prediction": result}


def _keep_session_record(call, start):
    session_records.append(
        {
            "predictionUuid": call.uuid,
            "startTimeStampMs": start,
            "endTimeStampMs": time.time_ns() // 1_000_000,
            "metrics": call.metrics,
        }
    )


_SCALARS = (str, int, float, bool, type(None))


def track_metric(key, value):
    """Attach `key: value` to the prediction being computed.

    Must be called while a function decorated with `model_metrics` runs. `value` is a JSON
    value: a number, string, boolean, None, or a list or dict of those (numpy scalars and
    arrays are converted).
    """
    call = prediction_context.get(None)
    if call is None or not call.tracked:
        raise ValueError(
            "track_metric must be called inside a function decorated with model_metrics"
            " (@cdsw.model_metrics, @cml_model(metrics=True) or @workbench.metrics.model_metrics)"
        )
    if type(key) is not str:
        raise TypeError(f"metric keys are strings, not {type(key).__name__}")
    if not isinstance(value, _SCALARS):
        value = _json_value(key, value)
    call.metrics[key] = value


def _json_value(key, value):
    """`value` as plain JSON data; TypeError naming `key` if it cannot be."""
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy scalar or array
        value = value.tolist()
        if isinstance(value, _SCALARS):
            return value
    if not isinstance(value, list | tuple | dict):
        raise TypeError(
            f"metric {key!r}: {type(value).__name__} is not a JSON value (use numbers, strings,"
            " lists or dicts)"
        )
    import orjson

    try:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
    except TypeError as exc:
        raise TypeError(f"metric {key!r} is not JSON data: {exc}") from None


def _default_client():
    from . import default_client

    return default_client()


def track_delayed_metrics(metrics, prediction_uuid):
    """Add `metrics` (a dict) to the record of an earlier prediction, e.g. its ground truth."""
    return _default_client().metrics.track_delayed_metrics(metrics, prediction_uuid)


def track_aggregate_metrics(
    metrics, start_timestamp_ms, end_timestamp_ms, model_deployment_crn=None
):
    """Store `metrics` (a dict) for a time window of a deployment, with no prediction.

    `model_deployment_crn` defaults to `CDSW_MODEL_DEPLOYMENT_CRN` (set in model replicas).
    """
    return _default_client().metrics.track_aggregate_metrics(
        metrics, start_timestamp_ms, end_timestamp_ms, model_deployment_crn
    )


def read_metrics(
    model_deployment_crn=None,
    start_timestamp_ms=None,
    end_timestamp_ms=None,
    model_crn=None,
    model_build_crn=None,
):
    """The stored metrics records, `{"metrics": [record, …]}`, filtered by the given arguments.

    Each record has `startTimeStampMs`, `endTimeStampMs`, `metrics` and, for predictions, the
    prediction's uuid. The window defaults to everything up to now.
    """
    return _default_client().metrics.read_metrics(
        model_deployment_crn, start_timestamp_ms, end_timestamp_ms, model_crn, model_build_crn
    )


class Metrics:
    """Model metrics API of a Client (`client.metrics`)."""

    def __init__(self, client):
        self._client = client

    def track_delayed_metrics(self, metrics, prediction_uuid):
        """`POST /model-metrics/delayed`: merge `metrics` into a prediction's record."""
        if not isinstance(metrics, dict):
            raise TypeError("metrics must be a dict")
        return self._client.request(
            "POST",
            "model-metrics/delayed",
            json={"predictionUuid": str(prediction_uuid), "metrics": metrics},
        )

    def track_aggregate_metrics(
        self, metrics, start_timestamp_ms, end_timestamp_ms, model_deployment_crn=None
    ):
        """`POST /model-metrics/aggregate`: a record for a time window of a deployment."""
        if not isinstance(metrics, dict):
            raise TypeError("metrics must be a dict")
        crn = model_deployment_crn or os.environ.get("CDSW_MODEL_DEPLOYMENT_CRN")
        if not crn:
            raise ValueError(
                "model_deployment_crn is required (CDSW_MODEL_DEPLOYMENT_CRN is not set)"
            )
        return self._client.request(
            "POST",
            "model-metrics/aggregate",
            json={
                "deploymentCrn": crn,
                "startTimeStampMs": int(start_timestamp_ms),
                "endTimeStampMs": int(end_timestamp_ms),
                "metrics": metrics,
            },
        )

    def read_metrics(
        self,
        model_deployment_crn=None,
        start_timestamp_ms=None,
        end_timestamp_ms=None,
        model_crn=None,
        model_build_crn=None,
    ):
        """`GET /model-metrics`: `{"metrics": [record, …]}`, every record (read page by page)."""
        params = {
            "deploymentCrn": model_deployment_crn,
            "modelCrn": model_crn,
            "buildCrn": model_build_crn,
            "startTimeStampMs": None if start_timestamp_ms is None else int(start_timestamp_ms),
            "endTimeStampMs": None if end_timestamp_ms is None else int(end_timestamp_ms),
        }
        given = {k: v for k, v in params.items() if v is not None}
        return {"metrics": self._client.list("model-metrics", "metrics", given)}
