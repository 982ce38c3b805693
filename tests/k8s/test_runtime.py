"""KubernetesRuntime over real HTTP: against the API test double, or a real cluster.

Every test runs against :class:`tests.kubeapi.KubeAPIDouble`, whose kubelet runs a pod's
command as a host process; ``projects_root`` is a temporary directory, so host paths and mount
paths agree. With ``KUBECONFIG`` set, the same tests also run against that cluster and skip
what only the double can show (call counts, pods reachable from here); the cluster then needs
``WORKBENCH_TEST_IMAGE`` (with ``python3``), ``WORKBENCH_TEST_NFS_SERVER``,
``WORKBENCH_TEST_NFS_EXPORT_ROOT`` (holding a ``demo`` directory) and
``WORKBENCH_TEST_PROJECTS_ROOT`` (where the control plane sees that export).
"""

import asyncio
import json
import os
import socket
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from datetime import UTC

import aiohttp
import kubernetes_validate
import pytest
from traitlets import TraitError

from tests.kubeapi import KubeAPIDouble, host_command_exists
from workbench_hub.kube.namespaces import UserNamespaces
from workbench_hub.kube.workload_objects import WORKLOAD_LABEL
from workbench_hub.runtime.base import (
    Resources,
    VolumeMount,
    WorkloadNotFound,
    WorkloadSpec,
)
from workbench_hub.runtime.kubernetes import (
    SPEC_HASH_ANNOTATION,
    STOPPED_ANNOTATION,
    KubernetesRuntime,
    job_status,
    merge_patch,
)

pytestmark = pytest.mark.k8s

VERSIONS = ["1.30.0", "1.37.0"]
PROJECT = "demo"
USER = "Alice@Example.org"
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")


@dataclass
class Target:
    """Where a test runs: the API double (``double`` set) or the cluster of $KUBECONFIG."""

    kubeconfig: str
    projects_root: str
    double: KubeAPIDouble | None = None


@pytest.fixture(scope="module", params=["double", "cluster"])
async def cluster(request, tmp_path_factory):
    """The API double whose kubelet runs pods as host processes, or a real cluster (skipped
    unless $KUBECONFIG is set)."""
    if request.param == "cluster":
        if not os.environ.get("KUBECONFIG"):
            pytest.skip("set KUBECONFIG to run the k8s tests against a real cluster")
        yield Target(os.environ["KUBECONFIG"], os.environ["WORKBENCH_TEST_PROJECTS_ROOT"])
        return
    root = tmp_path_factory.mktemp("k8s-runtime")
    (root / "projects" / PROJECT).mkdir(parents=True)
    (root / "builds").mkdir()
    async with KubeAPIDouble(execute=host_command_exists) as double:
        path = double.write_kubeconfig(root / "kubeconfig")
        yield Target(str(path), str(root / "projects"), double)


@pytest.fixture
async def make_runtime(cluster):
    """Factory of runtimes on ``cluster``, closed at the end of the test."""
    made = []

    async def make(watch: bool = True, **traits) -> KubernetesRuntime:
        namespaces = UserNamespaces(
            hub_namespace="workbench",
            nfs_server=os.environ.get("WORKBENCH_TEST_NFS_SERVER", "nfs.example"),
            nfs_export_root=os.environ.get("WORKBENCH_TEST_NFS_EXPORT_ROOT", "/exports/projects"),
        )
        values = {
            "kubeconfig": cluster.kubeconfig,
            "image": os.environ.get("WORKBENCH_TEST_IMAGE", "workbench-session:test"),
            "python": sys.executable if cluster.double else "python3",
            "projects_root": cluster.projects_root,
            "nfs_paths": {
                os.path.join(os.path.dirname(cluster.projects_root), "builds"): "/exports/b"
            },
            "stop_grace": 2.0,
            "poll_interval": 0.05,
            "user_namespaces": namespaces,
            **traits,
        }
        runtime = KubernetesRuntime(**values)
        made.append(runtime)
        if watch:
            await runtime.start_watching()
        return runtime

    yield make
    for runtime in made:
        await runtime.close()


