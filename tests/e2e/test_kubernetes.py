"""End to end on Kubernetes: a real `workbench up` whose control plane runs job runs and model
deployments through KubernetesRuntime, against the Kubernetes API test double (tests/kubeapi),
whose kubelet runs each pod's command as a real process.

A job run becomes a Job with the run's resources, project volume and deadline; its logs stream
through the API; its end is recorded; a SIGKILLed control plane re-adopts a running Job. A model
becomes a Deployment and a Service; scaling and redeploying patch them; a restarted control
plane changes nothing. Removing a collaborator removes their project volume.
"""

import asyncio
import inspect
import signal
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness import Workbench
from tests.kubeapi import KubeAPIDouble, host_command_exists

pytestmark = [pytest.mark.e2e, pytest.mark.k8s]

GiB = 1024**3
SCRIPT = """\
import os, time
print("started in", os.getcwd(), "on", os.environ["WORKBENCH_POD_IP"], flush=True)
time.sleep(float(os.environ.get("SLEEP", "0")))
print("finished", flush=True)
"""
PREDICT = """\
def predict(args):
    return {"double": 2 * args["x"], "version": VERSION}


VERSION = {version}
"""


def in_thread(function, *args, **kwargs):
    """Blocking calls leave the event loop free: the API double runs on it."""
    return asyncio.to_thread(function, *args, **kwargs)


