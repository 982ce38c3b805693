"""Spark progress (`/workbench/spark/applications`), the Spark UI proxy and the notebook
widget's `job_progress`, against one real local SparkSession shared by the module."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from urllib.request import urlopen

import pytest
from tornado.httpclient import HTTPClientError

from tests.extensions.server.conftest import *  # noqa: F403  (jupyter_server fixtures)
from workbench import spark_progress
from workbench.errors import WorkbenchError
from workbench.spark_progress import job_progress

pyspark = pytest.importorskip("pyspark")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return tmp_path_factory.mktemp("spark-registry")


@pytest.fixture(scope="module")
def spark(registry):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("workbench-progress-test")
        .config("spark.ui.enabled", "true")
        .config("spark.ui.port", str(free_port()))
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    sc = session.sparkContext
    port = int(sc.uiWebUrl.rsplit(":", 1)[1])
    entry = {"port": port, "app_id": sc.applicationId, "pid": os.getpid(), "ui_url": sc.uiWebUrl}
    (registry / f"{sc.applicationId}.json").write_text(json.dumps(entry))
    # The REST API's first answer takes seconds (Jersey starts lazily): warm it up.
    urlopen(f"http://127.0.0.1:{port}/api/v1/applications", timeout=60).close()
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _registry_env(registry, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SPARK_REGISTRY", str(registry))


def start_slow_job(sc, group):
    """A job of 8 tasks of 1 s each on 2 cores, run in a thread; returns the thread."""

    def run():
        sc.setJobGroup(group, group)
        sc.parallelize(range(8), 8).map(lambda x: time.sleep(1.0) or x).count()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def applications(jp_fetch):
    response = await jp_fetch("workbench", "spark", "applications")
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)["applications"]


async def test_progress_of_a_running_job(jp_fetch, jp_base_url, spark):
    sc = spark.sparkContext
    port = int(sc.uiWebUrl.rsplit(":", 1)[1])
    thread = start_slow_job(sc, "server")
    for _ in range(40):
        [app] = await applications(jp_fetch)
        if app.get("jobs", {}).get("running"):
            break
        await asyncio.sleep(0.25)
    assert app["app_id"] == sc.applicationId
    assert app["ui"] == f"{jp_base_url}workbench/spark/ui/{port}/"
    assert app["reachable"] is True
    [job] = app["jobs"]["active"]
    assert job["numTasks"] == 8
    assert job["stageIds"]
    assert set(job) >= {"numCompletedTasks", "numActiveTasks", "numFailedTasks", "name"}
    assert app["stages"]["active"] >= 1
    assert app["executors"]["count"] >= 1
    await asyncio.to_thread(thread.join)
    [app] = await applications(jp_fetch)
    assert app["jobs"]["running"] == 0
    assert app["jobs"]["succeeded"] >= 1
    assert app["stages"]["complete"] >= 1


async def test_stale_and_unreachable_applications(jp_fetch, registry, spark):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = registry / "stale.json"
    stale.write_text(json.dumps({"port": 1, "app_id": "stale", "pid": dead.pid, "ui_url": ""}))
    silent = registry / "silent.json"
    entry = {"port": free_port(), "app_id": "silent", "pid": os.getpid(), "ui_url": ""}
    silent.write_text(json.dumps(entry))
    try:
        apps = {a["app_id"]: a for a in await applications(jp_fetch)}
    finally:
        silent.unlink()
    assert not stale.exists()
    assert set(apps) == {"silent", spark.sparkContext.applicationId}
    assert apps["silent"]["reachable"] is False
    assert "jobs" not in apps["silent"]


async def test_ui_is_proxied_for_registered_ports_only(jp_fetch, jp_base_url, spark):
    sc = spark.sparkContext
    port = str(int(sc.uiWebUrl.rsplit(":", 1)[1]))
    page = await jp_fetch("workbench", "spark", "ui", port, "jobs/")
    assert page.code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert b"Spark Jobs" in page.body
    head = await jp_fetch("workbench", "spark", "ui", port, "jobs/", method="HEAD")
    assert (head.code, head.body) == (200, b"")

    rest = await jp_fetch("workbench", "spark", "ui", port, "api/v1/applications")
    assert rest.headers["Content-Type"].startswith("application/json")
    assert [a["id"] for a in json.loads(rest.body)] == [sc.applicationId]

    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("workbench", "spark", "ui", f"{port}/", follow_redirects=False)
    assert caught.value.code in {301, 302}
    location = caught.value.response.headers["Location"]
    assert location == f"{jp_base_url}workbench/spark/ui/{port}/jobs/"

    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("workbench", "spark", "ui", str(free_port()), "jobs/")
    assert caught.value.code == 404
    assert "no Spark application" in json.loads(caught.value.response.body)["message"]


@pytest.mark.parametrize(
    "path",
    [("workbench", "spark", "applications"), ("workbench", "spark", "ui", "4040", "jobs/")],
)
async def test_spark_routes_need_authentication(jp_fetch, spark, path):
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch(*path, headers={"Authorization": ""})
    assert caught.value.code == 403


def test_job_progress_follows_a_job(spark):
    sc = spark.sparkContext
    tracker = sc.statusTracker()
    thread = start_slow_job(sc, "widget")
    for _ in range(40):
        jobs = job_progress(tracker)
        if jobs:
            break
        time.sleep(0.25)
    [job] = jobs
    assert job["status"] == "RUNNING"
    assert job["numTasks"] == 8
    assert job["numCompletedTasks"] < 8
    [stage] = job["stages"]
    assert stage["numTasks"] == 8
    thread.join()
    [done] = job_progress(tracker, [job["jobId"]])
    assert done["status"] == "SUCCEEDED"
    assert (done["numCompletedTasks"], done["numActiveTasks"]) == (8, 0)
    assert job_progress(tracker, [10_000]) == []


def test_enable_without_ipywidgets_says_what_to_install(monkeypatch, spark):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(WorkbenchError, match="pip install ipywidgets"):
        spark_progress.enable(spark)


def test_a_cell_shows_the_progress_of_its_spark_jobs(monkeypatch, spark):
    """In a real IPython shell: a cell that runs a Spark job gets one progress bar, full and
    green when the cell ends, with the job's stage and task counts."""
    from IPython.core.interactiveshell import InteractiveShell

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, *a, **k: shown.append(obj))
    shell = InteractiveShell.instance()
    monkeypatch.setattr("IPython.get_ipython", lambda: shell)
    shell.user_ns["sc"] = spark.sparkContext
    spark_progress.enable(spark)
    try:
        result = shell.run_cell("sc.parallelize(range(8), 8).map(lambda x: x * 2).sum()")
        assert result.success and result.result == 56
        [box] = shown
        [row] = box.children
        bar, label = row.children
        assert (bar.value, bar.max, bar.bar_style) == (8, 8, "success")
        assert label.value.startswith("succeeded: 1 stage(s), 8/8 tasks done, 0 running")
        assert "/workbench/spark/ui/" in label.value

        shown.clear()
        assert shell.run_cell("1 + 1").result == 2
        [quiet] = shown
        assert quiet.children == (), "a cell without Spark jobs shows no bar"
    finally:
        spark_progress.disable()
    assert shell.run_cell("sc.parallelize(range(4)).count()").result == 4
    assert len(shown) == 1, "disabled: nothing more is shown"