def spec(name: str, code: str, **overrides) -> WorkloadSpec:
    """A job run of ``python -c code`` in the project directory (the runtime's path)."""
    values = {
        "name": name,
        "kind": "job-run",
        "user": USER,
        "project": PROJECT,
        "command": [sys.executable, "-c", textwrap.dedent(code)],
        "working_dir": "/",  # replaced by the project path in each test
        "env": {"PYTHONUNBUFFERED": "1"},
        "resources": Resources(cpu=0.5, memory=256 * 1024**2),
        "labels": {"workbench.jupyter.org/job": "nightly"},
    }
    return WorkloadSpec(**{**values, **overrides})


def in_project(runtime: KubernetesRuntime, name: str, code: str, **overrides) -> WorkloadSpec:
    return spec(name, code, working_dir=f"{runtime.projects_root}/{PROJECT}", **overrides)


def validate(obj: dict) -> None:
    """Schema-check an object read back from the server, without its server-set fields."""
    obj = json.loads(json.dumps(obj))
    obj.pop("status", None)
    for key in SERVER_FIELDS:
        obj["metadata"].pop(key, None)
    for version in VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


async def read(runtime: KubernetesRuntime, api_version: str, kind: str, name: str) -> dict:
    """The one object of ``kind`` labelled with workload ``name`` (any namespace)."""
    api = await runtime.api()
    found, _ = await api.list(api_version, kind, None, {WORKLOAD_LABEL: name})
    assert len(found) == 1, f"{kind} of {name}: {found}"
    return found[0]


async def eventually(check, timeout: float = 15.0):
    """Await ``check()`` until it returns a truthy value."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(0.05)
    return result


async def phase_is(runtime: KubernetesRuntime, name: str, phase: str):
    async def check():
        status = await runtime.status(name)
        return status if status and status.phase == phase else None

    return await eventually(check)


def writes(double, before: Counter, resources: tuple[str, ...]) -> Counter:
    """The double's writes on ``resources`` (plurals) since the ``before`` copy of its calls."""
    verbs = {"create", "update", "patch", "delete"}
    return Counter(
        {
            (verb, resource): count
            for (verb, resource), count in (double.calls - before).items()
            if verb in verbs and resource in resources
        }
    )


# ---- pure parts


def test_merge_patch_nulls_removed_keys():
    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    new = {"a": 1, "b": {"c": 4}, "e": [2]}
    assert merge_patch(old, new) == {"b": {"c": 4, "d": None}, "e": [2]}
    assert merge_patch(new, new) == {}


def _job(conditions=(), annotations=None) -> dict:
    return {
        "metadata": {
            "name": "run-1",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {WORKLOAD_LABEL: "run-1", "workbench.jupyter.org/kind": "job-run"},
            "annotations": annotations or {},
        },
        "spec": {"activeDeadlineSeconds": 60, "template": {"spec": {"containers": [{}]}}},
        "status": {"conditions": [{"status": "True", **c} for c in conditions]},
    }


def _pod(phase: str, **state) -> dict:
    container = {"name": "workload", "state": state}
    status = {"phase": phase, "containerStatuses": [container]}
    return {
        "metadata": {"name": "run-1-x", "creationTimestamp": "2025-01-01T00:00:01Z"},
        "status": status,
    }


OOM = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2025-01-01T00:01:00Z"}}


@pytest.mark.parametrize(
    ("job", "pods", "phase", "message"),
    [
        (_job(), [], "pending", ""),
        (
            _job(),
            [_pod("Pending", waiting={"reason": "ErrImagePull", "message": "no"})],
            "pending",
            "ErrImagePull: no",
        ),
        (_job(), [_pod("Running", running={"startedAt": "2025-01-01T00:00:02Z"})], "running", ""),
        (
            _job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]),
            [_pod("Failed", **OOM)],
            "failed",
            "killed: out of memory (OOMKilled)",
        ),
        (
            _job([{"type": "Failed", "reason": "DeadlineExceeded"}]),
            [],
            "failed",
            "timed out after 60 s",
        ),
        (_job([{"type": "Complete"}]), [], "succeeded", ""),
        (_job(), [_pod("Unknown")], "lost", "the node running the pod stopped reporting"),
        (_job(), [_pod("Failed", **OOM)], "running", ""),  # until the Job records its end
        (
            _job(annotations={STOPPED_ANNOTATION: "2025-01-01T00:02:00+00:00"}),
            [],
            "stopped",
            "stopped on request",
        ),
    ],
)
def test_job_status_phases(job, pods, phase, message):
    status = job_status(job, pods)
    assert (status.phase, status.message) == (phase, message)
    assert status.created.tzinfo is not None


# ---- Jobs


async def test_job_run_objects_logs_and_success(make_runtime, cluster):
    double = cluster.double
    runtime = await make_runtime()
    code = """
        import os, pathlib, time
        print("started in", os.getcwd())
        deadline = time.monotonic() + 5
        while not pathlib.Path("go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        print("go seen:", pathlib.Path("go").exists())
    """
    name = "run-ok"
    started = await runtime.start(in_project(runtime, name, code, timeout_seconds=600))
    assert started.phase in {"pending", "running"}
    again = await runtime.start(in_project(runtime, name, "raise SystemExit(9)"))  # ignored
    assert again.name == name and again.created == started.created

    job = await read(runtime, "batch/v1", "Job", name)
    validate(job)
    project_path = f"{runtime.projects_root}/{PROJECT}"
    job_spec = job["spec"]
    pod = job_spec["template"]["spec"]
    container = pod["containers"][0]
    assert job_spec["backoffLimit"] == 0
    assert job_spec["activeDeadlineSeconds"] == 600
    assert job_spec["ttlSecondsAfterFinished"] == runtime.job_ttl_seconds
    assert job["metadata"]["namespace"] == runtime.user_namespaces.namespace(USER)
    assert pod["serviceAccountName"] == "workbench"
    assert container["command"][0] == runtime.python
    assert container["workingDir"] == project_path
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": str(256 * 1024**2)}
    claim = runtime.user_namespaces.claim_name(USER, PROJECT)
    assert pod["volumes"] == [
        {"name": "volume-0", "persistentVolumeClaim": {"claimName": claim, "readOnly": False}}
    ]
    assert container["volumeMounts"] == [
        {"name": "volume-0", "mountPath": project_path, "readOnly": False}
    ]
    api = await runtime.api()
    namespace = job["metadata"]["namespace"]
    claim_object = await api.get("v1", "PersistentVolumeClaim", claim, namespace)
    validate(claim_object)

    lines = []

    async def follow():
        async for line in runtime.logs(name, follow=True):
            lines.append(line)
            if line.startswith("started") and double:
                with open(f"{project_path}/go", "w"):
                    pass

    await asyncio.wait_for(follow(), 30)
    # on the double, "go" is written once "started" was streamed, while the run waits for it
    assert lines == [f"started in {project_path}", f"go seen: {bool(double)}"]
    status = await asyncio.wait_for(runtime.wait(name), 15)
    assert (status.phase, status.exit_code, status.message) == ("succeeded", 0, "")
    assert status.user == USER and status.project == PROJECT and status.kind == "job-run"
    assert status.labels["workbench.jupyter.org/job"] == "nightly"
    assert status.created.tzinfo == UTC and status.started and status.finished
    assert [line async for line in runtime.logs(name)] == lines
    await runtime.remove(name)
    assert await runtime.status(name) is None


