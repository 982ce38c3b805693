"""Pure builders for the Kubernetes objects of one user's namespace (issue 5).

Every function returns a plain, JSON-ready dict and makes no API call; the spawner creates them
in the order `make_namespace_objects` returns them. Names are DNS-1123 labels; every object
carries the `app.kubernetes.io/*` labels and the user's label, so the hub can find what it
created by label selector.
"""

import copy
import hashlib
import ipaddress
import json
import posixpath
import re
from collections.abc import Iterable, Mapping

APP_NAME = "jupyter-workbench"
MANAGED_BY = "workbench"
USER_LABEL = "workbench.jupyter.org/user"
PROJECT_LABEL = "workbench.jupyter.org/project"
USERNAME_ANNOTATION = "workbench.jupyter.org/username"

DNS_LABEL_MAX = 63
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HASH_LENGTH = 8
_CPU = re.compile(r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$")
_MEMORY = re.compile(r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_GPU_RESOURCE = "nvidia.com/gpu"

SPARK_ROLE_RULES = (
    ("pods", ("create", "get", "list", "watch", "delete", "deletecollection", "patch")),
    ("services", ("create", "get", "list", "watch", "delete", "deletecollection")),
    ("configmaps", ("create", "get", "list", "watch", "delete", "deletecollection")),
    ("persistentvolumeclaims", ("create", "get", "list", "watch", "delete", "deletecollection")),
    # workbench.spark sizes dynamic allocation to what the namespace's quota still allows
    ("resourcequotas", ("get", "list")),
)


def digest(value: object) -> str:
    """A short, stable digest of a JSON-ready value (objects as applied, volume identities)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def is_dns_label(name: str) -> bool:
    """Whether `name` is a DNS-1123 label (1 to 63 of ``[a-z0-9-]``, alphanumeric at both ends)."""
    return len(name) <= DNS_LABEL_MAX and bool(_DNS_LABEL.match(name))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_LENGTH]


def _shorten(name: str, key: str, max_length: int) -> str:
    """`name` cut to leave room for ``-<hash of key>``, plus that suffix."""
    prefix = name[: max_length - _HASH_LENGTH - 1].rstrip("-")
    return f"{prefix}-{_hash(key)}" if prefix else f"x-{_hash(key)}"[:max_length]


def safe_slug(name: str, max_length: int = DNS_LABEL_MAX) -> str:
    """A DNS label for `name`: lower case, ``[a-z0-9-]``, at most `max_length` characters.

    A name that is already a valid label of that length is kept as it is; any other name gets a
    short hash of the original appended, so two different names never share a slug.
    """
    if max_length < _HASH_LENGTH + 2:
        raise ValueError(f"no room for a safe slug in {max_length} characters")
    if is_dns_label(name) and len(name) <= max_length:
        return name
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return _shorten(slug, name, max_length)


def user_label(username: str) -> str:
    """The value of the `workbench.jupyter.org/user` label for `username`."""
    return safe_slug(username)


def user_namespace_name(template: str, username: str) -> str:
    """The user's namespace: `template` with ``{username}`` replaced by a safe slug.

    The slug is shortened (with its hash suffix) so that the whole name fits in 63 characters.
    Raises ValueError when the template has other fields or the result is not a DNS label.
    """
    try:
        fixed = len(template.format(username=""))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"namespace template {template!r} must only use {{username}}") from e
    name = template.format(username=safe_slug(username, max(DNS_LABEL_MAX - fixed, 0)))
    if not is_dns_label(name):
        raise ValueError(f"namespace {name!r} from template {template!r} is not a DNS label")
    return name


def project_volume_names(namespace: str, project: str) -> tuple[str, str]:
    """``(pv_name, pvc_name)`` for `project` in `namespace`.

    The PersistentVolume is cluster-scoped, so its name includes the namespace and always ends
    with a hash of ``namespace/project`` (names such as ``a-b`` + ``c`` and ``a`` + ``b-c``
    stay apart). The claim only has to be unique in its namespace.
    """
    _check_name("namespace", namespace)
    _check_name("project", project)
    pv_name = _shorten(f"wb-{namespace}-{project}", f"{namespace}/{project}", DNS_LABEL_MAX)
    return pv_name, safe_slug(f"project-{project}")


def _check_name(kind: str, name: str) -> str:
    if not is_dns_label(name):
        raise ValueError(f"{kind} name {name!r} is not a DNS label")
    return name


def _labels(component: str, user: str, extra: Mapping[str, str] | None = None) -> dict:
    labels = {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": component,
        USER_LABEL: user_label(user),
    }
    labels.update(extra or {})
    return labels


def _metadata(name: str, component: str, user: str, namespace: str | None = None, **extra):
    metadata = {"name": _check_name("object", name)}
    if namespace is not None:
        metadata["namespace"] = _check_name("namespace", namespace)
    metadata["labels"] = _labels(component, user, extra.get("labels"))
    return metadata


def cpu_quantity(value: str | int | float) -> str:
    """A CPU quantity string: ``4``, ``0.5`` → ``500m``; strings such as ``500m`` are kept."""
    if isinstance(value, bool):
        raise ValueError(f"not a CPU quantity: {value!r}")
    if isinstance(value, str):
        quantity = value
    elif float(value).is_integer():
        quantity = str(int(value))
    else:
        quantity = f"{round(float(value) * 1000)}m"
    if not _CPU.match(quantity):
        raise ValueError(f"not a CPU quantity: {value!r}")
    return quantity


def memory_quantity(value: str | int) -> str:
    """A memory quantity string: bytes as ``…Gi``/``…Mi`` when exact, else the integer."""
    if isinstance(value, bool):
        raise ValueError(f"not a memory quantity: {value!r}")
    if isinstance(value, int):
        for suffix, size in (("Gi", 1 << 30), ("Mi", 1 << 20)):
            if value and value % size == 0:
                return f"{value // size}{suffix}"
        value = str(value)
    if not isinstance(value, str) or not _MEMORY.match(value):
        raise ValueError(f"not a memory quantity: {value!r}")
    return value


def make_namespace(name: str, user: str, labels: Mapping[str, str] | None = None) -> dict:
    """The user's Namespace, labelled with the user's slug and annotated with the real name."""
    metadata = _metadata(name, "user-namespace", user, labels=labels)
    metadata["annotations"] = {USERNAME_ANNOTATION: user}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def make_service_account(namespace: str, name: str, *, user: str) -> dict:
    """The ServiceAccount of sessions and Spark executors; its token is mounted (Spark needs it)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(name, "service-account", user, namespace),
        "automountServiceAccountToken": True,
    }


def make_spark_role(namespace: str, name: str, *, user: str) -> dict:
    """A Role with only what Spark on Kubernetes needs in its own namespace.

    Pods (driver and executors), services and config maps (the driver's), and claims
    (executors' on-demand volumes). Nothing cluster-scoped: this is a Role, not a ClusterRole.
    """
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(name, "spark-role", user, namespace),
        "rules": [
            {"apiGroups": [""], "resources": [resource], "verbs": list(verbs)}
            for resource, verbs in SPARK_ROLE_RULES
        ],
    }


