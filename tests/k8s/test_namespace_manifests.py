"""The per-user namespace builders: schema validation for 1.30-1.37 and their behaviour."""

import copy

import kubernetes_validate
import pytest

from workbench_hub.kube import namespace_objects as ns
from workbench_hub.kube.namespace_objects import is_dns_label

# Oldest and newest Kubernetes versions we support.
VERSIONS = ["1.30.0", "1.37.0"]

USER = "Alice.Smith@example.org"
NAMESPACE = "wb-alice"
HUB_NAMESPACE = "workbench"
COMMON_LABELS = {
    "app.kubernetes.io/name": "jupyter-workbench",
    "app.kubernetes.io/managed-by": "workbench",
}
EXTRA_EGRESS = {
    "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
    "ports": [{"protocol": "TCP", "port": 5432}],
}


def all_objects(**overrides):
    """A full namespace with every optional part switched on: GPU, pods, max, API, extras."""
    kwargs = dict(
        hub_namespace=HUB_NAMESPACE,
        control_plane_port=8765,
        cpu=4,
        memory="16Gi",
        gpu=1,
        pods=20,
        default_cpu="500m",
        default_memory="1Gi",
        max_cpu=2,
        max_memory=8 << 30,
        nfs_server="nfs.example.org",
        export_root="/exports/projects",
        projects={"churn": False, "shared-data": True},
        api_server_cidrs=["10.96.0.1/32"],
        extra_egress=[EXTRA_EGRESS],
    )
    kwargs.update(overrides)
    return ns.make_namespace_objects(NAMESPACE, USER, **kwargs)


def every_built_object():
    """(id, object) for every builder, with and without its optional arguments."""
    objects = [(f"full-{obj['kind']}-{obj['metadata']['name']}", obj) for obj in all_objects()]
    objects += [
        (
            f"minimal-{obj['kind']}",
            obj,
        )
        for obj in ns.make_namespace_objects(
            NAMESPACE,
            "bob",
            hub_namespace=HUB_NAMESPACE,
            control_plane_port=8765,
            cpu=0.5,
            memory=512 << 20,
            default_cpu=0.25,
            default_memory=256 << 20,
            nfs_server="10.0.0.5",
            export_root="/",
            hub_api_port=None,
        )
    ]
    objects += [
        ("namespace-labels", ns.make_namespace(NAMESPACE, USER, {"team": "data"})),
        ("quota-no-gpu", ns.make_resource_quota(NAMESPACE, "1500m", 123456789, user=USER)),
        ("limits-no-max", ns.make_limit_range(NAMESPACE, 1, "2Gi", user=USER)),
        ("pvc-no-project", ns.make_project_claim(NAMESPACE, "c", "v", "1Gi", user=USER)),
    ]
    return objects


BUILT = every_built_object()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("obj", [obj for _, obj in BUILT], ids=[name for name, _ in BUILT])
def test_validates_strictly(obj, version):
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "path",
    [("metadata",), ("spec",), ("spec", "nfs"), ("spec", "claimRef")],
    ids=["metadata", "spec", "nfs", "claimRef"],
)
def test_validator_rejects_unknown_field(path, version):
    obj = copy.deepcopy(next(o for o in all_objects() if o["kind"] == "PersistentVolume"))
    target = obj
    for key in path:
        target = target[key]
    target["readonly"] = True  # misspelt readOnly
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_validator_rejects_misspelt_top_level_field(version):
    sa = ns.make_service_account(NAMESPACE, "workbench", user=USER)
    del sa["automountServiceAccountToken"]
    sa["automountServiceAcountToken"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sa, version, strict=True)


def test_every_object_is_labelled_and_named():
    for _, obj in BUILT:
        labels = obj["metadata"]["labels"]
        assert COMMON_LABELS.items() <= labels.items()
        assert labels["app.kubernetes.io/component"]
        assert is_dns_label(labels["workbench.jupyter.org/user"])
        assert is_dns_label(obj["metadata"]["name"])
        if obj["kind"] not in ("Namespace", "PersistentVolume"):
            assert obj["metadata"]["namespace"] == NAMESPACE
        else:
            assert "namespace" not in obj["metadata"]


def test_creation_order():
    kinds = [obj["kind"] for obj in all_objects()]
    assert kinds == [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ResourceQuota",
        "LimitRange",
        "NetworkPolicy",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "PersistentVolume",
        "PersistentVolumeClaim",
    ]


AWKWARD = [
    "alice",
    "Alice",
    "ALICE",
    "alice.smith",
    "alice_smith",
    "alice-smith",
    "alice@example.org",
    "alice@example-org",
    "-alice-",
    "a" * 63,
    "a" * 64,
    "a" * 200,
    "a" * 199 + "b",
    "jöhn",
    "john",
    "日本語",
    "中文",
    "😀",
    "1234",
    "x",
]