async def test_failure_and_deadline(make_runtime):
    runtime = await make_runtime(watch=False)  # every read goes to the API
    await runtime.start(in_project(runtime, "run-fail", "print('oops'); raise SystemExit(3)"))
    slow = in_project(runtime, "run-slow", "import time; time.sleep(60)", timeout_seconds=1)
    await runtime.start(slow)
    failed = await asyncio.wait_for(runtime.wait("run-fail"), 30)
    assert (failed.phase, failed.exit_code, failed.message) == (
        "failed",
        3,
        "exited with code 3",
    )
    timed_out = await asyncio.wait_for(runtime.wait("run-slow"), 30)
    assert (timed_out.phase, timed_out.message) == ("failed", "timed out after 1 s")
    found = await runtime.list({"workbench.jupyter.org/job": "nightly"})
    assert {s.name for s in found} >= {"run-fail", "run-slow"}
    for name in ("run-fail", "run-slow"):
        await runtime.remove(name)


async def test_stop(make_runtime, cluster):
    runtime = await make_runtime()
    name = "run-stop"
    await runtime.start(in_project(runtime, name, "import time; print('up'); time.sleep(60)"))
    await phase_is(runtime, name, "running")
    stopped = await asyncio.wait_for(runtime.stop(name, grace=1), 40)
    assert stopped.phase == "stopped" and stopped.finished is not None
    assert (await runtime.status(name)).phase == "stopped"
    assert (await runtime.stop(name)).phase == "stopped"  # idempotent
    assert (await runtime.start(in_project(runtime, name, "pass"))).phase == "stopped"
    assert [s.name for s in await runtime.list() if s.phase == "stopped"].count(name) == 1
    api = await runtime.api()
    assert not (await api.list("batch/v1", "Job", None, {WORKLOAD_LABEL: name}))[0]
    assert not (await api.list("v1", "Pod", None, {WORKLOAD_LABEL: name}))[0]
    await runtime.remove(name)
    assert await runtime.status(name) is None
    with pytest.raises(WorkloadNotFound):
        await runtime.stop(name)
    with pytest.raises(WorkloadNotFound):
        async for _ in runtime.logs(name):
            pass


async def test_restarted_control_plane_adopts_a_running_job(make_runtime):
    first = await make_runtime()
    name = "run-adopt"
    code = """
        import time
        for i in range(600):
            print("tick", i, flush=True)
            time.sleep(0.1)
    """
    await first.start(in_project(first, name, code))
    await phase_is(first, name, "running")
    await first.close()

    second = await make_runtime()
    [found] = [
        s for s in await second.list({"workbench.jupyter.org/job": "nightly"}) if s.name == name
    ]
    assert (found.phase, found.user, found.project) == ("running", USER, PROJECT)
    assert (await second.status(name)).phase == "running"
    seen = []
    async for line in second.logs(name, follow=True):
        seen.append(line)
        if len(seen) == 3:
            break
    assert seen[0] == "tick 0" and len(seen) == 3
    stopped = await asyncio.wait_for(second.stop(name, grace=1), 40)
    assert stopped.phase == "stopped"
    await second.remove(name)


async def test_job_deleted_elsewhere_is_lost(make_runtime, cluster):
    runtime = await make_runtime()
    name = "run-lost"
    await runtime.start(in_project(runtime, name, "import time; time.sleep(60)"))
    await phase_is(runtime, name, "running")
    if cluster.double:  # the server ends every watch: the runtime watches again
        watches = cluster.double.calls["watch", "jobs"]
        cluster.double.store.close_watches()

        async def watching_again():
            return cluster.double.calls["watch", "jobs"] > watches

        await eventually(watching_again)
    job = await read(runtime, "batch/v1", "Job", name)
    api = await runtime.api()
    await api.delete("batch/v1", "Job", name, job["metadata"]["namespace"])
    lost = await phase_is(runtime, name, "lost")
    assert lost.message == "its Job was deleted outside the workbench"
    await runtime.remove(name)
    assert await runtime.status(name) is None