def make_role_binding(
    namespace: str, name: str, role: str, service_account: str, *, user: str
) -> dict:
    """Binds the Role `role` to the ServiceAccount `service_account`, both in `namespace`."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(name, "spark-role-binding", user, namespace),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": _check_name("role", role),
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": _check_name("service account", service_account),
                "namespace": namespace,
            }
        ],
    }


def make_resource_quota(
    namespace: str,
    cpu: str | int | float,
    memory: str | int,
    gpu: int = 0,
    pods: int | None = None,
    *,
    user: str,
    name: str = "workbench-quota",
) -> dict:
    """A ResourceQuota capping the namespace's CPU and memory (requests and limits).

    ``requests.nvidia.com/gpu`` is always set, so a quota of 0 GPUs forbids GPU pods in the
    namespace whatever a pod asks for; ``pods`` only when given.
    """
    hard = {
        "requests.cpu": cpu_quantity(cpu),
        "limits.cpu": cpu_quantity(cpu),
        "requests.memory": memory_quantity(memory),
        "limits.memory": memory_quantity(memory),
    }
    if gpu < 0 or (pods is not None and pods < 0):
        raise ValueError("gpu and pods must not be negative")
    hard[f"requests.{_GPU_RESOURCE}"] = str(int(gpu))
    if pods is not None:
        hard["pods"] = str(int(pods))
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _metadata(name, "resource-quota", user, namespace),
        "spec": {"hard": hard},
    }


def make_limit_range(
    namespace: str,
    default_cpu: str | int | float,
    default_memory: str | int,
    max_cpu: str | int | float | None = None,
    max_memory: str | int | None = None,
    *,
    user: str,
    name: str = "workbench-limits",
) -> dict:
    """A LimitRange giving containers without resources a default (and request), and a max.

    The quota counts requests and limits, so a container without them would be refused; the
    defaults fill them in.
    """
    default = {"cpu": cpu_quantity(default_cpu), "memory": memory_quantity(default_memory)}
    limit = {"type": "Container", "default": default, "defaultRequest": dict(default)}
    maximum = {}
    if max_cpu is not None:
        maximum["cpu"] = cpu_quantity(max_cpu)
    if max_memory is not None:
        maximum["memory"] = memory_quantity(max_memory)
    if maximum:
        limit["max"] = maximum
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _metadata(name, "limit-range", user, namespace),
        "spec": {"limits": [limit]},
    }


def _namespace_peer(namespace: str) -> dict:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def make_network_policy(
    namespace: str,
    hub_namespace: str,
    control_plane_port: int,
    api_server_cidrs: Iterable[str] = (),
    extra_egress: Iterable[Mapping] = (),
    *,
    user: str,
    hub_api_port: int | None = 8081,
    name: str = "workbench-isolation",
) -> dict:
    """A NetworkPolicy isolating every pod of the namespace.

    Ingress only from the namespace itself and from the hub's namespace (proxy and hub).
    Egress to the namespace itself, to the hub's namespace on the control plane port (and the
    hub API port, which sessions use to check tokens; None leaves it out), to DNS in
    kube-system (UDP and TCP 53), to the Kubernetes API (443 and 6443 on `api_server_cidrs`;
    no rule when none are given) and the `extra_egress` rules as given.
    """
    hub_ports = [control_plane_port] + ([hub_api_port] if hub_api_port is not None else [])
    egress = [
        {"to": [{"podSelector": {}}]},
        {
            "to": [_namespace_peer(hub_namespace)],
            "ports": [{"protocol": "TCP", "port": port} for port in hub_ports],
        },
        {
            "to": [_namespace_peer("kube-system")],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
    ]
    cidrs = [str(ipaddress.ip_network(cidr)) for cidr in api_server_cidrs]
    if cidrs:
        egress.append(
            {
                "to": [{"ipBlock": {"cidr": cidr}} for cidr in cidrs],
                "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
            }
        )
    egress.extend(copy.deepcopy(dict(rule)) for rule in extra_egress)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, "network-policy", user, namespace),
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {}}, _namespace_peer(hub_namespace)]}],
            "egress": egress,
        },
    }


def _access_modes(read_only: bool) -> list[str]:
    return ["ReadOnlyMany" if read_only else "ReadWriteMany"]


def nfs_volume_source(nfs_server: str, path: str, read_only: bool, csi_driver: str = "") -> dict:
    """A PersistentVolume's source for an NFS directory: in-tree ``nfs``, or the share through
    the CSI driver `csi_driver` (e.g. ``nfs.csi.k8s.io``)."""
    if csi_driver:
        return {
            "csi": {
                "driver": csi_driver,
                "volumeHandle": f"{nfs_server}#{path}",
                "volumeAttributes": {"server": nfs_server, "share": path},
                "readOnly": read_only,
            }
        }
    return {"nfs": {"server": nfs_server, "path": path, "readOnly": read_only}}


def nfs_volume_spec(
    nfs_server: str,
    path: str,
    read_only: bool,
    claim_namespace: str,
    claim_name: str,
    capacity: str = "10Gi",
    csi_driver: str = "",
    storage_class: str = "",
) -> dict:
    """The spec of a static NFS PersistentVolume (Retain) pre-bound to one claim."""
    return {
        "capacity": {"storage": memory_quantity(capacity)},
        "accessModes": _access_modes(read_only),
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": storage_class,
        "volumeMode": "Filesystem",
        **nfs_volume_source(nfs_server, path, read_only, csi_driver),
        "claimRef": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": claim_namespace,
            "name": claim_name,
        },
    }


def claim_spec(
    volume_name: str, capacity: str = "10Gi", read_only: bool = False, storage_class: str = ""
) -> dict:
    """The spec of a claim bound to the static volume `volume_name`."""
    return {
        "accessModes": _access_modes(read_only),
        "resources": {"requests": {"storage": memory_quantity(capacity)}},
        "storageClassName": storage_class,
        "volumeMode": "Filesystem",
        "volumeName": volume_name,
    }


def make_project_volume(
    name: str,
    nfs_server: str,
    export_root: str,
    project: str,
    claim_namespace: str,
    claim_name: str,
    capacity: str = "10Gi",
    read_only: bool = False,
    *,
    user: str,
    csi_driver: str = "",
    storage_class: str = "",
) -> dict:
    """A static NFS PersistentVolume for ``<export_root>/<project>``, pre-bound to one claim.

    Reclaim policy Retain (deleting the claim never deletes project files). By default an
    in-tree ``nfs`` volume with no storage class, so no provisioner takes it; with
    `csi_driver` (e.g. ``nfs.csi.k8s.io``) the same share through that CSI driver, in
    `storage_class` (whose mount options then apply).
    """
    _check_name("project", project)
    if not export_root.startswith("/"):
        raise ValueError(f"NFS export root {export_root!r} must be an absolute path")
    path = posixpath.join(export_root.rstrip("/") or "/", project)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": _metadata(name, "project-volume", user, labels={PROJECT_LABEL: project}),
        "spec": nfs_volume_spec(
            nfs_server,
            path,
            read_only,
            _check_name("namespace", claim_namespace),
            _check_name("claim", claim_name),
            capacity,
            csi_driver,
            storage_class,
        ),
    }


def make_project_claim(
    namespace: str,
    name: str,
    volume_name: str,
    capacity: str = "10Gi",
    read_only: bool = False,
    *,
    user: str,
    project: str | None = None,
    storage_class: str = "",
) -> dict:
    """The PersistentVolumeClaim bound to the project's volume `volume_name` (same class)."""
    extra = {PROJECT_LABEL: _check_name("project", project)} if project else None
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(name, "project-claim", user, namespace, labels=extra),
        "spec": claim_spec(_check_name("volume", volume_name), capacity, read_only, storage_class),
    }


