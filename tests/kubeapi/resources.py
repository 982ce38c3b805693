"""The table of resource types the double serves, and the discovery documents built from it.

One :class:`ResourceType` row per resource: everything generic code needs (group, version,
scope, name rule, whether it has a ``status`` subresource, what DELETE returns, the default
propagation policy) lives here, so adding a kind is one line.
"""

from __future__ import annotations

from dataclasses import dataclass

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    """One API resource, e.g. ``pods`` in core/v1."""

    plural: str
    kind: str
    group: str = ""
    version: str = "v1"
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    #: metadata.name rule: "subdomain" (RFC 1123), "label" (RFC 1123 label), "dns1035"
    #: (must start with a letter) or "path" (anything but "/", "%", "." and "..").
    name_rule: str = "subdomain"
    status_subresource: bool = False
    #: DELETE answers with the object (True) or with a ``Status`` of success (False).
    returns_deleted: bool = False
    #: used when a DELETE gives no propagationPolicy (batch/v1 Jobs orphan their pods).
    default_propagation: str = "Background"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name used in error messages: ``pods``, ``jobs.batch``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular(self) -> str:
        return self.kind.lower()


_TABLE = [
    ResourceType(
        "namespaces",
        "Namespace",
        namespaced=False,
        short_names=("ns",),
        name_rule="label",
        status_subresource=True,
        returns_deleted=True,
    ),
    ResourceType(
        "nodes",
        "Node",
        namespaced=False,
        short_names=("no",),
        status_subresource=True,
        returns_deleted=True,
    ),
    ResourceType("pods", "Pod", short_names=("po",), status_subresource=True, returns_deleted=True),
    ResourceType(
        "services",
        "Service",
        short_names=("svc",),
        name_rule="dns1035",
        status_subresource=True,
        returns_deleted=True,
    ),
    ResourceType("serviceaccounts", "ServiceAccount", short_names=("sa",), returns_deleted=True),
    ResourceType("secrets", "Secret"),
    ResourceType("configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType(
        "persistentvolumes",
        "PersistentVolume",
        namespaced=False,
        short_names=("pv",),
        status_subresource=True,
        returns_deleted=True,
    ),
    ResourceType(
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        short_names=("pvc",),
        status_subresource=True,
        returns_deleted=True,
    ),
    ResourceType(
        "resourcequotas", "ResourceQuota", short_names=("quota",), status_subresource=True
    ),
    ResourceType("limitranges", "LimitRange", short_names=("limits",)),
    ResourceType("events", "Event", short_names=("ev",)),
    ResourceType("roles", "Role", "rbac.authorization.k8s.io", name_rule="path"),
    ResourceType("rolebindings", "RoleBinding", "rbac.authorization.k8s.io", name_rule="path"),
    ResourceType(
        "clusterroles",
        "ClusterRole",
        "rbac.authorization.k8s.io",
        namespaced=False,
        name_rule="path",
    ),
    ResourceType(
        "clusterrolebindings",
        "ClusterRoleBinding",
        "rbac.authorization.k8s.io",
        namespaced=False,
        name_rule="path",
    ),
    ResourceType("networkpolicies", "NetworkPolicy", "networking.k8s.io", short_names=("netpol",)),
    ResourceType(
        "storageclasses",
        "StorageClass",
        "storage.k8s.io",
        namespaced=False,
        short_names=("sc",),
        returns_deleted=True,
    ),
    ResourceType("jobs", "Job", "batch", status_subresource=True, default_propagation="Orphan"),
    ResourceType(
        "deployments", "Deployment", "apps", short_names=("deploy",), status_subresource=True
    ),
    ResourceType("replicasets", "ReplicaSet", "apps", short_names=("rs",), status_subresource=True),
    ResourceType(
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        "autoscaling",
        "v2",
        short_names=("hpa",),
        status_subresource=True,
    ),
]

#: plural -> ResourceType (plurals are unique across the groups served here)
RESOURCES: dict[str, ResourceType] = {rt.plural: rt for rt in _TABLE}
#: (group, version, plural) -> ResourceType, for routing
BY_PATH: dict[tuple[str, str, str], ResourceType] = {
    (rt.group, rt.version, rt.plural): rt for rt in _TABLE
}
#: kind -> ResourceType, for owner references and events
BY_KIND: dict[str, ResourceType] = {rt.kind: rt for rt in _TABLE}


def group_versions() -> dict[str, list[str]]:
    """Group -> its versions (core is ``""``)."""
    out: dict[str, list[str]] = {}
    for rt in _TABLE:
        versions = out.setdefault(rt.group, [])
        if rt.version not in versions:
            versions.append(rt.version)
    return out


def api_versions(server_address: str) -> dict:
    """The ``/api`` document."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group_doc(group: str, versions: list[str]) -> dict:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list() -> dict:
    """The ``/apis`` document."""
    groups = [_group_doc(g, vs) for g, vs in group_versions().items() if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str) -> dict | None:
    """The ``/apis/<group>`` document, or None for an unknown group."""
    versions = group_versions().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(group, versions)}


def api_resource_list(group: str, version: str) -> dict | None:
    """The ``/api/v1`` or ``/apis/<group>/<version>`` document, or None if not served."""
    resources = []
    for rt in _TABLE:
        if (rt.group, rt.version) != (group, version):
            continue
        verbs = [v for v in VERBS if not (v == "deletecollection" and rt.plural == "namespaces")]
        entry = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": verbs,
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        resources.append(entry)
        sub = {"singularName": "", "namespaced": rt.namespaced, "kind": rt.kind}
        if rt.status_subresource:
            resources.append(
                {"name": f"{rt.plural}/status", **sub, "verbs": ["get", "patch", "update"]}
            )
        if rt.plural == "pods":
            resources.append({"name": "pods/log", **sub, "kind": "Pod", "verbs": ["get"]})
    if not resources:
        return None
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }
