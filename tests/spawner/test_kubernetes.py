"""WorkbenchKubeSpawner over HTTP: KubeSpawner's own code (reflectors, watches, pod creation)
and our namespace management against the Kubernetes API test double (tests/kubeapi), or a
real cluster when KUBECONFIG is set (marker ``k8s``; docs/kubernetes.md says how).

Users ana and ben; ana's project ``demo`` is shared with ben (viewer), ana also has ``solo``.
"""

import asyncio

import kubernetes_validate
import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.spawner import SpawnException
from jupyterhub.user import User
from kubernetes_asyncio.client import ApiClient
from kubespawner import KubeSpawner
from kubespawner import clients as kubespawner_clients
from traitlets.config import Config

from tests.spawner.conftest import SERVICE_TOKEN, GiB
from workbench_hub.kube.api import KubeAPI
from workbench_spawner.kubernetes import WorkbenchKubeSpawner

pytestmark = pytest.mark.k8s

NAMESPACE_KINDS = [
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "ResourceQuota"),
    ("v1", "LimitRange"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("v1", "PersistentVolumeClaim"),
]
WORKLOAD_NODES = {"workbench.jupyter.org/node-purpose": "workloads"}
WORKLOAD_TOLERATION = {
    "key": "workbench.jupyter.org/workloads",
    "operator": "Exists",
    "effect": "NoSchedule",
}


def project(name, role, tmp_path):
    return {
        "name": name,
        "role": role,
        "path": str(tmp_path / "projects" / name),
        "read_only": role == "viewer",
    }


PROFILES = [
    {"name": "small", "display_name": "Small", "cpu": 0.5, "memory": GiB, "gpu": 0, "groups": []},
    {"name": "gpu", "display_name": "GPU", "cpu": 2, "memory": 4 * GiB, "gpu": 1, "groups": []},
]


@pytest.fixture
def options(routes, tmp_path):
    """ana: owner of demo and solo; ben: viewer of demo."""
    routes.spawn_options = {
        "ana": {
            "projects": [
                project("demo", "owner", tmp_path),
                project("solo", "owner", tmp_path),
            ],
            "profiles": PROFILES,
        },
        "ben": {"projects": [project("demo", "viewer", tmp_path)], "profiles": PROFILES},
    }
    return routes


@pytest.fixture
async def api(kube):
    """Our dict client on the same API server, for checking what exists."""
    client = ApiClient(configuration=await kube.configuration())
    yield KubeAPI(client)
    await client.close()


@pytest.fixture
async def spawn(kube, options, tmp_path):
    """`spawn(user, server, **traits)`: a WorkbenchKubeSpawner of that user's named server."""
    db = orm.new_session_factory("sqlite:///:memory:")()
    ml = orm.Group(name="ml")
    db.add_all([orm.User(name="ana", groups=[ml]), orm.User(name="ben"), ml])
    db.commit()
    config = Config()
    config.UserNamespaces.hub_namespace = "workbench"
    config.UserNamespaces.nfs_server = "nfs.example.org"
    config.UserNamespaces.nfs_export_root = "/exports/projects"
    config.UserNamespaces.group_quotas = {"ml": {"cpu": "16", "memory": "64Gi", "gpu": 0}}
    spawners = []

    def make(user, server, **traits):
        orm_user = db.query(orm.User).filter_by(name=user).one()
        if server not in orm_user.orm_spawners:
            db.add(orm.Spawner(user=orm_user, name=server))
            db.commit()
        settings = {
            "hub": Hub(base_url="/hub/"),
            "workbench_api_url": options.url,
            "workbench_api_token": SERVICE_TOKEN,
            "oauth_client_id": f"jupyterhub-user-{user}-{server}",
            "image": "jupyter-workbench/session:test",
            "node_selector": WORKLOAD_NODES,
            "tolerations": [WORKLOAD_TOLERATION],
            "start_timeout": 30,
            "k8s_api_host": kube.host,
            **traits,
        }
        spawner = User(orm_user, {"config": config})._new_spawner(
            server, spawner_class=WorkbenchKubeSpawner, **settings
        )
        spawner.api_token = f"token-{user}-{server}"
        spawners.append(spawner)
        return spawner

    yield make
    for spawner in spawners:
        if spawner.project:
            await spawner.stop(now=True)
    await KubeSpawner._stop_all_reflectors()
    kubespawner_clients._client_cache.clear()
    kubespawner_clients.load_config.cache_clear()


async def names(api, namespace, api_version, kind):
    items, _ = await api.list(api_version, kind, namespace)
    return sorted(item["metadata"]["name"] for item in items)


async def snapshot(api, namespace):
    """Every workbench object of a namespace, by kind, plus the user's volumes."""
    found = {kind: await names(api, namespace, v, kind) for v, kind in NAMESPACE_KINDS}
    volumes, _ = await api.list("v1", "PersistentVolume")
    found["PersistentVolume"] = sorted(
        v["metadata"]["name"]
        for v in volumes
        if v["spec"]["claimRef"]["namespace"] == namespace
        and not v["metadata"].get("deletionTimestamp")
    )
    return found


def validate_sent(obj):
    """Schema-check an object read back, without what the API server adds."""
    obj = {key: value for key, value in obj.items() if key != "status"}
    obj["metadata"] = {
        k: v
        for k, v in obj["metadata"].items()
        if k not in {"uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"}
    }
    for version in ("1.30.0", "1.37.0"):
        kubernetes_validate.validate(obj, version, strict=True)


def claims_of(pod):
    volumes = pod["spec"].get("volumes", [])
    return {
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    }


async def session_pod(api, spawner):
    pod = await api.get("v1", "Pod", spawner.pod_name, spawner.namespace)
    assert pod is not None, "no session pod"
    return pod


async def test_namespaces_volumes_and_pods_of_two_users(spawn, api, options, tmp_path):
    ana, ben = spawn("ana", "demo"), spawn("ben", "demo")
    url = await ana.start()
    pod_ip = (await session_pod(api, ana))["status"]["podIP"]
    assert url == f"http://{pod_ip}:8888", "the hub reaches the session at its pod's IP"
    await ben.start()
    assert (ana.namespace, ben.namespace) == ("workbench-ana", "workbench-ben")

    for spawner, projects in ((ana, ["demo", "solo"]), (ben, ["demo"])):
        namespace = await api.get("v1", "Namespace", spawner.namespace)
        labels = namespace["metadata"]["labels"]
        assert labels["workbench.jupyter.org/user"] == spawner.user.name
        found = await snapshot(api, spawner.namespace)
        assert found["ServiceAccount"].count("workbench") == 1
        assert found["Role"] == found["RoleBinding"] == ["workbench-spark"]
        assert found["ResourceQuota"] == ["workbench-quota"]
        assert found["LimitRange"] == ["workbench-limits"]
        assert found["NetworkPolicy"] == ["workbench-isolation"]
        assert found["PersistentVolumeClaim"] == [f"project-{p}" for p in projects]
        assert len(found["PersistentVolume"]) == len(projects)

    # ana is in group ml: the group's quota; ben gets the default one
    ana_quota = await api.get("v1", "ResourceQuota", "workbench-quota", "workbench-ana")
    ben_quota = await api.get("v1", "ResourceQuota", "workbench-quota", "workbench-ben")
    assert ana_quota["spec"]["hard"]["limits.cpu"] == "16"
    assert ben_quota["spec"]["hard"]["limits.cpu"] == "8"
    assert ben_quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "0"

    # the viewer's volume is read-only at the NFS level, bound to ben's claim only
    claim = await api.get("v1", "PersistentVolumeClaim", "project-demo", "workbench-ben")
    volume = await api.get("v1", "PersistentVolume", claim["spec"]["volumeName"])
    assert volume["spec"]["nfs"] == {
        "server": "nfs.example.org",
        "path": "/exports/projects/demo",
        "readOnly": True,
    }
    assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert volume["spec"]["claimRef"]["namespace"] == "workbench-ben"

    pod = await session_pod(api, ben)
    spec = pod["spec"]
    assert claims_of(pod) == {"project-demo"}, "ben's pod mounts only the projects ben may use"
    container = spec["containers"][0]
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts[str(tmp_path / "projects" / "demo")] is True
    assert container["workingDir"] == str(tmp_path / "projects" / "demo")
    assert spec["serviceAccountName"] == "workbench"
    assert spec["nodeSelector"] == WORKLOAD_NODES
    assert WORKLOAD_TOLERATION in spec["tolerations"]
    resources = container["resources"]
    assert float(resources["limits"]["cpu"]) == 0.5
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WORKBENCH_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["WORKBENCH_PROJECT"]["value"] == "demo"
    assert env["WORKBENCH_READ_ONLY"]["value"] == "1"
    assert "--ServerApp.terminals_enabled=False" in container["args"]

    ana_pod = await session_pod(api, ana)
    assert claims_of(ana_pod) == {"project-demo", "project-solo"}
    await ana._audit_task
    assert "session.started" in [e["action"] for e in options.events]

    # everything sent (ours and KubeSpawner's pods) is valid for the oldest and newest versions
    checked = 0
    for api_version, kind in [*NAMESPACE_KINDS, ("v1", "Pod")]:
        for namespace in ("workbench-ana", "workbench-ben"):
            items, _ = await api.list(api_version, kind, namespace)
            for item in items:
                if item["metadata"]["name"] != "default":  # the API server's own account
                    validate_sent(item)
                    checked += 1
    for kind in ("Namespace", "PersistentVolume"):
        items, _ = await api.list("v1", kind, labels={"app.kubernetes.io/managed-by": "workbench"})
        for item in items:
            validate_sent(item)
            checked += 1
    assert checked == 22  # 2 namespaces x 6 objects, 3 claims, 2 pods, 2 namespaces, 3 volumes