async def test_nfs_volumes_and_remove(make_runtime):
    runtime = await make_runtime()
    builds = os.path.join(os.path.dirname(runtime.projects_root), "builds")
    name = "bld-7"
    volumes = [
        VolumeMount(source=f"{builds}/7", target="/build", read_only=True),
        VolumeMount(source=f"{runtime.projects_root}/{PROJECT}/data", target="/data"),
    ]
    workload = in_project(runtime, name, "pass", kind="model-build", volumes=volumes)
    await runtime.start(workload)
    job = await read(runtime, "batch/v1", "Job", name)
    mounts = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert [(m["mountPath"], m.get("subPath"), m["readOnly"]) for m in mounts] == [
        (f"{runtime.projects_root}/{PROJECT}", None, False),
        ("/build", None, True),
        ("/data", "data", False),
    ]
    claims = [
        v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]
    ]
    project_claim = runtime.user_namespaces.claim_name(USER, PROJECT)
    assert claims[0] == claims[2] == project_claim and claims[1].startswith(f"{name}-")
    pv = await read(runtime, "v1", "PersistentVolume", name)
    pvc = await read(runtime, "v1", "PersistentVolumeClaim", name)
    for obj in (pv, pvc):
        validate(obj)
    assert pv["spec"]["nfs"] == {"server": "nfs.example", "path": "/exports/b/7", "readOnly": True}
    assert pv["spec"]["claimRef"]["name"] == pvc["metadata"]["name"] == claims[1]
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    await asyncio.wait_for(runtime.wait(name), 30)
    await runtime.remove(name)
    await runtime.remove(name)  # idempotent
    api = await runtime.api()
    for api_version, kind in (
        ("batch/v1", "Job"),
        ("v1", "PersistentVolumeClaim"),
        ("v1", "PersistentVolume"),
    ):
        assert not (await api.list(api_version, kind, None, {WORKLOAD_LABEL: name}))[0]


async def test_refused_specs(make_runtime):
    runtime = await make_runtime(watch=False)
    outside = [VolumeMount(source="/etc", target="/mnt/etc")]
    with pytest.raises(ValueError, match="nfs_paths"):
        await runtime.start(in_project(runtime, "run-bad-1", "pass", volumes=outside))
    other = [VolumeMount(source=f"{runtime.projects_root}/other", target="/mnt/other")]
    with pytest.raises(ValueError, match="another project"):
        await runtime.start(in_project(runtime, "run-bad-5", "pass", volumes=other))
    with pytest.raises(ValueError, match="apply_replicated"):
        await runtime.start(in_project(runtime, "run-bad-2", "pass", kind="model-replica"))
    with pytest.raises(ValueError, match="model-replica"):
        await runtime.apply_replicated(in_project(runtime, "run-bad-3", "pass"), 1)
    replica = in_project(runtime, "3-model", "pass", kind="model-replica", ports={"http": 80})
    with pytest.raises(ValueError, match="letter"):
        await runtime.apply_replicated(replica, 1)
    with pytest.raises(TraitError, match="keys"):
        runtime.autoscaling = {"max_replicas": 3, "cpu_percent": 50, "max_pods": 9}
    with pytest.raises(TraitError, match="absolute"):
        runtime.nfs_paths = {"builds": "/exports/b"}
    unset = await make_runtime(watch=False, image="")
    with pytest.raises(ValueError, match="image"):
        await unset.start(in_project(unset, "run-bad-4", "pass"))
    api = await runtime.api()
    jobs, _ = await api.list("batch/v1", "Job", None)
    assert not [j for j in jobs if j["metadata"]["name"].startswith("run-bad")]


# ---- replicated workloads


