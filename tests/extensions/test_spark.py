"""workbench.spark: configuration layers, local and Kubernetes settings, quota sizing, Java,
and one real local SparkSession running an aggregation."""

import json
import os
import stat
import urllib.request
from decimal import Decimal
from pathlib import Path

import kubernetes_validate
import pytest

from workbench import spark as wspark

GIB = 1024**3


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: no cluster, no session prefix, the project in tmp_path/project."""
    for name in (
        "KUBERNETES_SERVICE_HOST",
        "WORKBENCH_SPARK_MODE",
        "WORKBENCH_SPARK_DEFAULTS",
        "JUPYTERHUB_SERVICE_PREFIX",
        "CPU_LIMIT",
        "MEM_LIMIT",
    ):
        monkeypatch.delenv(name, raising=False)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("WORKBENCH_PROJECT_DIR", str(project))
    monkeypatch.setenv("WORKBENCH_SPARK_REGISTRY", str(tmp_path / "registry"))
    return project


# -- layers ---------------------------------------------------------------------------------


def test_merge_later_layers_win_and_values_become_strings():
    merged = wspark.merge({"a": 1, "b": True}, None, {"b": False, "c": 2.5})
    assert merged == {"a": "1", "b": "false", "c": "2.5"}


def test_read_defaults_file_both_separators_and_comments(tmp_path):
    path = tmp_path / "spark-defaults.conf"
    path.write_text(
        "# a comment\n\n"
        "spark.executor.memory   4g\n"
        "spark.sql.shuffle.partitions=16\n"
        "spark.driver.extraJavaOptions -Dx=1 -Dy=2  \n"
        "spark.app.name = my app\n"
    )
    assert wspark.read_defaults_file(path) == {
        "spark.executor.memory": "4g",
        "spark.sql.shuffle.partitions": "16",
        "spark.driver.extraJavaOptions": "-Dx=1 -Dy=2",
        "spark.app.name": "my app",
    }


def test_read_defaults_file_names_file_and_line_of_a_malformed_line(tmp_path):
    path = tmp_path / "spark-defaults.conf"
    path.write_text("spark.a 1\n# fine\nspark.executor.memory\n")
    with pytest.raises(wspark.SparkConfigError, match=r"spark-defaults.conf, line 3: expected"):
        wspark.read_defaults_file(path)


def test_spark_conf_merges_environment_admin_project_and_call(env, tmp_path, monkeypatch):
    admin = tmp_path / "admin.json"
    admin.write_text(json.dumps({"spark.a": "admin", "spark.b": "admin", "spark.c": "admin"}))
    monkeypatch.setenv("WORKBENCH_SPARK_DEFAULTS", str(admin))
    (env / "spark-defaults.conf").write_text("spark.b project\nspark.c=project\n")
    monkeypatch.setenv("CPU_LIMIT", "2")
    settings = wspark.spark_conf({"spark.c": "call", "spark.master": "local[1]"}, spark_d=True)
    assert settings["spark.a"] == "admin"
    assert settings["spark.b"] == "project"
    assert settings["spark.c"] == "call"
    assert settings["spark.d"] == "true"
    assert settings["spark.master"] == "local[1]"  # the call beats the environment
    assert wspark.spark_conf(master="local[2]", app_name="x")["spark.app.name"] == "x"


def test_admin_defaults_must_be_a_json_object(env, tmp_path, monkeypatch):
    admin = tmp_path / "admin.json"
    admin.write_text("[1]")
    monkeypatch.setenv("WORKBENCH_SPARK_DEFAULTS", str(admin))
    with pytest.raises(wspark.SparkConfigError, match="must be a JSON object"):
        wspark.spark_conf()


def test_ui_goes_through_the_session_proxy(env, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/churn/")
    settings = wspark.spark_conf()
    port = settings["spark.ui.port"]
    assert settings["spark.ui.proxyBase"] == f"/user/alice/churn/workbench/spark/ui/{port}"
    assert "spark.ui.proxyBase" not in wspark.spark_conf({"spark.ui.enabled": False})


# -- one machine ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "cores"), [("0.5", 1), ("1", 1), ("1.9", 1), ("2", 2), ("3.5", 3), (4, 4)]
)
def test_local_conf_cores_round_down_to_at_least_one(cpu, cores):
    assert wspark.local_conf(cpu, None)["spark.master"] == f"local[{cores}]"


def test_local_conf_without_limits_uses_all_cores_and_spark_default_memory():
    conf = wspark.local_conf()
    assert conf["spark.master"] == f"local[{os.cpu_count()}]"
    assert "spark.driver.memory" not in conf


def test_local_conf_driver_memory_is_sixty_percent_in_mib():
    assert wspark.local_conf(1, 4 * GIB)["spark.driver.memory"] == "2457m"
    assert wspark.local_conf(1, str(1000 * 1024**2))["spark.driver.memory"] == "600m"


# -- Kubernetes -----------------------------------------------------------------------------

K8S_ENV = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "HOSTNAME": "jupyter-alice-churn",
    "WORKBENCH_POD_IP": "10.1.2.3",
    "WORKBENCH_SERVICE_ACCOUNT": "alice-churn",
    "WORKBENCH_PROJECT": "churn",
}
ADMIN = {"spark.kubernetes.container.image": "registry.example/spark:4.0-py3.12"}


def quota(hard, used):
    return {"kind": "ResourceQuota", "status": {"hard": hard, "used": used}}


def test_kubernetes_conf_from_a_fake_environment():
    conf = wspark.kubernetes_conf(K8S_ENV, "alice", ADMIN, {}, [], "/tmp/tpl.json")
    assert conf == {
        "spark.master": "k8s://https://10.96.0.1:443",
        "spark.submit.deployMode": "client",
        "spark.kubernetes.namespace": "alice",
        "spark.kubernetes.authenticate.driver.serviceAccountName": "alice-churn",
        "spark.kubernetes.container.image": "registry.example/spark:4.0-py3.12",
        "spark.driver.host": "10.1.2.3",
        "spark.driver.bindAddress": "0.0.0.0",  # noqa: S104
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.kubernetes.driver.pod.name": "jupyter-alice-churn",
        "spark.kubernetes.executor.label.workbench.jupyter.org/spark-driver": "jupyter-alice-churn",
        "spark.kubernetes.executor.podTemplateFile": "/tmp/tpl.json",
        "spark.kubernetes.executor.podTemplateContainerName": "spark-kubernetes-executor",
    }
    env = {k: v for k, v in K8S_ENV.items() if k != "WORKBENCH_SERVICE_ACCOUNT"}
    conf = wspark.kubernetes_conf(env, "alice", ADMIN, {}, [], "t")
    assert conf["spark.kubernetes.authenticate.driver.serviceAccountName"] == "workbench"


def test_kubernetes_conf_needs_the_admin_image_and_the_pod_ip():
    with pytest.raises(wspark.SparkSetupError, match="executor image"):
        wspark.kubernetes_conf(K8S_ENV, "alice", {}, {}, [], "t")
    env = {k: v for k, v in K8S_ENV.items() if k != "WORKBENCH_POD_IP"}
    with pytest.raises(wspark.SparkSetupError, match="WORKBENCH_POD_IP"):
        wspark.kubernetes_conf(env, "alice", ADMIN, {}, [], "t")


def test_max_executors_is_the_smallest_of_admin_user_and_quota():
    room_for_3 = [quota({"requests.cpu": "3"}, {"requests.cpu": "0"})]
    admin = {**ADMIN, "spark.dynamicAllocation.maxExecutors": "10"}

    def bound(admin, requested, quotas):
        conf = wspark.kubernetes_conf(K8S_ENV, "alice", admin, requested, quotas, "t")
        return conf.get("spark.dynamicAllocation.maxExecutors")

    assert bound(ADMIN, {}, []) is None
    assert bound(admin, {}, []) == "10"
    assert bound(admin, {}, room_for_3) == "3"
    assert bound(admin, {"spark.dynamicAllocation.maxExecutors": "2"}, room_for_3) == "2"
    assert bound(ADMIN, {"spark.executor.cores": "2"}, room_for_3) == "1"


def test_spark_conf_in_kubernetes_mode(env, tmp_path, monkeypatch):
    for name, value in K8S_ENV.items():
        monkeypatch.setenv(name, value)
    admin = tmp_path / "admin.json"
    admin.write_text(json.dumps({**ADMIN, "spark.dynamicAllocation.maxExecutors": 8}))
    monkeypatch.setenv("WORKBENCH_SPARK_DEFAULTS", str(admin))
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "namespace").write_text("alice\n")
    monkeypatch.setattr(wspark, "SERVICE_ACCOUNT_DIR", account)
    hard = {"requests.cpu": "4", "requests.memory": "16Gi", "pods": "20"}
    used = {"requests.cpu": "1500m", "requests.memory": "4Gi", "pods": "3"}
    monkeypatch.setattr(wspark, "read_resource_quotas", lambda *a: [quota(hard, used)])
    monkeypatch.setattr(wspark.tempfile, "tempdir", str(tmp_path))
    settings = wspark.spark_conf({"spark.dynamicAllocation.maxExecutors": "100"})
    assert wspark.resolve_mode() == "kubernetes"
    assert settings["spark.kubernetes.namespace"] == "alice"
    assert settings["spark.dynamicAllocation.maxExecutors"] == "2"  # 2.5 CPU left, 1 each
    template = json.loads(Path(settings["spark.kubernetes.executor.podTemplateFile"]).read_text())
    assert template == wspark.executor_pod_template("churn", env, "project-churn")


def test_resolve_mode():
    assert wspark.resolve_mode(environ={}) == "local"
    assert wspark.resolve_mode(environ={"KUBERNETES_SERVICE_HOST": "h"}) == "kubernetes"
    assert wspark.resolve_mode(environ={"WORKBENCH_SPARK_MODE": "kubernetes"}) == "kubernetes"
    assert wspark.resolve_mode("local", {"KUBERNETES_SERVICE_HOST": "h"}) == "local"
    with pytest.raises(wspark.SparkConfigError, match="unknown Spark mode"):
        wspark.resolve_mode("yarn", {})


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_executor_pod_template_validates(version):
    template = wspark.executor_pod_template(
        "churn", "/home/jovyan/work", "project-churn", labels={"team": "risk"}
    )
    kubernetes_validate.validate(template, version, strict=True)
    spec = template["spec"]
    assert spec["containers"][0]["volumeMounts"] == [
        {"name": "project", "mountPath": "/home/jovyan/work"}
    ]
    assert spec["volumes"][0]["persistentVolumeClaim"] == {"claimName": "project-churn"}


# -- quota sizing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        ("1.5", "1.5"),
        ("1Ki", "1024"),
        ("2Mi", str(2 * 1024**2)),
        ("3Gi", str(3 * GIB)),
        ("1k", "1000"),
        ("2M", "2000000"),
        ("1G", "1000000000"),
        ("1e3", "1000"),
    ],
)
def test_parse_quantity(text, value):
    assert wspark.parse_quantity(text) == Decimal(value)


def test_parse_quantity_rejects_garbage():
    with pytest.raises(wspark.SparkConfigError, match="not a Kubernetes quantity"):
        wspark.parse_quantity("2 GB")


def test_executor_resources_follow_spark_defaults():
    assert wspark.executor_resources({}) == (1, GIB, 384 * 1024**2)
    cores, memory, overhead = wspark.executor_resources(
        {"spark.executor.cores": "2", "spark.executor.memory": "8g"}
    )
    assert (cores, memory, overhead) == (2, 8 * GIB, 819 * 1024**2)


def test_quota_unlimited_when_nothing_is_bounded():
    assert wspark.executors_within_quota({}, {}, 1, GIB) is None
    assert wspark.executors_within_quota({"services": "5"}, {}, 1, GIB) is None


def test_quota_room_for_exactly_two():
    hard = {"requests.cpu": "4", "limits.memory": "12Gi", "pods": "10"}
    used = {"requests.cpu": "1", "limits.memory": "7Gi", "pods": "2"}
    # 3 CPU left (3 executors) but 5 GiB of memory: two executors of 2 GiB + 0.4 GiB
    assert wspark.executors_within_quota(hard, used, "1", 2 * GIB, 410 * 1024**2) == 2
    # pods bind too
    assert wspark.executors_within_quota({"pods": "4"}, {"pods": "2"}, 1, GIB) == 2


def test_quota_no_room_says_what_is_left_and_needed():
    hard = {"requests.cpu": "2", "requests.memory": "4Gi"}
    used = {"requests.cpu": "1500m", "requests.memory": "3Gi"}
    with pytest.raises(wspark.SparkQuotaError) as raised:
        wspark.executors_within_quota(hard, used, "1", 2 * GIB, 410 * 1024**2)
    assert str(raised.value) == (
        "the namespace quota leaves 0.5 CPU and 1 GiB; one executor needs 1 CPU and 2.4 GiB: "
        "ask for smaller executors or stop other workloads"
    )


def test_quota_overspent_counts_as_no_room():
    with pytest.raises(wspark.SparkQuotaError, match="leaves 0 CPU"):
        wspark.executors_within_quota({"cpu": "1"}, {"cpu": "2"}, "1", GIB)


# -- Java -----------------------------------------------------------------------------------


def test_java_missing_is_one_clear_error(env, tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(wspark.SparkSetupError, match="Spark needs Java 17 or newer: none found"):
        wspark.session()


def test_java_from_java_home_first(tmp_path):
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    assert wspark.find_java({"JAVA_HOME": str(tmp_path / "jdk"), "PATH": ""}) == str(java)
    assert wspark.find_java({"PATH": str(java.parent)}) == str(java)


# -- registry -------------------------------------------------------------------------------


def test_registry_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("WORKBENCH_SPARK_REGISTRY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wspark.registry_dir() == tmp_path / ".local/share/jupyter/runtime/workbench-spark"
    monkeypatch.setenv("WORKBENCH_SPARK_REGISTRY", "/x")
    assert str(wspark.registry_dir()) == "/x"


# -- a real SparkSession --------------------------------------------------------------------


def test_real_local_session_runs_an_aggregation(env, tmp_path, monkeypatch, capsys):
    admin = tmp_path / "admin.json"
    admin.write_text(json.dumps({"spark.sql.shuffle.partitions": 7, "spark.workbench.a": "x"}))
    monkeypatch.setenv("WORKBENCH_SPARK_DEFAULTS", str(admin))
    (env / "spark-defaults.conf").write_text("spark.sql.shuffle.partitions 3\n")
    monkeypatch.setenv("CPU_LIMIT", "1.5")
    monkeypatch.setenv("MEM_LIMIT", str(GIB))
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/churn/")
    spark = wspark.session(spark_workbench_b=True)
    try:
        assert spark.sparkContext.master == "local[1]"
        assert spark.conf.get("spark.sql.shuffle.partitions") == "3"
        assert spark.conf.get("spark.workbench.a") == "x"
        assert spark.conf.get("spark.workbench.b") == "true"
        assert spark.conf.get("spark.driver.memory") == "614m"
        heap = spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory()
        assert heap <= 614 * 1024**2

        rows = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
        frame = spark.createDataFrame(rows, ["key", "value"])
        result = frame.groupBy("key").agg({"value": "sum", "*": "count"}).collect()
        assert {(r["key"], r["count(1)"], r["sum(value)"]) for r in result} == {
            ("a", 2, 4),
            ("b", 2, 7),
            ("c", 1, 4),
        }

        sc = spark.sparkContext
        port = int(spark.conf.get("spark.ui.port"))
        entry = tmp_path / "registry" / f"{sc.applicationId}.json"
        assert json.loads(entry.read_text()) == {
            "port": port,
            "app_id": sc.applicationId,
            "pid": os.getpid(),
            "ui_url": sc.uiWebUrl,
        }
        assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
        link = f"/user/alice/churn/workbench/spark/ui/{port}/"
        assert f"Spark UI: {link}" in capsys.readouterr().out
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs/", timeout=10) as r:
            assert r.status == 200
            assert link in r.read().decode()  # the UI's own links go through the proxy
    finally:
        spark.stop()
    assert not entry.exists()
