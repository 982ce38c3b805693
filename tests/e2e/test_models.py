"""End to end: train a scikit-learn model, deploy it with 2 replicas and call it through the proxy.

One real `workbench up`; the calls go through the hub's proxy to real replica processes. A
replica is SIGKILLed and comes back, a redeploy under a load loop answers every request with
2xx, a revoked key gets 401, and bad models fail with a message naming the problem while the
running deployment keeps serving.
"""

import signal
import threading
import time
from pathlib import Path

import httpx
import joblib
import psutil
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests.harness import Workbench, wait_for

pytestmark = pytest.mark.e2e

PREDICT = """\
import joblib

import cdsw

model = joblib.load("model.joblib")


@cdsw.model_metrics
def predict(args):
    probabilities = model.predict_proba([args["features"]])[0]
    label = int(probabilities.argmax())
    cdsw.track_metric("probability", float(probabilities[label]))
    return {"species": label, "version": VERSION}


VERSION = {version}
"""


def replica_processes(wb: Workbench) -> dict[str, psutil.Process]:
    """Replica name → its server process."""
    found = {}
    for proc in wb.descendants():
        try:
            argv = proc.cmdline()
        except psutil.Error:
            continue
        if "workbench_serving" in argv and "--replica" in argv:
            found[argv[argv.index("--replica") + 1]] = proc
    return found


@pytest.fixture(scope="module")
def wb():
    wb = Workbench().start()
    yield wb
    wb.stop()