async def test_starting_again_creates_nothing_and_prunes_lost_projects(
    spawn, api, options, tmp_path, kube
):
    ana = spawn("ana", "demo")
    await ana.start()
    before = await snapshot(api, "workbench-ana")
    state = ana.get_state()
    assert "Namespace/workbench-ana" in state["namespace_objects"]
    await ana.stop()

    again = spawn("ana", "demo")
    again.load_state(state)
    await again.start()
    assert await snapshot(api, "workbench-ana") == before, "a second start made duplicates"
    await again.stop()

    # ana lost solo: the next start removes her pair of it, and only that
    options.spawn_options["ana"]["projects"] = [project("demo", "owner", tmp_path)]
    third = spawn("ana", "demo")
    await third.start()
    after = await snapshot(api, "workbench-ana")
    assert after["PersistentVolumeClaim"] == ["project-demo"]
    assert len(after["PersistentVolume"]) == 1
    assert after["Role"] == before["Role"]


async def test_gpu_profile_refused_by_the_namespace_quota(spawn, options):
    """ben's quota allows no GPU: the API server refuses the pod and the hub says why."""
    ben = spawn("ben", "demo", start_timeout=10)
    ben.user_options = {"profile": "gpu"}
    with pytest.raises(SpawnException) as refused:
        await ben.start()
    message = refused.value.log_message
    assert message.startswith("Your namespace's quota does not allow this session")
    assert "requests.nvidia.com/gpu=1" in message
    assert "HTTP response" not in message


async def test_spawn_refused_without_a_role(spawn):
    ben = spawn("ben", "solo")
    with pytest.raises(SpawnException, match="no role on project solo"):
        await ben.start()


async def test_opt_in_cleanup_deletes_namespace_and_volumes(spawn, api, kube):
    ana = spawn("ana", "demo")
    await ana.start()
    await ana.stop()
    kept = spawn("ana", "demo")
    await kept.delete_forever()
    assert await api.get("v1", "Namespace", "workbench-ana") is not None, "clean-up is opt-in"

    ana.user_namespaces.delete_on_user_removal = True
    await ana.delete_forever()
    for _ in range(100):
        if await api.get("v1", "Namespace", "workbench-ana") is None:
            break
        await asyncio.sleep(0.1)
    assert await api.get("v1", "Namespace", "workbench-ana") is None
    volumes, _ = await api.list(
        "v1", "PersistentVolume", labels={"workbench.jupyter.org/user": "ana"}
    )
    assert volumes == []
