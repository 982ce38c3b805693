"""The Kubernetes API double, exercised through kubernetes_asyncio over HTTP."""

import asyncio
import json
import sys
import time
from unittest.mock import Mock

import kubernetes_validate
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kubeapi.fixtures import kube_double, kubespawner_double  # noqa: F401 - fixtures
from tests.kubeapi.quantity import format_quantity, parse_quantity
from tests.kubeapi.validation import schema_problems

HTTP_SERVER = """
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ["POD_IP"], 8000), Handler).serve_forever()
"""


@pytest.fixture
async def api(kube_double, tmp_path):  # noqa: F811
    """An ApiClient configured from the double's kubeconfig."""
    path = kube_double.write_kubeconfig(tmp_path / "kubeconfig")
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
async def ns(api):
    await client.CoreV1Api(api).create_namespace({"metadata": {"name": "demo"}})
    return "demo"


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


async def eventually(check, timeout=10.0, interval=0.02):
    """Poll ``check()`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def pod(name, command=None, **spec):
    container = {"name": "main", "image": "python:3.11"}
    if command:
        container["command"] = command
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [container], **spec},
    }


def python_job(name, code, **spec):
    template = {
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "python:3.11", "command": [sys.executable, "-c", code]}
            ],
        }
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": template, **spec},
    }


async def test_crud_and_error_statuses(api, ns):
    core = client.CoreV1Api(api)
    cm = await core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cfg"}, "data": {"a": "1"}}
    )
    assert cm.metadata.uid and int(cm.metadata.resource_version) > 0
    assert (await core.read_namespaced_config_map("cfg", ns)).data == {"a": "1"}

    with pytest.raises(ApiException) as err:
        await core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}})
    assert err.value.status == 409
    assert status_of(err.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'configmaps "cfg" already exists',
        "reason": "AlreadyExists",
        "details": {"name": "cfg", "kind": "configmaps"},
        "code": 409,
    }

    patched = await core.patch_namespaced_config_map("cfg", ns, {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}
    with pytest.raises(ApiException) as err:
        await core.replace_namespaced_config_map("cfg", ns, cm)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(err.value)["message"]

    deleted = await core.delete_namespaced_config_map("cfg", ns)
    assert deleted.status == "Success" and deleted.details.name == "cfg"
    with pytest.raises(ApiException) as err:
        await core.read_namespaced_config_map("cfg", ns)
    assert err.value.status == 404
    assert status_of(err.value)["message"] == 'configmaps "cfg" not found'

    with pytest.raises(ApiException) as err:
        await client.BatchV1Api(api).read_namespaced_job("nope", ns)
    assert status_of(err.value)["message"] == 'jobs.batch "nope" not found'
    assert status_of(err.value)["details"] == {"name": "nope", "group": "batch", "kind": "jobs"}

    with pytest.raises(ApiException) as err:
        await core.create_namespaced_pod("missing", pod("p"))
    assert err.value.status == 404
    assert status_of(err.value)["message"] == 'namespaces "missing" not found'


async def test_validation_is_422(api, ns):
    core = client.CoreV1Api(api)
    typo = pod("typo")
    typo["spec"]["containers"][0]["imagee"] = "x"
    with pytest.raises(ApiException) as err:
        await core.create_namespaced_pod(ns, typo)
    body = status_of(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.containers[0].imagee"

    with pytest.raises(ApiException) as err:
        await core.create_namespaced_pod(ns, pod("Bad_Name"))
    body = status_of(err.value)
    assert err.value.status == 422
    assert body["message"].startswith(
        'Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase '
        "RFC 1123 subdomain"
    )
    assert body["details"]["kind"] == "Pod"

    with pytest.raises(ApiException) as err:
        await core.create_namespace({"metadata": {"name": "a.b"}})
    assert err.value.status == 422  # namespaces are RFC 1123 labels


def test_schema_validation_agrees_with_kubernetes_validate():
    good = pod("p")
    bad_field = pod("p")
    bad_field["spec"]["containers"][0]["imagee"] = "x"
    bad_type = pod("p")
    bad_type["spec"]["containers"][0]["ports"] = [{"containerPort": "eighty"}]
    missing = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"image": "x"}]},
    }
    for obj, valid in ((good, True), (bad_field, False), (bad_type, False), (missing, False)):
        try:
            kubernetes_validate.validate(obj, "1.37.0", strict=True)
            reference = True
        except kubernetes_validate.ValidationError:
            reference = False
        assert reference is valid
        assert (schema_problems("1.37.0", obj) == []) is valid
    started = time.perf_counter()
    for _ in range(1000):
        schema_problems("1.37.0", good)
    assert (time.perf_counter() - started) / 1000 < 0.002


def test_quantities():
    assert parse_quantity("100m") == parse_quantity("0.1")
    assert parse_quantity("1Gi") == 2**30 and parse_quantity("1k") == 1000
    assert parse_quantity("1e3") == 1000 and parse_quantity(2) == 2
    assert format_quantity(parse_quantity("1536Mi"), "requests.memory") == "1536Mi"
    assert format_quantity(parse_quantity("2Gi"), "memory") == "2Gi"
    assert format_quantity(parse_quantity("1500m"), "requests.cpu") == "1500m"
    with pytest.raises(ValueError):
        parse_quantity("12xyz")


async def test_discovery(api):
    core_resources = await client.CoreV1Api(api).get_api_resources()
    names = {r.name for r in core_resources.resources}
    assert {"pods", "pods/log", "pods/status", "namespaces", "events"} <= names
    groups = await client.ApisApi(api).get_api_versions()
    assert {g.name for g in groups.groups} >= {
        "apps",
        "batch",
        "rbac.authorization.k8s.io",
        "networking.k8s.io",
        "autoscaling",
    }
    apps = await client.AppsV1Api(api).get_api_resources()
    assert "deployments" in {r.name for r in apps.resources}


async def test_list_with_selectors(api, ns, kube_double):  # noqa: F811
    core = client.CoreV1Api(api)
    for name, labels in (
        ("a", {"app": "x", "tier": "web"}),
        ("b", {"app": "y"}),
        ("c", {"tier": "db"}),
    ):
        body = pod(name)
        body["metadata"]["labels"] = labels
        await core.create_namespaced_pod(ns, body)

    async def names(**kwargs):
        result = await core.list_namespaced_pod(ns, **kwargs)
        assert int(result.metadata.resource_version) > 0
        return sorted(p.metadata.name for p in result.items)

    assert await names(label_selector="app=x") == ["a"]
    assert await names(label_selector="app!=x") == ["b", "c"]
    assert await names(label_selector="app in (x, y)") == ["a", "b"]
    assert await names(label_selector="app notin (x)") == ["b", "c"]
    assert await names(label_selector="tier") == ["a", "c"]
    assert await names(label_selector="!tier") == ["b"]
    assert await names(label_selector="app,tier=web") == ["a"]
    assert await names(field_selector="metadata.name=b") == ["b"]
    await eventually(
        lambda: all(p["status"]["phase"] == "Running" for p in kube_double.objects("pods", ns))
    )
    assert await names(field_selector="status.phase=Running") == ["a", "b", "c"]
    everywhere = await core.list_pod_for_all_namespaces(label_selector="app")
    assert len(everywhere.items) == 2
    with pytest.raises(ApiException) as err:
        await core.list_namespaced_pod(ns, field_selector="spec.bogus=1")
    assert err.value.status == 400
    events = await core.list_namespaced_event(
        ns, field_selector="involvedObject.kind=Pod,involvedObject.name=a"
    )
    assert {"Scheduled", "Started"} <= {e.reason for e in events.items}


async def test_watch_from_resource_version_and_expiry(api, ns, kube_double):  # noqa: F811
    core = client.CoreV1Api(api)
    start = (await core.list_namespaced_config_map(ns)).metadata.resource_version
    await core.create_namespaced_config_map(ns, {"metadata": {"name": "w", "labels": {"k": "v"}}})
    await core.patch_namespaced_config_map("w", ns, {"data": {"x": "1"}})
    await core.delete_namespaced_config_map("w", ns)
    seen = []
    async with watch.Watch().stream(
        core.list_namespaced_config_map,
        ns,
        label_selector="k=v",
        resource_version=start,
        timeout_seconds=1,
    ) as stream:
        async for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
    assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]

    kube_double.store.compact()
    with pytest.raises(ApiException) as err:
        async with watch.Watch().stream(
            core.list_namespaced_config_map, ns, resource_version=start, timeout_seconds=1
        ) as stream:
            async for _ in stream:
                pass
    assert err.value.status == 410
    assert kube_double.calls[("watch", "configmaps")] == 2


async def test_namespace_deletion_cascades(api, ns, kube_double):  # noqa: F811
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(ns, pod("p"))
    await core.create_namespaced_secret(
        ns, {"metadata": {"name": "s", "finalizers": ["test/hold"]}, "stringData": {"k": "v"}}
    )
    await eventually(lambda: kube_double.get("pods", "p", ns)["status"]["phase"] == "Running")
    await core.delete_namespace(ns)
    assert (await core.read_namespace(ns)).status.phase == "Terminating"
    with pytest.raises(ApiException) as err:
        await core.create_namespaced_config_map(ns, {"metadata": {"name": "late"}})
    assert err.value.status == 403
    assert status_of(err.value)["message"] == (
        f'configmaps "late" is forbidden: unable to create new content in namespace {ns} '
        "because it is being terminated"
    )
    await eventually(lambda: kube_double.get("pods", "p", ns) is None, timeout=1)
    assert kube_double.get("secrets", "s", ns)["metadata"]["deletionTimestamp"]
    await core.patch_namespaced_secret("s", ns, {"metadata": {"finalizers": None}})
    await eventually(lambda: kube_double.get("namespaces", ns) is None, timeout=1)
    assert not kube_double.objects("pods", ns) and not kube_double.objects("secrets", ns)


async def test_resource_quota(api, ns):
    core = client.CoreV1Api(api)
    await core.create_namespaced_resource_quota(
        ns,
        {
            "metadata": {"name": "compute"},
            "spec": {"hard": {"pods": "2", "requests.cpu": "1", "requests.memory": "1Gi"}},
        },
    )
    small = pod("small")
    small["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "600m", "memory": "512Mi"}}
    await core.create_namespaced_pod(ns, small)
    big = pod("big")
    big["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "500m", "memory": "256Mi"}}
    with pytest.raises(ApiException) as err:
        await core.create_namespaced_pod(ns, big)
    assert err.value.status == 403
    assert status_of(err.value)["message"] == (
        'pods "big" is forbidden: exceeded quota: compute, requested: requests.cpu=500m, '
        "used: requests.cpu=600m, limited: requests.cpu=1"
    )
    with pytest.raises(ApiException) as err:
        await core.create_namespaced_pod(ns, pod("bare"))
    assert (
        "must specify requests.cpu for: main; requests.memory for: main"
        in status_of(err.value)["message"]
    )

    async def used():
        quota = await core.read_namespaced_resource_quota("compute", ns)
        return quota.status.used == {
            "pods": "1",
            "requests.cpu": "600m",
            "requests.memory": "512Mi",
        }

    await eventually(used)


async def test_pvc_protection_and_binding(api, ns, kube_double):  # noqa: F811
    core = client.CoreV1Api(api)
    await core.create_persistent_volume(
        {
            "metadata": {"name": "vol"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "hostPath": {"path": "/tmp"},
                "claimRef": {"namespace": ns, "name": "claim"},
            },
        }
    )
    await core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "claim"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "volumeName": "vol",
                "storageClassName": "",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    await eventually(
        lambda: (
            kube_double.get("persistentvolumeclaims", "claim", ns)["status"]["phase"] == "Bound"
            and kube_double.get("persistentvolumes", "vol")["status"]["phase"] == "Bound"
        )
    )
    user = pod("user", volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "claim"}}])
    await core.create_namespaced_pod(ns, user)
    await eventually(lambda: kube_double.get("pods", "user", ns)["spec"].get("nodeName"))
    await core.delete_namespaced_persistent_volume_claim("claim", ns)
    await asyncio.sleep(0.2)
    claim = await core.read_namespaced_persistent_volume_claim("claim", ns)
    assert claim.metadata.deletion_timestamp is not None
    assert claim.metadata.finalizers == ["kubernetes.io/pvc-protection"]
    await core.delete_namespaced_pod("user", ns)
    await eventually(lambda: kube_double.get("persistentvolumeclaims", "claim", ns) is None)
    await eventually(
        lambda: kube_double.get("persistentvolumes", "vol")["status"]["phase"] == "Released"
    )


async def test_job_pods_are_garbage_collected(api, ns, kube_double):  # noqa: F811
    batch = client.BatchV1Api(api)
    body = python_job("idle", "")
    body["spec"]["template"]["spec"]["containers"][0].pop("command")  # not executed: runs on
    for name in ("orphaned", "collected"):
        body["metadata"]["name"] = name
        await batch.create_namespaced_job(ns, body)
    await eventually(lambda: len(kube_double.objects("pods", ns)) == 2)
    pod_of = {p["metadata"]["labels"]["job-name"]: p for p in kube_double.objects("pods", ns)}
    assert pod_of["collected"]["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert pod_of["collected"]["metadata"]["name"].startswith("collected-")
    await batch.delete_namespaced_job("orphaned", ns)  # batch/v1 default: orphan the pods
    await batch.delete_namespaced_job("collected", ns, propagation_policy="Background")
    await eventually(
        lambda: (
            [p["metadata"]["labels"]["job-name"] for p in kube_double.objects("pods", ns)]
            == ["orphaned"]
        )
    )
    assert not kube_double.objects("pods", ns)[0]["metadata"].get("ownerReferences")


async def test_job_runs_to_completion_with_logs(api, ns, kube_double):  # noqa: F811
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    await batch.create_namespaced_job(ns, python_job("hello", "print('hi')"))

    async def complete():
        job = await batch.read_namespaced_job_status("hello", ns)
        return job if any(c.type == "Complete" for c in job.status.conditions or []) else None

    job = await eventually(complete)
    assert job.status.succeeded == 1 and job.status.completion_time
    pods = await core.list_namespaced_pod(ns, label_selector="job-name=hello")
    name = pods.items[0].metadata.name
    assert pods.items[0].status.phase == "Succeeded"
    assert pods.items[0].status.container_statuses[0].state.terminated.exit_code == 0
    assert await core.read_namespaced_pod_log(name, ns) == "hi\n"
    async with watch.Watch().stream(core.read_namespaced_pod_log, name, ns) as stream:
        assert [line async for line in stream] == ["hi\n"]  # follow=True


async def test_job_failure_and_deadline(api, ns):
    batch = client.BatchV1Api(api)
    await batch.create_namespaced_job(
        ns, python_job("fails", "raise SystemExit(3)", backoffLimit=0)
    )
    await batch.create_namespaced_job(
        ns, python_job("slow", "import time; time.sleep(60)", activeDeadlineSeconds=1)
    )

    async def failed(name):
        job = await batch.read_namespaced_job_status(name, ns)
        return next(
            (c for c in job.status.conditions or [] if c.type == "Failed" and c.status == "True"),
            None,
        )

    assert (await eventually(lambda: failed("fails"))).reason == "BackoffLimitExceeded"
    assert (await eventually(lambda: failed("slow"))).reason == "DeadlineExceeded"


async def test_deployment_rolling_update_keeps_ready_pods(api, ns, kube_double):  # noqa: F811
    apps = client.AppsV1Api(api)
    container = {
        "name": "web",
        "image": "python:3.11",
        "command": [sys.executable, "-c", HTTP_SERVER],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "VERSION", "value": "1"},
        ],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    await apps.create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [container], "terminationGracePeriodSeconds": 2},
                },
            },
        },
    )

    def ready_pods():
        return [
            p
            for p in kube_double.objects("pods", ns)
            if not p["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions") or []
            )
        ]

    async def available(replicas):
        d = await apps.read_namespaced_deployment_status("web", ns)
        return (
            d.status.available_replicas == replicas
            and d.status.updated_replicas == replicas
            and (d.status.replicas or 0) == replicas
        )

    await eventually(lambda: available(2), timeout=15)
    first_hash = {p["metadata"]["labels"]["pod-template-hash"] for p in ready_pods()}
    ips = {p["status"]["podIP"] for p in ready_pods()}
    assert len(ips) == 2 and "127.0.0.1" not in ips

    lowest = []

    async def monitor():
        while True:
            lowest.append(len(ready_pods()))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(monitor())
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "web", "env": [{"name": "VERSION", "value": "2"}]}]
                }
            }
        }
    }
    await apps.patch_namespaced_deployment("web", ns, patch)
    await eventually(
        lambda: (
            available(2)
            if {p["metadata"]["labels"]["pod-template-hash"] for p in ready_pods()} - first_hash
            and len(kube_double.objects("pods", ns)) == 2
            else False
        ),
        timeout=20,
    )
    watcher.cancel()
    assert min(lowest) >= 2
    assert len(kube_double.objects("replicasets", ns)) == 2

    await apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 3}})
    await eventually(lambda: available(3), timeout=15)
    await apps.patch_namespaced_deployment("web", ns, {"spec": {"replicas": 1}})
    await eventually(
        lambda: available(1) if len(kube_double.objects("pods", ns)) == 1 else False, timeout=15
    )
    deployment = await apps.read_namespaced_deployment("web", ns)
    conditions = {c.type: c.reason for c in deployment.status.conditions}
    assert conditions == {
        "Available": "MinimumReplicasAvailable",
        "Progressing": "NewReplicaSetAvailable",
    }
    assert deployment.status.observed_generation == deployment.metadata.generation


async def test_kubespawner_starts_and_stops_a_server(kubespawner_double):  # noqa: F811
    from jupyterhub.objects import Hub, Server
    from kubespawner import KubeSpawner

    class User(Mock):
        name = "alice"
        id = 1
        server = Server()
        escaped_name = "alice"
        url = "/user/alice/"

    spawner = KubeSpawner(
        hub=Hub(),
        user=User(),
        api_token="t",
        oauth_client_id="c",
        namespace="default",
        image="jupyter/base:1",
        start_timeout=20,
    )
    url = await spawner.start()
    pod = kubespawner_double.get("pods", "jupyter-alice", "default")
    assert pod["status"]["phase"] == "Running"
    assert url == f"http://{pod['status']['podIP']}:8888"
    assert await spawner.poll() is None
    await spawner.stop()
    assert kubespawner_double.get("pods", "jupyter-alice", "default") is None
    assert await spawner.poll() == 1
    calls = kubespawner_double.calls
    assert calls[("create", "pods")] == 1 and calls[("watch", "pods")] >= 1
    assert calls[("list", "events")] >= 1