@pytest.fixture(scope="module")
def api(wb):
    token = wb.user_token("maya")
    with httpx.Client(
        base_url=wb.api_url, headers={"Authorization": f"token {token}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture(scope="module")
def project(api) -> Path:
    r = api.post("/projects", json={"name": "iris"})
    assert r.status_code == 201, r.text
    path = Path(r.json()["path"])
    data = load_iris()
    classifier = LogisticRegression(max_iter=500).fit(data.data, data.target)
    joblib.dump(classifier, path / "model.joblib")
    (path / "predict.py").write_text(PREDICT.replace("{version}", "1"))
    return path


def build(api, model: str) -> dict:
    r = api.post(f"/projects/iris/models/{model}/builds")
    assert r.status_code == 202, r.text
    number = r.json()["number"]
    return wait_for(
        lambda: (
            (b := api.get(f"/projects/iris/models/{model}/builds/{number}").json())["state"]
            in ("succeeded", "failed")
            and b
        ),
        240,
        f"build {number} of {model}",
    )


def deploy(api, model: str, build_number: int, replicas: int = 2) -> dict:
    r = api.post(
        f"/projects/iris/models/{model}/deployments",
        json={"build": build_number, "replicas": replicas},
    )
    assert r.status_code == 202, r.text
    number = r.json()["number"]
    return wait_for(
        lambda: (
            (d := api.get(f"/projects/iris/models/{model}/deployments/{number}").json())["state"]
            in ("running", "failed")
            and (d["state"] == "failed" or d["ready_replicas"] == replicas)
            and d
        ),
        120,
        f"deployment {number} of {model}",
    )


@pytest.fixture(scope="module")
def deployed(api, project):
    r = api.post(
        "/projects/iris/models",
        json={"name": "classifier", "file": "predict.py", "function": "predict", "replicas": 2},
    )
    assert r.status_code == 201, r.text
    first = build(api, "classifier")
    assert first["state"] == "succeeded", first["message"]
    deployment = deploy(api, "classifier", first["number"])
    assert deployment["state"] == "running", deployment["message"]
    key = api.post("/projects/iris/models/classifier/keys", json={"description": "e2e"})
    assert key.status_code == 201, key.text
    return {"build": first, "deployment": deployment, "key": key.json()}


def call(wb, key: str, features, client=None):
    client = client or httpx
    return client.post(
        f"{wb.url}/models/iris/classifier/model",
        json={"accessKey": key, "request": {"features": features}},
        timeout=30,
    )


def test_call_through_the_proxy(wb, deployed):
    sample = load_iris().data[0].tolist()  # a setosa: class 0
    r = call(wb, deployed["key"]["key"], sample)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert body["response"]["prediction"] == {"species": 0, "version": 1}
    assert body["response"]["uuid"] == body["uuid"]
    # MLflow-style route, key in the header
    r = httpx.post(
        f"{wb.url}/models/iris/classifier/invocations",
        json={"inputs": {"features": sample}},
        headers={"Authorization": f"Bearer {deployed['key']['key']}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"]["prediction"]["species"] == 0
    # not JSON
    r = httpx.post(f"{wb.url}/models/iris/classifier/model", content=b"{not json")
    assert r.status_code == 400
    assert r.json()["success"] is False
    # no or a wrong key
    assert call(wb, "wbk_wrong", sample).status_code == 401


def test_killed_replica_comes_back(wb, api, deployed):
    before = replica_processes(wb)
    assert len(before) == 2, before
    victim_name, victim = sorted(before.items())[0]
    victim.send_signal(signal.SIGKILL)
    wait_for(
        lambda: len(now := replica_processes(wb)) == 2 and victim_name not in now and now,
        60,
        "a new replica to replace the killed one",
    )
    wait_for(
        lambda: (
            api.get("/projects/iris/models/classifier").json()["deployment"]["ready_replicas"] == 2
        ),
        60,
        "both replicas ready again",
    )
    sample = load_iris().data[0].tolist()
    assert call(wb, deployed["key"]["key"], sample).status_code == 200


def test_redeploy_under_load_has_no_failed_request(wb, api, project, deployed):
    sample = load_iris().data[60].tolist()
    statuses: list[int] = []
    versions: set[int] = set()
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    r = call(wb, deployed["key"]["key"], sample, client)
                except httpx.HTTPError as exc:
                    statuses.append(-1)
                    print("request failed:", exc)
                    continue
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["response"]["prediction"]["version"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        (project / "predict.py").write_text(PREDICT.replace("{version}", "2"))
        second = build(api, "classifier")
        assert second["state"] == "succeeded", second["message"]
        old = set(replica_processes(wb))
        new = deploy(api, "classifier", second["number"])
        assert new["state"] == "running", new["message"]
        wait_for(lambda: not (old & set(replica_processes(wb))), 60, "the old replicas to stop")
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert len(statuses) > 100
    failed = [s for s in statuses if not 200 <= s < 300]
    assert not failed, f"{len(failed)} of {len(statuses)} requests failed: {set(failed)}"
    assert versions == {1, 2}
    deployments = api.get("/projects/iris/models/classifier/deployments").json()["deployments"]
    states = {d["number"]: d["state"] for d in deployments}
    assert states == {new["number"]: "running", deployed["deployment"]["number"]: "superseded"}


def test_failed_builds_never_replace_the_running_deployment(wb, api, project, deployed):
    (project / "bad.py").write_text("def predict():\n    return 1\n")
    r = api.post(
        "/projects/iris/models",
        json={"name": "bad", "file": "bad.py", "function": "predict"},
    )
    assert r.status_code == 201, r.text
    failed = build(api, "bad")
    assert failed["state"] == "failed"
    assert "must take one argument" in failed["message"]
    r = api.post("/projects/iris/models/bad/deployments", json={"build": failed["number"]})
    assert r.status_code == 409
    assert "failed" in r.json()["message"]
    # a missing function, on the running model: the build fails, the deployment keeps serving
    running = api.get("/projects/iris/models/classifier").json()["deployment"]
    r = api.patch("/projects/iris/models/classifier", json={"function": "nope"})
    assert r.status_code == 200, r.text
    broken = build(api, "classifier")
    assert broken["state"] == "failed"
    assert "nope" in broken["message"]
    r = api.post("/projects/iris/models/classifier/deployments", json={})
    assert r.status_code == 202  # the newest *succeeded* build
    api.patch("/projects/iris/models/classifier", json={"function": "predict"})
    after = api.get("/projects/iris/models/classifier").json()["deployment"]
    assert after["build"] == running["build"]
    # a missing file is refused when the model is created
    r = api.post(
        "/projects/iris/models",
        json={"name": "ghost", "file": "ghost.py", "function": "predict"},
    )
    assert r.status_code == 400
    assert "ghost.py" in r.json()["message"]


def test_metrics_and_stats(wb, api, deployed):
    sample = load_iris().data[100].tolist()
    uuids = [call(wb, deployed["key"]["key"], sample).json()["uuid"] for _ in range(5)]
    model = api.get("/projects/iris/models/classifier").json()

    def tracked():
        r = api.get("/model-metrics", params={"modelCrn": model["crn"]})
        assert r.status_code == 200, r.text
        records = {rec["predictionUuid"]: rec for rec in r.json()["metrics"]}
        return set(uuids) <= set(records) and records

    records = wait_for(tracked, 10, "the predictions' metrics")
    assert all(0 < records[u]["metrics"]["probability"] <= 1 for u in uuids)

    def stats_after_a_call():
        # the deployment made by the previous test may take over meanwhile: call, then look
        assert call(wb, deployed["key"]["key"], sample).status_code == 200
        stats = api.get("/projects/iris/models/classifier/stats").json()
        reported = all(r["memory_bytes"] > 0 for r in stats["replicas"])
        return stats["totals"]["requests"] > 0 and reported and stats

    stats = wait_for(stats_after_a_call, 20, "replica stats")
    assert stats["state"] == "running"
    assert stats["latency_ms"]["p50"] is not None
    assert len(stats["replicas"]) == 2
    prometheus = httpx.get(
        f"{wb.api_url}/metrics", headers={"Authorization": f"token {wb.admin_token}"}
    )
    assert prometheus.status_code == 200
    assert f'deployment="{stats["deployment_crn"]}"' in prometheus.text


def test_control_plane_restart_keeps_models_serving(wb, api, deployed):
    """SIGKILL the control plane: the model keeps answering, and after the hub restarts it the
    supervisor adopts the running replicas instead of starting new ones."""
    sample = load_iris().data[0].tolist()
    # settled: only the current deployment's two replicas run
    before = set(wait_for(lambda: len(r := replica_processes(wb)) == 2 and r, 60, "2 replicas"))
    killed = wb.control_plane()
    killed.send_signal(signal.SIGKILL)

    def dead():
        try:
            return killed.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(dead, 10, "the control plane to die")
    assert call(wb, deployed["key"]["key"], sample).status_code == 200  # no control plane

    def restarted():
        try:
            return api.get("/projects/iris/models/classifier").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(restarted, 90, "the hub to restart the control plane")
    time.sleep(3)  # a few reconciliations
    assert set(replica_processes(wb)) == before
    assert api.get("/projects/iris/models/classifier").json()["deployment"]["ready_replicas"] == 2
    assert call(wb, deployed["key"]["key"], sample).status_code == 200
    # a replica started by the new control plane holds a valid token too: it becomes ready
    name, victim = sorted(replica_processes(wb).items())[0]
    victim.send_signal(signal.SIGKILL)
    wait_for(
        lambda: len(now := replica_processes(wb)) == 2 and name not in now,
        60,
        "a replacement replica",
    )
    wait_for(
        lambda: (
            api.get("/projects/iris/models/classifier").json()["deployment"]["ready_replicas"] == 2
        ),
        60,
        "the replacement to be ready",
    )


def test_a_cloudera_monitoring_script_runs_unchanged(wb, api, deployed, monkeypatch):
    """The calls of Cloudera's model-monitoring examples, through `cdsw` and `cml.metrics_v1`."""
    import cdsw
    import cml.metrics_v1 as metrics

    monkeypatch.setenv("WORKBENCH_API_URL", wb.api_url)
    monkeypatch.setenv("WORKBENCH_TOKEN", api.headers["Authorization"].split()[1])
    data = load_iris()
    rows, labels = data.data[::15].tolist(), data.target[::15].tolist()
    start_ms = int(time.time() * 1000)
    responses = [cdsw.call_model(deployed["key"]["key"], {"features": row}) for row in rows]
    assert all(r["success"] for r in responses)
    uuids = [r["response"]["uuid"] for r in responses]
    model = api.get("/projects/iris/models/classifier").json()

    def read_all():
        result = cdsw.read_metrics(model_crn=model["crn"], start_timestamp_ms=start_ms)
        records = {r["predictionUuid"]: r for r in result["metrics"] if r["predictionUuid"]}
        return set(uuids) <= set(records) and records

    wait_for(read_all, 10, "the predictions in read_metrics")
    half = len(uuids) // 2
    for prediction_uuid, label in zip(uuids[:half], labels[:half], strict=True):
        metrics.track_delayed_metrics({"actual": label}, prediction_uuid)
    correct = sum(
        r["response"]["prediction"]["species"] == label
        for r, label in zip(responses, labels, strict=True)
    )
    end_ms = int(time.time() * 1000)
    crn = model["deployment"]["crn"]
    metrics.track_aggregate_metrics(
        {"accuracy": correct / len(rows)}, start_ms, end_ms, model_deployment_crn=crn
    )
    records = read_all()
    for prediction_uuid, label in zip(uuids, labels, strict=True):
        record = records[prediction_uuid]
        assert record["startTimeStampMs"] <= record["endTimeStampMs"]
        assert 0 < record["metrics"]["probability"] <= 1
        if prediction_uuid in uuids[:half]:
            assert record["metrics"]["actual"] == label
        else:
            assert "actual" not in record["metrics"]
    aggregate = cdsw.read_metrics(
        model_deployment_crn=crn, start_timestamp_ms=start_ms, end_timestamp_ms=end_ms
    )["metrics"]
    assert {
        "startTimeStampMs": start_ms,
        "endTimeStampMs": end_ms,
        "predictionUuid": None,
        "metrics": {"accuracy": correct / len(rows)},
    } in aggregate
    # Cloudera's clients give clear errors for bad input
    with pytest.raises(Exception, match="crn:workbench:deployment:nope"):
        cdsw.read_metrics(model_deployment_crn="crn:workbench:deployment:nope")
    with pytest.raises(Exception, match="startTimeStampMs"):
        cdsw.read_metrics(model_deployment_crn=crn, start_timestamp_ms=5, end_timestamp_ms=1)


def test_revoked_key_gets_401(wb, api, deployed):
    sample = load_iris().data[0].tolist()
    key = deployed["key"]
    assert call(wb, key["key"], sample).status_code == 200
    r = api.delete(f"/projects/iris/models/classifier/keys/{key['id']}")
    assert r.status_code == 204
    r = wait_for(
        lambda: (r := call(wb, key["key"], sample)).status_code == 401 and r, 5, "revocation"
    )
    assert r.json()["success"] is False
    logs = api.get("/projects/iris/models/classifier/logs").text
    assert key["key"] not in logs
    assert key["key"] not in wb.log()


def test_stopping_the_workbench_flushes_every_prediction(wb, deployed):
    """Last: SIGTERM `workbench up` right after a burst of calls; no tracked metric is lost."""
    import sqlite3

    key = deployed["key"]
    sample = load_iris().data[0].tolist()
    # the key was revoked by the previous test: make a new one
    assert call(wb, key["key"], sample).status_code == 401
    token = wb.user_token("maya")
    with httpx.Client(
        base_url=wb.api_url, headers={"Authorization": f"token {token}"}, timeout=60
    ) as client:
        fresh = client.post("/projects/iris/models/classifier/keys").json()["key"]
    wait_for(lambda: call(wb, fresh, sample).status_code == 200, 5, "the new key")
    with httpx.Client(timeout=30) as client:
        uuids = [call(wb, fresh, sample, client).json()["uuid"] for _ in range(200)]
    assert wb.stop() == 0
    with sqlite3.connect(wb.data_dir / "workbench.sqlite") as connection:
        stored = {
            row[0]
            for row in connection.execute(
                "SELECT prediction_uuid FROM model_metrics WHERE kind = 'prediction'"
            )
        }
    assert set(uuids) <= stored
    assert not replica_processes(wb)