async def until(check, timeout, what):
    """Poll ``check`` (plain or async) until it gives a true value; return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Env:
    def __init__(self, double, wb, api):
        self.double, self.wb, self.api = double, wb, api

    async def get(self, path, **kwargs):
        return await in_thread(self.api.get, path, **kwargs)

    async def post(self, path, **kwargs):
        return await in_thread(self.api.post, path, **kwargs)

    async def patch(self, path, **kwargs):
        return await in_thread(self.api.patch, path, **kwargs)


@pytest.fixture(scope="module")
async def env(tmp_path_factory):
    data = tmp_path_factory.mktemp("k8s-workbench")
    double = KubeAPIDouble(execute=host_command_exists)
    await double.start()
    kubeconfig = double.write_kubeconfig(data / "kubeconfig")
    config = f"""
        c.WorkbenchService.runtime_class = "workbench_hub.runtime.kubernetes.KubernetesRuntime"
        c.WorkbenchService.resource_profiles = [
            {{"name": "small", "display_name": "Small", "cpu": 0.5, "memory": {GiB},
              "gpu": 0, "groups": []}}]
        c.KubernetesRuntime.kubeconfig = {str(kubeconfig)!r}
        c.KubernetesRuntime.image = "jupyter-workbench/session:test"
        c.KubernetesRuntime.python = {sys.executable!r}
        c.KubernetesRuntime.projects_root = {str(data / "projects")!r}
        c.KubernetesRuntime.nfs_paths = {{{str(data)!r}: "/exports/data"}}
        c.UserNamespaces.hub_namespace = "workbench"
        c.UserNamespaces.nfs_server = "nfs.test"
        c.UserNamespaces.nfs_export_root = "/exports/projects"
        c.ModelSupervisor.stop_replicas_on_exit = False
    """
    wb = Workbench(extra_config=config, data_dir=data)
    await in_thread(wb.start)
    token = await in_thread(wb.user_token, "ana")
    api = httpx.Client(base_url=wb.api_url, headers={"Authorization": f"token {token}"}, timeout=60)
    yield Env(double, wb, api)
    api.close()
    await in_thread(wb.stop)
    await double.stop()


@pytest.fixture(scope="module")
async def project(env) -> Path:
    r = await env.post("/projects", json={"name": "etl"})
    assert r.status_code == 201, r.text
    path = Path(r.json()["path"])
    (path / "work.py").write_text(SCRIPT)
    (path / "predict.py").write_text(PREDICT.replace("{version}", "1"))
    return path


def jobs_in(double, namespace, job):
    return [
        j
        for j in double.objects("jobs", namespace)
        if j["metadata"]["labels"].get("workbench.jupyter.org/job") == job
    ]


async def run_job(env, name, sleep=0.0, timeout=None):
    body = {"name": name, "target": "work.py", "env": {"SLEEP": str(sleep)}}
    if timeout:
        body["timeout_seconds"] = timeout
    r = await env.post("/projects/etl/jobs", json=body)
    assert r.status_code == 201, r.text
    r = await env.post(f"/projects/etl/jobs/{name}/runs")
    assert r.status_code in (201, 202), r.text
    return r.json()["number"]


async def run_state(env, job, number):
    return (await env.get(f"/projects/etl/jobs/{job}/runs/{number}")).json()


async def test_a_job_run_is_a_job_with_logs_and_end_state(env, project):
    number = await run_job(env, "report", sleep=2, timeout=600)
    namespace = "workbench-ana"
    found = await until(lambda: jobs_in(env.double, namespace, "report"), 60, "the Job")
    job = found[0]
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 600
    pod_spec = job["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": str(GiB)}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod_spec["volumes"]}
    assert "project-etl" in claims
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(project) in mounts
    assert pod_spec["serviceAccountName"] == "workbench"
    labels = job["metadata"]["labels"]
    assert labels["workbench.jupyter.org/job"] == "report"
    assert labels["app.kubernetes.io/managed-by"] == "workbench"

    # the log streams while the run goes: "started" arrives before the run has ended
    def follow():
        seen = []
        with env.api.stream(
            "GET", f"/projects/etl/jobs/report/runs/{number}/logs", params={"follow": "true"}
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                state = env.api.get(f"/projects/etl/jobs/report/runs/{number}").json()["state"]
                seen.append((line, state))
        return seen

    seen = await in_thread(follow)
    lines = [line for line, _ in seen]
    assert any(line.startswith("started in " + str(project)) for line in lines), lines
    assert lines[-1] == "finished"
    assert seen[0][1] == "running", "the first line came while the run was still going"
    final = await until(lambda: _ended(env, "report", number), 30, "the run's end state")
    assert final["state"] == "succeeded", final


async def _ended(env, job, number):
    state = await run_state(env, job, number)
    return state if state["state"] in ("succeeded", "failed", "stopped", "timed_out") else None


async def test_a_restarted_control_plane_adopts_the_running_job(env, project):
    number = await run_job(env, "long", sleep=6)
    await until(lambda: _state_is(env, "long", number, "running"), 60, "the run to be running")
    await until(lambda: job_pod_running(env.double, "long"), 60, "the Job's pod to run")
    creates = env.double.calls[("create", "jobs")]
    victim = env.wb.control_plane()
    victim.send_signal(signal.SIGKILL)
    await until(lambda: dead(victim), 10, "the control plane to die")
    # JupyterHub restarts its managed service; the new one re-finds the Job by label
    final = await until(lambda: _ended_or_none(env, "long", number), 120, "the adopted run's end")
    assert final["state"] == "succeeded", final
    assert env.double.calls[("create", "jobs")] == creates, "the run was started a second time"
    log = (await env.get(f"/projects/etl/jobs/long/runs/{number}/logs")).text
    assert "finished" in log


async def _state_is(env, job, number, state):
    try:
        return (await run_state(env, job, number))["state"] == state
    except httpx.HTTPError:
        return False


async def _ended_or_none(env, job, number):
    try:
        return await _ended(env, job, number)
    except (httpx.HTTPError, ValueError):
        return None


async def test_removing_a_collaborator_removes_their_project_volume(env, project):
    r = await in_thread(env.wb.user_token, "ben")
    ben = httpx.Client(base_url=env.wb.api_url, headers={"Authorization": f"token {r}"}, timeout=60)
    r = await in_thread(
        env.api.put, "/projects/etl/collaborators/ben", json={"role": "contributor"}
    )
    assert r.status_code == 200, r.text
    # ben runs a job: his namespace and his pair for etl appear
    r = await in_thread(ben.post, "/projects/etl/jobs", json={"name": "bens", "target": "work.py"})
    assert r.status_code == 201, r.text
    r = await in_thread(ben.post, "/projects/etl/jobs/bens/runs")
    assert r.status_code in (201, 202), r.text
    await until(lambda: claim_of(env.double, "ben"), 60, "ben's claim")
    await until(lambda: _ended_or_none(env, "bens", 1), 60, "ben's run")
    r = await in_thread(env.api.delete, "/projects/etl/collaborators/ben")
    assert r.status_code == 204, r.text
    await until(lambda: claim_of(env.double, "ben") is None, 30, "ben's claim to go")
    volumes = [
        v
        for v in env.double.objects("persistentvolumes")
        if v["spec"]["claimRef"]["namespace"] == "workbench-ben"
    ]
    assert volumes == []
    assert claim_of(env.double, "ana") is not None
    ben.close()


def job_pod_running(double, job: str) -> bool:
    return any(
        p["metadata"]["labels"].get("workbench.jupyter.org/job") == job
        and p["status"].get("phase") == "Running"
        for p in double.objects("pods", "workbench-ana")
    )


def dead(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def claim_of(double, user):
    return double.get("persistentvolumeclaims", "project-etl", f"workbench-{user}")


async def model_state(env, number):
    return (await env.get(f"/projects/etl/models/doubler/deployments/{number}")).json()


async def test_a_model_is_a_deployment_and_service(env, project):
    r = await env.post(
        "/projects/etl/models",
        json={"name": "doubler", "file": "predict.py", "function": "predict", "replicas": 2},
    )
    assert r.status_code == 201, r.text

    async def build():
        r = await env.post("/projects/etl/models/doubler/builds")
        assert r.status_code == 202, r.text
        number = r.json()["number"]

        async def done():
            b = (await env.get(f"/projects/etl/models/doubler/builds/{number}")).json()
            return b if b["state"] in ("succeeded", "failed") else None

        built = await until(done, 120, "the build")
        assert built["state"] == "succeeded", built
        return number

    async def deploy(build_number):
        r = await env.post(
            "/projects/etl/models/doubler/deployments",
            json={"build": build_number, "replicas": 2},
        )
        assert r.status_code == 202, r.text
        number = r.json()["number"]

        async def running():
            d = await model_state(env, number)
            if d["state"] == "failed" or (d["state"] == "running" and d["ready_replicas"] == 2):
                return d
            return None

        deployed = await until(running, 120, "the deployment")
        assert deployed["state"] == "running", deployed
        return deployed

    first = await deploy(await build())
    namespace = "workbench-ana"
    deployments = env.double.objects("deployments", namespace)
    assert len(deployments) == 1
    deployment = deployments[0]
    name = deployment["metadata"]["name"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["replicas"] == 2
    service = env.double.get("services", name, namespace)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"].endswith("/health")
    build_mounts = [m for m in container["volumeMounts"] if m.get("readOnly")]
    assert build_mounts, "the build is mounted read-only"

    # each replica answers at its pod's address with a key
    key = (await env.post("/projects/etl/models/doubler/keys", json={"description": "e2e"})).json()
    ips = replica_ips(env.double, name)
    assert len(ips) == 2
    answer = await in_thread(
        httpx.post,
        f"http://{ips[0]}:8080/models/etl/doubler/model",
        json={"accessKey": key["key"], "request": {"x": 21}},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["response"] == {"double": 42, "version": 1}

    # scaling patches the Deployment's replicas
    patches = env.double.calls[("patch", "deployments")]
    path = f"/projects/etl/models/doubler/deployments/{first['number']}"
    r = await env.patch(path, json={"replicas": 3})
    assert r.status_code == 200, r.text

    def scaled():
        return env.double.get("deployments", name, namespace)["spec"]["replicas"] == 3

    await until(lambda: scaled(), 30, "the scale")
    assert env.double.calls[("patch", "deployments")] > patches
    assert env.double.calls[("create", "deployments")] == 1

    # a redeploy of a new build patches the template: the same Deployment rolls out
    (project / "predict.py").write_text(PREDICT.replace("{version}", "2"))
    second = await deploy(await build())
    assert env.double.calls[("create", "deployments")] == 1
    assert (await model_state(env, first["number"]))["state"] == "superseded"
    answer = await in_thread(
        httpx.post,
        f"http://{replica_ips(env.double, name)[0]}:8080/models/etl/doubler/model",
        json={"accessKey": key["key"], "request": {"x": 1}},
        timeout=30,
    )
    assert answer.json()["response"] == {"double": 2, "version": 2}, "the new build serves"

    # a restarted control plane reconciles without writing anything
    writes = model_writes(env.double)
    victim = env.wb.control_plane()
    victim.send_signal(signal.SIGKILL)
    await until(lambda: dead(victim), 10, "the control plane to die")
    await until(lambda: _state_or_none(env, second["number"]), 120, "the control plane to return")
    await asyncio.sleep(3)  # a few reconciliations
    assert model_writes(env.double) == writes
    assert (await model_state(env, second["number"]))["state"] == "running"


async def _state_or_none(env, number):
    try:
        return await model_state(env, number)
    except (httpx.HTTPError, ValueError):
        return None


def replica_ips(double, name):
    """Pod IPs of the model's live replicas that run the Deployment's current template."""
    return [
        p["status"]["podIP"]
        for p in double.objects("pods", "workbench-ana")
        if p["metadata"]["labels"].get("workbench.jupyter.org/workload") == name
        and not p["metadata"].get("deletionTimestamp")
        and p["status"].get("phase") == "Running"
        and p["metadata"]["annotations"].get("workbench.jupyter.org/spec-hash")
        == double.get("deployments", name, "workbench-ana")["metadata"]["annotations"][
            "workbench.jupyter.org/spec-hash"
        ]
    ]


def model_writes(double) -> int:
    """Writes of Deployments and Services so far."""
    return sum(
        n
        for (verb, resource), n in double.calls.items()
        if verb in ("create", "patch", "delete") and resource in ("deployments", "services")
    )
