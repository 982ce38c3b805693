"""Kubernetes objects of workloads (Jobs, Deployments, Services, autoscalers): schemas, behaviour.

Every object is validated strictly against the official schemas of the oldest and newest
Kubernetes we support (1.30 and 1.37), which reject unknown or misspelled fields.
"""

import kubernetes_validate
import pytest

from workbench_hub.kube.workload_objects import (
    POD_IP_ENV,
    WORKLOAD_LABEL,
    make_autoscaler,
    make_deployment,
    make_job,
    make_service,
)
from workbench_hub.runtime.base import Resources, VolumeMount, WorkloadSpec

VERSIONS = ["1.30.0", "1.37.0"]
IMAGE = "ghcr.io/example/workbench-session:1"


def run_spec(**overrides) -> WorkloadSpec:
    values = {
        "name": "run-42",
        "kind": "job-run",
        "user": "alice",
        "project": "churn",
        "command": ["python", "train.py", "--epochs", "3"],
        "working_dir": "/projects/churn",
        "env": {"WORKBENCH_JOB": "nightly"},
        "volumes": [VolumeMount(source="project-churn", target="/projects/churn")],
        "resources": Resources(cpu=1.5, memory=2 * 1024**3, gpu=1),
        "labels": {"workbench.jupyter.org/job": "nightly"},
    }
    return WorkloadSpec(**{**values, **overrides})


def replica_spec() -> WorkloadSpec:
    return run_spec(
        name="mdl-3-1",
        kind="model-replica",
        command=["python", "-m", "workbench_serving", "--file", "predict.py"],
        working_dir="/build/src",
        volumes=[VolumeMount(source="build-3", target="/build", read_only=True)],
        resources=Resources(cpu=1, memory=1024**3),
        ports={"http": 8080},
        labels={"workbench.jupyter.org/deployment": "3"},
    )


def all_objects() -> list[dict]:
    replica = replica_spec()
    return [
        make_job(run_spec(timeout_seconds=600), "u-alice", IMAGE, service_account="workbench"),
        make_job(run_spec(resources=Resources()), "u-alice", IMAGE),
        make_deployment(
            replica,
            "u-alice",
            IMAGE,
            replicas=2,
            node_selector={"workbench.jupyter.org/workloads": "true"},
            tolerations=[
                {"key": "workbench", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
            ],
        ),
        make_service(replica, "u-alice"),
        make_autoscaler(replica, "u-alice", 2, 6, 70),
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates(version):
    for obj in all_objects():
        kubernetes_validate.validate(obj, version, strict=True)


def test_validation_is_strict():
    job = make_job(run_spec(), "u-alice", IMAGE)
    job["spec"]["backofLimit"] = 0  # misspelled
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[0], strict=True)


def test_job_runs_once_with_deadline_resources_volumes_and_pod_ip():
    job = make_job(run_spec(timeout_seconds=600), "u-alice", IMAGE, ttl_seconds=120)
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["ttlSecondsAfterFinished"] == 120
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["command"] == ["python", "train.py", "--epochs", "3"]
    assert container["workingDir"] == "/projects/churn"
    assert container["resources"] == {
        "requests": {"cpu": "1500m", "memory": str(2 * 1024**3), "nvidia.com/gpu": "1"},
        "limits": {"cpu": "1500m", "memory": str(2 * 1024**3), "nvidia.com/gpu": "1"},
    }
    assert pod["volumes"] == [
        {
            "name": "volume-0",
            "persistentVolumeClaim": {"claimName": "project-churn", "readOnly": False},
        }
    ]
    assert container["volumeMounts"][0]["mountPath"] == "/projects/churn"
    env = {e["name"]: e for e in container["env"]}
    assert env["WORKBENCH_JOB"]["value"] == "nightly"
    assert env[POD_IP_ENV]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert "activeDeadlineSeconds" not in make_job(run_spec(), "u-alice", IMAGE)["spec"]


def test_labels_let_a_restarted_control_plane_find_workloads():
    job = make_job(run_spec(), "u-alice", IMAGE)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["app.kubernetes.io/managed-by"] == "workbench"
        assert labels["workbench.jupyter.org/kind"] == "job-run"
        assert labels["workbench.jupyter.org/project"] == "churn"
        assert labels["workbench.jupyter.org/job"] == "nightly"
        assert labels[WORKLOAD_LABEL] == "run-42"


def test_deployment_rolls_without_losing_ready_replicas_and_service_selects_it():
    replica = replica_spec()
    deployment = make_deployment(replica, "u-alice", IMAGE, replicas=2)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = spec["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert {"name": "WORKBENCH_PORT_HTTP", "value": "8080"} in container["env"]
    assert container["volumeMounts"][0]["readOnly"] is True  # the build snapshot
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    service = make_service(replica, "u-alice")
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]


def test_autoscaler_bounds():
    hpa = make_autoscaler(replica_spec(), "u-alice", 2, 6, 70)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mdl-3-1"
    with pytest.raises(ValueError, match="min_replicas"):
        make_autoscaler(replica_spec(), "u-alice", 5, 2, 70)