def test_slugs_are_dns_labels_and_distinct():
    slugs = [ns.safe_slug(name) for name in AWKWARD]
    assert all(is_dns_label(slug) for slug in slugs), slugs
    assert len(set(slugs)) == len(AWKWARD)
    assert ns.safe_slug("alice") == "alice"  # valid names are kept
    assert ns.safe_slug("Alice").startswith("alice-")
    assert ns.safe_slug("Alice") == ns.safe_slug("Alice")  # stable


def test_user_namespace_name():
    assert ns.user_namespace_name("wb-{username}", "alice") == "wb-alice"
    names = [ns.user_namespace_name("workbench-user-{username}", name) for name in AWKWARD]
    assert all(is_dns_label(name) and name.startswith("workbench-user-") for name in names)
    assert len(set(names)) == len(AWKWARD)
    assert ns.user_namespace_name("{username}", "a" * 63) == "a" * 63


@pytest.mark.parametrize("template", ["WB-{username}", "wb_{username}", "{user}", "{username}-"])
def test_user_namespace_name_rejects_bad_templates(template):
    with pytest.raises(ValueError):
        ns.user_namespace_name(template, "alice")


def test_user_namespace_name_rejects_template_without_room():
    with pytest.raises(ValueError):
        ns.user_namespace_name("w" * 60 + "{username}", "alice")


def test_volume_and_claim_are_prebound():
    objects = all_objects()
    volumes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolume"}
    claims = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    assert len(volumes) == len(claims) == 2
    for name, claim in claims.items():
        volume = volumes[claim["spec"]["volumeName"]]
        assert volume["spec"]["claimRef"] == {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": NAMESPACE,
            "name": name,
        }
        assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        assert volume["spec"]["storageClassName"] == claim["spec"]["storageClassName"] == ""
        assert volume["spec"]["accessModes"] == claim["spec"]["accessModes"]
        project = claim["metadata"]["labels"]["workbench.jupyter.org/project"]
        assert volume["metadata"]["labels"]["workbench.jupyter.org/project"] == project
        assert volume["spec"]["nfs"]["path"] == f"/exports/projects/{project}"
        assert volume["spec"]["nfs"]["server"] == "nfs.example.org"


@pytest.mark.parametrize(("read_only", "mode"), [(False, "ReadWriteMany"), (True, "ReadOnlyMany")])
def test_read_only_flag(read_only, mode):
    pv = ns.make_project_volume(
        "v", "nfs", "/exports/", "churn", NAMESPACE, "c", read_only=read_only, user=USER
    )
    pvc = ns.make_project_claim(NAMESPACE, "c", "v", read_only=read_only, user=USER)
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == [mode]
    assert pv["spec"]["nfs"] == {"server": "nfs", "path": "/exports/churn", "readOnly": read_only}


@pytest.mark.parametrize("project", ["../etc", "a/b", "", "Churn"])
def test_project_volume_refuses_unsafe_project(project):
    with pytest.raises(ValueError):
        ns.make_project_volume("v", "nfs", "/exports", project, NAMESPACE, "c", user=USER)


def test_project_volume_names():
    pv_a, pvc_a = ns.project_volume_names("wb-alice", "churn")
    pv_b, pvc_b = ns.project_volume_names("wb-bob", "churn")
    assert pv_a != pv_b
    assert pvc_a == pvc_b == "project-churn"
    assert ns.project_volume_names("wb-alice", "churn") == (pv_a, pvc_a)  # stable
    # names that would concatenate to the same string stay apart
    assert ns.project_volume_names("a-b", "c")[0] != ns.project_volume_names("a", "b-c")[0]
    long_ns, long_project = "n" * 63, "p" * 63
    pairs = {
        ns.project_volume_names(long_ns, long_project),
        ns.project_volume_names(long_ns, "p" * 62 + "q"),
        ns.project_volume_names("n" * 62 + "m", long_project),
    }
    assert len({pv for pv, _ in pairs}) == 3
    for pv, pvc in pairs:
        assert is_dns_label(pv) and is_dns_label(pvc)


def test_spark_role_rules_are_exact():
    role = ns.make_spark_role(NAMESPACE, "spark", user=USER)
    assert role["kind"] == "Role"
    assert role["metadata"]["namespace"] == NAMESPACE
    crud = ["create", "get", "list", "watch", "delete", "deletecollection"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": [*crud, "patch"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": crud},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": crud},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": crud},
        {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": ["get", "list"]},
    ]
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no nonResourceURLs
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


def test_role_binding_and_service_account():
    binding = ns.make_role_binding(NAMESPACE, "spark", "spark-role", "sessions", user=USER)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "spark-role",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sessions", "namespace": NAMESPACE}
    ]
    sa = ns.make_service_account(NAMESPACE, "sessions", user=USER)
    assert sa["automountServiceAccountToken"] is True


