"""The SDK's model and metrics API and the Cloudera modules (`cdsw`, `cml.*_v1`).

The decorator and `track_metric` run in-process, as in a session with no model server. The
REST calls go to a tiny HTTP server in this module that answers from a script and records
every request (method, path, query, headers, body), so the tests check what goes on the wire.
"""

import asyncio
import inspect
import json
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest

import cdsw
import cml.metrics_v1
import cml.models_v1
import workbench
from workbench import metrics as wb_metrics
from workbench import models as wb_models

API = "/services/workbench/api/v1"
TOKEN = "sdk-token-91c2"
REPO = Path(__file__).resolve().parents[2]


class FakeWorkbench:
    """Scripted answers per (method, path); each answer is used once, the last one repeats."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self._answers: dict[tuple[str, str], list] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": dict(parse_qsl(url.query)),
                        "auth": self.headers.get("Authorization"),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                answers = fake._answers.get((self.command, url.path))
                if not answers:
                    status, body = 404, {"status": 404, "message": f"no route {url.path}"}
                else:
                    status, body = answers.pop(0) if len(answers) > 1 else answers[0]
                if body is None:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if isinstance(body, str):
                    data, kind = body.encode(), "text/plain"
                else:
                    data, kind = json.dumps(body).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, method: str, path: str, *answers) -> None:
        """Answer `method path` (relative to the API unless absolute) with `(status, body)`s."""
        full = path if path.startswith("/models/") else API + path
        self._answers[(method, full)] = list(answers)

    def sent(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"].removeprefix(API)) for r in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake(monkeypatch):
    server = FakeWorkbench()
    monkeypatch.setenv("WORKBENCH_API_URL", server.url + API)
    monkeypatch.setenv("WORKBENCH_TOKEN", TOKEN)
    monkeypatch.setenv("WORKBENCH_PROJECT", "churn")
    monkeypatch.delenv("CDSW_MODEL_DEPLOYMENT_CRN", raising=False)
    monkeypatch.setattr(wb_models, "_resolved_urls", {})
    monkeypatch.setattr(wb_models.Models, "poll_interval", (0.01, 0.01))
    yield server
    server.close()


# the decorator and track_metric, with no model server


def test_the_decorated_function_returns_a_uuid_and_the_prediction():
    @cdsw.model_metrics
    def predict(args):
        """Doubles."""
        cdsw.track_metric("input", args)
        cdsw.track_metric("probability", np.float32(0.25))
        cdsw.track_metric("scores", np.array([1, 2]))
        cdsw.track_metric("detail", {"tags": ["a", 1], "ok": True})
        return args * 2

    first, second = predict(21), predict(1)
    assert first == {"uuid": first["uuid"], "prediction": 42}
    assert uuid.UUID(first["uuid"]).version == 4
    assert second["uuid"] != first["uuid"]
    assert (predict.__name__, predict.__doc__) == ("predict", "Doubles.")
    record = next(r for r in wb_metrics.session_records if r["predictionUuid"] == first["uuid"])
    assert record["metrics"] == {
        "input": 21,
        "probability": 0.25,
        "scores": [1, 2],
        "detail": {"tags": ["a", 1], "ok": True},
    }
    assert type(record["metrics"]["probability"]) is float
    assert 0 < record["startTimeStampMs"] <= record["endTimeStampMs"]


def test_an_async_function_can_be_decorated():
    @wb_metrics.model_metrics
    async def predict(args):
        wb_metrics.track_metric("input", args)
        await asyncio.sleep(0)
        return args + 1

    result = asyncio.run(predict(1))
    assert result["prediction"] == 2
    assert wb_metrics.session_records[-1]["predictionUuid"] == result["uuid"]
    assert wb_metrics.session_records[-1]["metrics"] == {"input": 1}


def test_metric_values_must_be_json():
    @cdsw.model_metrics
    def predict(args):
        cdsw.track_metric("model", object())

    with pytest.raises(TypeError, match="metric 'model': object is not a JSON value"):
        predict(1)


def test_cml_model_in_both_spellings():
    def plain(args):
        return args

    assert cml.models_v1.cml_model(plain) is plain
    assert cml.models_v1.cml_model()(plain) is plain
    assert cml.models_v1.cml_model(metrics=False)(plain) is plain

    @cml.models_v1.cml_model(metrics=True)
    def tracked(args):
        cml.metrics_v1.track_metric("input", args)
        return args * 3

    result = tracked(2)
    assert result == {"uuid": result["uuid"], "prediction": 6}
    assert wb_metrics.session_records[-1]["metrics"] == {"input": 2}


@pytest.mark.parametrize("track", [cdsw.track_metric, cml.metrics_v1.track_metric])
def test_track_metric_outside_a_decorated_call_raises(track):
    with pytest.raises(ValueError, match="inside a function decorated with model_metrics"):
        track("accuracy", 0.9)

    def undecorated(args):
        track("accuracy", 0.9)

    with pytest.raises(ValueError, match="inside a function decorated with model_metrics"):
        undecorated(1)


# Cloudera's names and argument names (../shared/CML-COMPAT.md)

SIGNATURES = {
    "track_metric": "(key, value)",
    "call_model": "(access_key, payload)",
    "track_delayed_metrics": "(metrics, prediction_uuid)",
    "track_aggregate_metrics": (
        "(metrics, start_timestamp_ms, end_timestamp_ms, model_deployment_crn=None)"
    ),
    "read_metrics": (
        "(model_deployment_crn=None, start_timestamp_ms=None, end_timestamp_ms=None,"
        " model_crn=None, model_build_crn=None)"
    ),
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_cdsw_functions_have_clouderas_signatures(name):
    assert str(inspect.signature(getattr(cdsw, name))) == SIGNATURES[name]


@pytest.mark.parametrize(
    "name", ["track_metric", "track_delayed_metrics", "track_aggregate_metrics", "read_metrics"]
)
def test_cml_metrics_v1_functions_have_clouderas_signatures(name):
    assert str(inspect.signature(getattr(cml.metrics_v1, name))) == SIGNATURES[name]


def test_cdsw_exports_the_decorator():
    assert cdsw.model_metrics is wb_metrics.model_metrics
    assert callable(cml.models_v1.cml_model)


def test_importing_cdsw_needs_no_session_and_creates_no_client():
    code = (
        "import cdsw, cml.models_v1, cml.metrics_v1, workbench, workbench.models as m\n"
        "assert m._http is None and not m._resolved_urls\n"
        "assert workbench._client_for.cache_info().currsize == 0\n"
        "print('ok')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "extensions")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr


# REST calls


def test_track_delayed_metrics_posts_the_ground_truth(fake):
    fake.answer("POST", "/model-metrics/delayed", (204, None))
    assert cdsw.track_delayed_metrics({"actual": 1}, "8d1f6b7e-uuid") is None
    [sent] = fake.requests
    assert (sent["method"], sent["path"], sent["auth"]) == (
        "POST",
        f"{API}/model-metrics/delayed",
        f"token {TOKEN}",
    )
    assert sent["body"] == {"predictionUuid": "8d1f6b7e-uuid", "metrics": {"actual": 1}}


def test_track_aggregate_metrics_names_the_deployment(fake, monkeypatch):
    fake.answer("POST", "/model-metrics/aggregate", (204, None))
    cml.metrics_v1.track_aggregate_metrics({"accuracy": 0.9}, 1000, 2000, "crn:explicit")
    monkeypatch.setenv("CDSW_MODEL_DEPLOYMENT_CRN", "crn:from-env")
    cdsw.track_aggregate_metrics({"accuracy": 0.8}, 3000, 4000)
    assert [r["body"] for r in fake.requests] == [
        {
            "deploymentCrn": "crn:explicit",
            "startTimeStampMs": 1000,
            "endTimeStampMs": 2000,
            "metrics": {"accuracy": 0.9},
        },
        {
            "deploymentCrn": "crn:from-env",
            "startTimeStampMs": 3000,
            "endTimeStampMs": 4000,
            "metrics": {"accuracy": 0.8},
        },
    ]
    monkeypatch.delenv("CDSW_MODEL_DEPLOYMENT_CRN")
    with pytest.raises(ValueError, match="model_deployment_crn is required"):
        cdsw.track_aggregate_metrics({"accuracy": 0.8}, 3000, 4000)


def test_read_metrics_sends_the_given_filters_and_returns_the_answer(fake):
    answer = {
        "metrics": [
            {
                "predictionUuid": "u1",
                "startTimeStampMs": 1,
                "endTimeStampMs": 2,
                "metrics": {"probability": 0.4},
            }
        ]
    }
    fake.answer("GET", "/model-metrics", (200, answer))
    assert cdsw.read_metrics(model_deployment_crn="crn:d", start_timestamp_ms=5) == answer
    cml.metrics_v1.read_metrics(
        model_crn="crn:m", model_build_crn="crn:b", end_timestamp_ms=9, start_timestamp_ms=0
    )
    assert [r["query"] for r in fake.requests] == [
        {"deploymentCrn": "crn:d", "startTimeStampMs": "5"},
        {"modelCrn": "crn:m", "buildCrn": "crn:b", "startTimeStampMs": "0", "endTimeStampMs": "9"},
    ]
    assert fake.requests[0]["auth"] == f"token {TOKEN}"


def test_call_model_resolves_the_key_once_and_returns_the_whole_body(fake):
    model_url = fake.url + "/models/churn/scorer/model"
    fake.answer(
        "POST",
        "/access-keys/resolve",
        (200, {"url": model_url, "project": "churn", "model": "scorer"}),
    )
    body = {"success": True, "response": {"uuid": "u", "prediction": 1}, "uuid": "u"}
    fake.answer("POST", "/models/churn/scorer/model", (200, body))
    assert cdsw.call_model("wbk_k1", {"x": 1}) == body
    assert cdsw.call_model("wbk_k1", {"x": 2})["response"]["prediction"] == 1
    resolve, first, second = fake.requests
    assert (resolve["path"], resolve["body"], resolve["auth"]) == (
        f"{API}/access-keys/resolve",
        {"accessKey": "wbk_k1"},
        None,  # the key is the credential: no workbench token
    )
    assert first["body"] == {"accessKey": "wbk_k1", "request": {"x": 1}}
    assert second["body"] == {"accessKey": "wbk_k1", "request": {"x": 2}}
    assert first["auth"] is None


def test_call_model_raises_the_models_error_and_resolves_again_after_a_401(fake):
    fake.answer("POST", "/access-keys/resolve", (200, {"url": fake.url + "/models/p/m/model"}))
    fake.answer(
        "POST",
        "/models/p/m/model",
        (500, {"success": False, "error": "ValueError: no tenure"}),
        (401, {"success": False, "error": "invalid access key"}),
    )
    with pytest.raises(workbench.WorkbenchError) as failed:
        cdsw.call_model("wbk_k2", {})
    assert (failed.value.status, failed.value.message) == (500, "ValueError: no tenure")
    with pytest.raises(workbench.WorkbenchError, match=r"^401: invalid access key$"):
        cdsw.call_model("wbk_k2", {})
    with pytest.raises(workbench.WorkbenchError):
        cdsw.call_model("wbk_k2", {})
    assert [p for _, p in fake.sent()].count("/access-keys/resolve") == 2


def test_call_model_with_an_unknown_key(fake):
    fake.answer("POST", "/access-keys/resolve", (401, {"status": 401, "message": "unknown key"}))
    with pytest.raises(workbench.WorkbenchError, match=r"^401: unknown key$"):
        cdsw.call_model("wbk_nope", {})


MODEL = {
    "name": "scorer",
    "crn": "crn:workbench:model:1",
    "file": "predict.py",
    "function": "predict",
    "description": "",
    "profile": None,
    "replicas": 2,
    "env": {},
    "created": "2026-01-01T00:00:00Z",
    "created_by": "alice",
    "url": "http://hub/models/churn/scorer/model",
    "deployment": {"number": 3, "crn": "crn:workbench:deployment:3", "state": "running"},
}
MODEL_PATH = "/projects/churn/models/scorer"


def script_deploy(fake, build_states=("building", "succeeded"), deploy_states=("running",)):
    fake.answer("POST", "/projects/churn/models", (201, MODEL))
    fake.answer("POST", f"{MODEL_PATH}/builds", (201, {"number": 4, "state": "queued"}))
    fake.answer(
        "GET",
        f"{MODEL_PATH}/builds/4",
        *[(200, {"number": 4, "state": s, "message": "pip failed"}) for s in build_states],
    )
    fake.answer("POST", f"{MODEL_PATH}/deployments", (202, {"number": 3, "state": "deploying"}))
    fake.answer(
        "GET",
        f"{MODEL_PATH}/deployments/3",
        *[
            (200, {"number": 3, "state": s, "message": "replicas never ready"})
            for s in deploy_states
        ],
    )
    fake.answer("GET", MODEL_PATH, (200, MODEL))


def test_deploy_creates_builds_and_waits_for_the_deployment(fake):
    script_deploy(fake, deploy_states=("deploying", "running"))
    model = workbench.models.deploy("scorer", "predict.py", "predict", replicas=2, env={"A": "1"})
    assert fake.sent() == [
        ("POST", "/projects/churn/models"),
        ("POST", f"{MODEL_PATH}/builds"),
        ("GET", f"{MODEL_PATH}/builds/4"),
        ("GET", f"{MODEL_PATH}/builds/4"),
        ("POST", f"{MODEL_PATH}/deployments"),
        ("GET", f"{MODEL_PATH}/deployments/3"),
        ("GET", f"{MODEL_PATH}/deployments/3"),
        ("GET", MODEL_PATH),
    ]
    assert fake.requests[0]["body"] == {
        "name": "scorer",
        "file": "predict.py",
        "function": "predict",
        "replicas": 2,
        "env": {"A": "1"},
    }
    assert fake.requests[4]["body"] == {"build": 4, "replicas": 2}
    assert all(r["auth"] == f"token {TOKEN}" for r in fake.requests)
    assert (model.name, model.url, model.project) == ("scorer", MODEL["url"], "churn")


def test_deploy_updates_an_existing_model(fake):
    script_deploy(fake)
    fake.answer("POST", "/projects/churn/models", (409, {"message": "model scorer exists"}))
    fake.answer("PATCH", MODEL_PATH, (200, MODEL))
    client = workbench.Client()
    client.models.deploy("scorer", "v2.py", "predict", profile="small", wait=False)
    assert fake.sent()[:2] == [("POST", "/projects/churn/models"), ("PATCH", MODEL_PATH)]
    assert fake.requests[1]["body"] == {
        "file": "v2.py",
        "function": "predict",
        "profile": "small",
    }
    assert ("GET", f"{MODEL_PATH}/deployments/3") not in fake.sent()  # wait=False


def test_a_failed_build_raises_with_its_message(fake):
    script_deploy(fake, build_states=("failed",))
    with pytest.raises(workbench.WorkbenchError, match="build 4 of model 'scorer' failed: pip"):
        workbench.models.deploy("scorer", "predict.py", "predict")
    assert ("POST", f"{MODEL_PATH}/deployments") not in fake.sent()


def test_a_failed_deployment_raises_with_its_message(fake):
    script_deploy(fake, deploy_states=("deploying", "failed"))
    with pytest.raises(workbench.WorkbenchError, match="failed: replicas never ready"):
        workbench.models.deploy("scorer", "predict.py", "predict")


def test_model_objects_manage_keys_and_the_deployment(fake):
    fake.answer("GET", MODEL_PATH, (200, MODEL))
    fake.answer("GET", "/projects/churn/models", (200, {"models": [MODEL]}))
    fake.answer("POST", f"{MODEL_PATH}/keys", (201, {"id": 5, "key": "wbk_new", "prefix": "wbk_n"}))
    fake.answer("DELETE", f"{MODEL_PATH}/keys/5", (204, None))
    fake.answer("GET", f"{MODEL_PATH}/keys", (200, {"keys": [{"id": 5, "revoked": True}]}))
    fake.answer("PATCH", f"{MODEL_PATH}/deployments/3", (200, {"number": 3, "replicas": 4}))
    fake.answer("GET", f"{MODEL_PATH}/logs", (200, "replica 0 started\n"))
    fake.answer("GET", f"{MODEL_PATH}/stats", (200, {"requests_per_second": 3.5}))
    fake.answer("GET", f"{MODEL_PATH}/builds", (200, {"builds": [{"number": 4}]}))
    fake.answer("GET", f"{MODEL_PATH}/deployments", (200, {"deployments": [{"number": 3}]}))

    [listed] = workbench.models.list()
    assert listed.crn == MODEL["crn"]
    model = workbench.models.get("scorer")
    assert model.create_key("dashboard") == "wbk_new"
    model.revoke_key(5)
    assert model.keys() == [{"id": 5, "revoked": True}]
    assert model.scale(4) == {"number": 3, "replicas": 4}
    model.stop()
    model.restart()
    assert model.logs() == "replica 0 started\n"
    assert model.stats() == {"requests_per_second": 3.5}
    assert model.builds() == [{"number": 4}]
    assert model.deployments() == [{"number": 3}]
    bodies = [(r["method"], r["path"].removeprefix(API), r["body"]) for r in fake.requests]
    assert ("POST", f"{MODEL_PATH}/keys", {"description": "dashboard"}) in bodies
    assert ("DELETE", f"{MODEL_PATH}/keys/5", None) in bodies
    patches = [b for m, p, b in bodies if m == "PATCH"]
    assert patches == [{"replicas": 4}, {"state": "stopped"}, {"restart": True}]


def test_scaling_a_model_without_deployment_says_so(fake):
    fake.answer("GET", MODEL_PATH, (200, {**MODEL, "deployment": None}))
    model = workbench.models.get("scorer")
    with pytest.raises(workbench.WorkbenchError, match="model 'scorer' has no deployment"):
        model.scale(2)