def make_namespace_objects(
    namespace: str,
    user: str,
    *,
    hub_namespace: str,
    control_plane_port: int,
    cpu: str | int | float,
    memory: str | int,
    default_cpu: str | int | float,
    default_memory: str | int,
    nfs_server: str,
    export_root: str,
    projects: Mapping[str, bool] | None = None,
    gpu: int = 0,
    pods: int | None = None,
    max_cpu: str | int | float | None = None,
    max_memory: str | int | None = None,
    api_server_cidrs: Iterable[str] = (),
    extra_egress: Iterable[Mapping] = (),
    hub_api_port: int | None = 8081,
    service_account: str = "workbench",
    role: str = "workbench-spark",
    capacity: str = "10Gi",
    namespace_labels: Mapping[str, str] | None = None,
) -> list[dict]:
    """Every object of one user's namespace, in creation order.

    Namespace, ServiceAccount, Role, RoleBinding, ResourceQuota, LimitRange, NetworkPolicy,
    then for each of `projects` (name → read-only) its PersistentVolume and then its claim.
    """
    objects = [
        make_namespace(namespace, user, namespace_labels),
        make_service_account(namespace, service_account, user=user),
        make_spark_role(namespace, role, user=user),
        make_role_binding(namespace, role, role, service_account, user=user),
        make_resource_quota(namespace, cpu, memory, gpu, pods, user=user),
        make_limit_range(namespace, default_cpu, default_memory, max_cpu, max_memory, user=user),
        make_network_policy(
            namespace,
            hub_namespace,
            control_plane_port,
            api_server_cidrs,
            extra_egress,
            user=user,
            hub_api_port=hub_api_port,
        ),
    ]
    for project, read_only in sorted((projects or {}).items()):
        pv_name, pvc_name = project_volume_names(namespace, project)
        objects.append(
            make_project_volume(
                pv_name,
                nfs_server,
                export_root,
                project,
                namespace,
                pvc_name,
                capacity,
                read_only,
                user=user,
            )
        )
        objects.append(
            make_project_claim(
                namespace, pvc_name, pv_name, capacity, read_only, user=user, project=project
            )
        )
    return objects