def test_namespace_labels_and_annotation():
    namespace = ns.make_namespace(NAMESPACE, USER, {"team": "data"})
    labels = namespace["metadata"]["labels"]
    assert labels["team"] == "data"
    assert labels["workbench.jupyter.org/user"] == ns.safe_slug(USER)
    assert labels["app.kubernetes.io/component"] == "user-namespace"
    assert namespace["metadata"]["annotations"] == {"workbench.jupyter.org/username": USER}


def test_quota_with_and_without_gpu():
    with_gpu = ns.make_resource_quota(NAMESPACE, 4, "16Gi", gpu=2, pods=10, user=USER)
    assert with_gpu["spec"]["hard"] == {
        "requests.cpu": "4",
        "limits.cpu": "4",
        "requests.memory": "16Gi",
        "limits.memory": "16Gi",
        "requests.nvidia.com/gpu": "2",
        "pods": "10",
    }
    without = ns.make_resource_quota(NAMESPACE, 0.5, 3 << 29, user=USER)
    assert without["spec"]["hard"] == {
        "requests.cpu": "500m",
        "limits.cpu": "500m",
        "requests.memory": "1536Mi",
        "limits.memory": "1536Mi",
        "requests.nvidia.com/gpu": "0",  # no GPU pods at all
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [(4, "4"), (0.5, "500m"), ("250m", "250m"), ("1.5", "1.5"), (2.0, "2")],
)
def test_cpu_quantity(value, expected):
    assert ns.cpu_quantity(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1 << 30, "1Gi"), (512 << 20, "512Mi"), (1000, "1000"), ("2Gi", "2Gi"), ("500M", "500M")],
)
def test_memory_quantity(value, expected):
    assert ns.memory_quantity(value) == expected


@pytest.mark.parametrize("value", ["lots", "1.5Gi", "-1", True, "4 Gi"])
def test_bad_quantities_are_refused(value):
    with pytest.raises(ValueError):
        ns.memory_quantity(value)
    with pytest.raises(ValueError):
        ns.cpu_quantity(value)


def test_limit_range():
    limits = ns.make_limit_range(NAMESPACE, "500m", "1Gi", 2, "8Gi", user=USER)
    assert limits["spec"]["limits"] == [
        {
            "type": "Container",
            "default": {"cpu": "500m", "memory": "1Gi"},
            "defaultRequest": {"cpu": "500m", "memory": "1Gi"},
            "max": {"cpu": "2", "memory": "8Gi"},
        }
    ]
    assert "max" not in ns.make_limit_range(NAMESPACE, 1, "1Gi", user=USER)["spec"]["limits"][0]


def namespace_peer(name):
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def test_network_policy_exact_rules():
    policy = ns.make_network_policy(
        NAMESPACE,
        HUB_NAMESPACE,
        8765,
        ["10.96.0.1/32", "192.168.1.10"],
        [EXTRA_EGRESS],
        user=USER,
    )
    spec = policy["spec"]
    assert spec["podSelector"] == {}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"from": [{"podSelector": {}}, namespace_peer(HUB_NAMESPACE)]}]
    assert spec["egress"] == [
        {"to": [{"podSelector": {}}]},
        {
            "to": [namespace_peer(HUB_NAMESPACE)],
            "ports": [{"protocol": "TCP", "port": 8765}, {"protocol": "TCP", "port": 8081}],
        },
        {
            "to": [namespace_peer("kube-system")],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
        {
            "to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}, {"ipBlock": {"cidr": "192.168.1.10/32"}}],
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
        },
        EXTRA_EGRESS,
    ]


def test_network_policy_without_api_cidrs_opens_nothing_extra():
    policy = ns.make_network_policy(NAMESPACE, HUB_NAMESPACE, 8765, user=USER, hub_api_port=None)
    egress = policy["spec"]["egress"]
    assert len(egress) == 3  # no rule with an empty `to` (which would allow everything)
    assert all(rule["to"] for rule in egress)
    assert egress[1]["ports"] == [{"protocol": "TCP", "port": 8765}]


def test_network_policy_refuses_bad_cidr():
    with pytest.raises(ValueError):
        ns.make_network_policy(NAMESPACE, HUB_NAMESPACE, 8765, ["not-a-cidr"], user=USER)


def test_builders_refuse_invalid_names():
    with pytest.raises(ValueError):
        ns.make_service_account("Bad_NS", "sa", user=USER)
    with pytest.raises(ValueError):
        ns.make_spark_role(NAMESPACE, "Spark", user=USER)
    with pytest.raises(ValueError):
        ns.make_project_volume("v", "nfs", "relative/path", "p", NAMESPACE, "c", user=USER)