def free_port() -> int:
    """A port no one listens on (pods of parallel test runs may share IPs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RESOURCES = ("deployments", "services", "horizontalpodautoscalers")
SERVER = """
    import http.server, os
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = os.environ["VERSION"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    address = (os.environ["WORKBENCH_POD_IP"], int(os.environ["WORKBENCH_PORT_HTTP"]))
    http.server.ThreadingHTTPServer(address, Handler).serve_forever()
"""


async def test_replicated_rollout_scale_restart_remove(make_runtime, cluster):
    double = cluster.double
    runtime = await make_runtime()
    name = "mdl-churn"
    port = free_port()

    def replica(version: str) -> WorkloadSpec:
        return in_project(
            runtime,
            name,
            SERVER,
            kind="model-replica",
            ports={"http": port},
            env={"VERSION": version},
            labels={"workbench.jupyter.org/deployment": "3"},
        )

    async def if_settled(replicas: int):
        [status] = await runtime.list_replicated({"workbench.jupyter.org/deployment": "3"})
        return status if status.rolled_out and status.ready == replicas else None

    async def settled(replicas: int):
        return await eventually(lambda: if_settled(replicas), 40)

    async def versions() -> set[str]:
        api = await runtime.api()
        pods, _ = await api.list("v1", "Pod", None, {WORKLOAD_LABEL: name})
        answers = set()
        async with aiohttp.ClientSession() as session:
            for pod in pods:
                if pod["metadata"].get("deletionTimestamp"):
                    continue
                url = f"http://{pod['status']['podIP']}:{port}/"
                async with session.get(url) as response:
                    answers.add(await response.text())
        return answers

    first = await runtime.apply_replicated(replica("1"), 1)
    namespace = runtime.user_namespaces.namespace(USER)
    assert first.endpoint == f"{name}.{namespace}.svc:{port}"
    assert first.labels["workbench.jupyter.org/deployment"] == "3"
    deployment = await read(runtime, "apps/v1", "Deployment", name)
    service = await read(runtime, "v1", "Service", name)
    for obj in (deployment, service):
        validate(obj)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert service["spec"]["selector"] == {WORKLOAD_LABEL: name}
    hash_1 = deployment["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    await settled(1)
    if double:  # pod IPs are reachable from here
        assert await versions() == {"1"}

    mark = Counter(double.calls) if double else None
    scaled = await runtime.apply_replicated(replica("1"), 2)
    assert scaled.replicas == 2
    if double:
        assert writes(double, mark, RESOURCES) == {("patch", "deployments"): 1}
        deployment = await read(runtime, "apps/v1", "Deployment", name)
        assert deployment["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == hash_1
    await settled(2)
    mark = Counter(double.calls) if double else None
    rolling = await runtime.apply_replicated(replica("2"), 2)
    ready_during_rollout = []

    async def rolled_out():
        deployment = await read(runtime, "apps/v1", "Deployment", name)
        ready_during_rollout.append(deployment["status"].get("readyReplicas", 0))
        return await if_settled(2)

    await eventually(rolled_out, 40)
    assert min(ready_during_rollout) == 2  # maxUnavailable 0: never fewer ready
    assert not rolling.rolled_out or rolling.ready == 2
    new = await read(runtime, "apps/v1", "Deployment", name)
    assert new["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != hash_1
    if double:
        assert writes(double, mark, RESOURCES) == {
            ("patch", "deployments"): 1,
            ("patch", "services"): 1,
        }
    validate(new)
    if double:  # pod IPs are reachable from here
        assert await versions() == {"2"}

    restarted = await make_runtime()
    mark = Counter(double.calls) if double else None
    [seen] = await restarted.list_replicated({"workbench.jupyter.org/deployment": "3"})
    assert (seen.name, seen.replicas, seen.ready, seen.rolled_out) == (name, 2, 2, True)
    again = await restarted.apply_replicated(replica("2"), 2)
    assert again.rolled_out and again.ready == 2
    if double:
        assert writes(double, mark, RESOURCES) == {}

    await restarted.remove_replicated(name)
    await restarted.remove_replicated(name)  # idempotent
    api = await restarted.api()
    for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service")):
        assert not (await api.list(api_version, kind, None, {WORKLOAD_LABEL: name}))[0]
    assert await restarted.list_replicated({"workbench.jupyter.org/deployment": "3"}) == []


async def test_autoscaled_deployment(make_runtime):
    runtime = await make_runtime(autoscaling={"max_replicas": 4, "cpu_percent": 70})
    name = "mdl-auto"
    workload = in_project(runtime, name, SERVER, kind="model-replica", ports={"http": free_port()})
    await runtime.apply_replicated(workload, 2)
    autoscaler = await read(runtime, "autoscaling/v2", "HorizontalPodAutoscaler", name)
    validate(autoscaler)
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (2, 4)
    await runtime.apply_replicated(workload, 5)
    autoscaler = await read(runtime, "autoscaling/v2", "HorizontalPodAutoscaler", name)
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (5, 5)
    await runtime.remove_replicated(name)
    api = await runtime.api()
    assert not (
        await api.list("autoscaling/v2", "HorizontalPodAutoscaler", None, {WORKLOAD_LABEL: name})
    )[0]


async def test_autoscaler_floor(make_runtime):
    runtime = await make_runtime(
        autoscaling={"min_replicas": 3, "max_replicas": 6, "cpu_percent": 70}
    )
    name = "mdl-floor"
    workload = in_project(runtime, name, SERVER, kind="model-replica", ports={"http": free_port()})
    await runtime.apply_replicated(workload, 1)
    autoscaler = await read(runtime, "autoscaling/v2", "HorizontalPodAutoscaler", name)
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (3, 6)
    await runtime.remove_replicated(name)


async def test_run_beyond_the_quota_waits_and_says_why(make_runtime, cluster):
    """A run the namespace quota cannot hold stays pending, its status naming the quota."""
    runtime = await make_runtime()
    gpu = in_project(runtime, "quota-gpu", "print('gpu')", resources=Resources(gpu=1))
    await runtime.start(gpu)
    for _ in range(100):
        status = await runtime.status("quota-gpu")
        if "exceeded quota" in status.message:
            break
        await asyncio.sleep(0.05)
    assert status.phase == "pending"
    assert status.message.startswith("cannot create its pod:")
    assert "exceeded quota" in status.message and "nvidia.com/gpu" in status.message
    await runtime.remove("quota-gpu")


async def test_project_access_removed_deletes_the_users_pair(make_runtime):
    runtime = await make_runtime()
    await runtime.start(in_project(runtime, "access-1", "print('x')"))
    api = await runtime.api()
    namespace = runtime.user_namespaces.namespace(USER)
    claim = runtime.user_namespaces.claim_name(USER, PROJECT)
    assert await api.get("v1", "PersistentVolumeClaim", claim, namespace) is not None
    await runtime.remove("access-1")

    await runtime.project_access_removed(PROJECT, USER)
    for _ in range(100):
        if await api.get("v1", "PersistentVolumeClaim", claim, namespace) is None:
            break
        await asyncio.sleep(0.05)
    assert await api.get("v1", "PersistentVolumeClaim", claim, namespace) is None
    volumes, _ = await api.list(
        "v1", "PersistentVolume", labels={"workbench.jupyter.org/project": PROJECT}
    )
    assert [v for v in volumes if v["spec"]["claimRef"]["namespace"] == namespace] == []

    # the next run of the project ensures the pair again; a project deletion removes it for all
    await runtime.start(in_project(runtime, "access-2", "print('y')"))
    assert await api.get("v1", "PersistentVolumeClaim", claim, namespace) is not None
    await runtime.remove("access-2")
    await runtime.project_access_removed(PROJECT)
    for _ in range(100):
        if await api.get("v1", "PersistentVolumeClaim", claim, namespace) is None:
            break
        await asyncio.sleep(0.05)
    assert await api.get("v1", "PersistentVolumeClaim", claim, namespace) is None
