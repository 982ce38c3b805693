"""`UserNamespaces`: each user's namespace and its objects, kept in shape through the API.

Used by the spawner (every session start) and by the Kubernetes runtime (a job or model may
run before its user ever opened a session). Both processes read the same ``c.UserNamespaces``
configuration, so they build the same objects; every call is idempotent and safe to run
concurrently from both (a 409 on create is success).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from traitlets import Bool, Dict, Int, List, Unicode
from traitlets.config import LoggingConfigurable

from . import namespace_objects as objects
from .api import ApiException, KubeAPI

#: annotation of a user namespace: digest of its objects as last applied
DIGEST_ANNOTATION = "workbench.jupyter.org/applied-digest"
#: the ``app.kubernetes.io/component`` of project claims and volumes
CLAIM_COMPONENT = "project-claim"
VOLUME_COMPONENT = "project-volume"


class NamespaceTerminating(RuntimeError):
    """The user's namespace is being deleted; nothing can be created in it until it is gone."""


@dataclass
class EnsureResult:
    """What one :meth:`UserNamespaces.ensure` call found and did."""

    namespace: str
    claims: dict[str, str] = field(default_factory=dict)  # project → claim name
    created: list[str] = field(default_factory=list)  # "Kind/name"
    removed: list[str] = field(default_factory=list)


class UserNamespaces(LoggingConfigurable):
    """Creates and updates the namespace of each user with everything docs/kubernetes.md lists."""

    namespace_template = Unicode(
        "workbench-{username}",
        help="""Name of a user's namespace; ``{username}`` becomes a safe slug of the user name
        (lower case, a hash suffix when the name had to change), cut to fit 63 characters.""",
    ).tag(config=True)
    namespace_labels = Dict(
        help="Extra labels of every user namespace (e.g. for a Pod Security admission level)."
    ).tag(config=True)
    hub_namespace = Unicode(
        "",
        help="""Namespace of the hub, proxy and control plane: user pods may receive traffic
        from it and reach the control plane and hub API in it. Required.""",
    ).tag(config=True)
    control_plane_port = Int(
        8080, help="Port of the control plane's service, which user pods may call."
    ).tag(config=True)
    hub_api_port = Int(8081, help="Port of the hub API, which sessions call.").tag(config=True)
    api_server_cidrs = List(
        Unicode(),
        help="""CIDRs of the Kubernetes API server (Spark drivers create executor pods).
        Empty: user pods cannot reach the API server.""",
    ).tag(config=True)
    extra_egress = List(
        Dict(), help="More NetworkPolicy egress rules of user namespaces, as given."
    ).tag(config=True)
    nfs_server = Unicode("", help="Host name or IP of the NFS server of project files.").tag(
        config=True
    )
    nfs_export_root = Unicode(
        "/exports/workbench/projects",
        help="Exported directory holding one directory per project (``<root>/<project>``).",
    ).tag(config=True)
    csi_driver = Unicode(
        "",
        help="""Reach the NFS share through this CSI driver (e.g. ``nfs.csi.k8s.io``) instead
        of the in-tree ``nfs`` volume type. Volumes stay static, one per user and project.""",
    ).tag(config=True)
    storage_class = Unicode(
        "",
        help="""Storage class of project volumes and claims; with `csi_driver`, the class whose
        mount options apply. Empty: none (no provisioner touches them).""",
    ).tag(config=True)
    project_volume_size = Unicode(
        "10Gi", help="Capacity written on project volumes (NFS does not enforce it)."
    ).tag(config=True)
    quota = Dict(
        {"cpu": "8", "memory": "32Gi", "gpu": 0, "pods": 50},
        help="""ResourceQuota of a user's namespace: ``cpu``, ``memory``, ``gpu`` (0 forbids
        GPUs), ``pods``. The quota of users in none of `group_quotas`.""",
    ).tag(config=True)
    group_quotas = Dict(
        help="""Quota per group name (same keys as `quota`). A user in several of these groups
        gets the first of them in this dict's order.""",
    ).tag(config=True)
    limit_range = Dict(
        {"default_cpu": "1", "default_memory": "2Gi"},
        help="""LimitRange of a user's namespace: ``default_cpu`` and ``default_memory`` (given to
        containers without resources), optional ``max_cpu`` and ``max_memory``.""",
    ).tag(config=True)
    service_account = Unicode(
        "workbench", help="ServiceAccount of sessions, job runs and Spark executors."
    ).tag(config=True)
    spark_role = Unicode(
        "workbench-spark", help="Name of the Role (and RoleBinding) for Spark."
    ).tag(config=True)
    delete_on_user_removal = Bool(
        False,
        help="""Opt-in clean-up: when a user's last session record is deleted for good (the
        user is deleted), delete their namespace (with everything in it) and their project
        volumes. Project files on NFS are never deleted (volumes are Retain).""",
    ).tag(config=True)

    def namespace(self, username: str) -> str:
        """The namespace of ``username``."""
        return objects.user_namespace_name(self.namespace_template, username)

    def quota_for(self, groups: Iterable[str] | None) -> dict:
        """The quota of a user in ``groups``."""
        names = set(groups or ())
        for group, quota in self.group_quotas.items():
            if group in names:
                return {**self.quota, **quota}
        return dict(self.quota)

    def base_objects(self, username: str, groups: Iterable[str] | None = None) -> list[dict]:
        """Namespace, ServiceAccount, Role, RoleBinding, quota, LimitRange, NetworkPolicy."""
        if not self.hub_namespace:
            raise ValueError("UserNamespaces.hub_namespace must be set")
        quota = self.quota_for(groups)
        limits = self.limit_range
        return objects.make_namespace_objects(
            self.namespace(username),
            username,
            hub_namespace=self.hub_namespace,
            control_plane_port=self.control_plane_port,
            hub_api_port=self.hub_api_port,
            cpu=quota["cpu"],
            memory=quota["memory"],
            gpu=int(quota.get("gpu", 0)),
            pods=quota.get("pods"),
            default_cpu=limits["default_cpu"],
            default_memory=limits["default_memory"],
            max_cpu=limits.get("max_cpu"),
            max_memory=limits.get("max_memory"),
            api_server_cidrs=self.api_server_cidrs,
            extra_egress=self.extra_egress,
            nfs_server=self.nfs_server,
            export_root=self.nfs_export_root,
            service_account=self.service_account,
            role=self.spark_role,
            namespace_labels=self.namespace_labels,
        )

    def project_objects(self, username: str, project: str, read_only: bool) -> list[dict]:
        """The PersistentVolume and PersistentVolumeClaim of one project for one user."""
        if not self.nfs_server:
            raise ValueError("UserNamespaces.nfs_server must be set")
        namespace = self.namespace(username)
        pv_name, pvc_name = objects.project_volume_names(namespace, project)
        size = self.project_volume_size
        return [
            objects.make_project_volume(
                pv_name,
                self.nfs_server,
                self.nfs_export_root,
                project,
                namespace,
                pvc_name,
                size,
                read_only,
                user=username,
                csi_driver=self.csi_driver,
                storage_class=self.storage_class,
            ),
            objects.make_project_claim(
                namespace,
                pvc_name,
                pv_name,
                size,
                read_only,
                user=username,
                project=project,
                storage_class=self.storage_class,
            ),
        ]

    def claim_name(self, username: str, project: str) -> str:
        """The claim through which ``username``'s pods mount ``project``."""
        return objects.project_volume_names(self.namespace(username), project)[1]

    async def ensure(
        self,
        api: KubeAPI,
        username: str,
        projects: Mapping[str, bool],
        groups: Iterable[str] | None = None,
        prune: bool = True,
    ) -> EnsureResult:
        """Create what is missing of ``username``'s namespace and of one volume pair per
        project (name → read-only); bring quota, limits, role and policy in line with the
        configuration.

        The namespace carries a digest of its objects as they were last applied, so a start
        with unchanged configuration costs two reads (namespace, claims) instead of a write
        per object. ``groups`` None (the caller does not know the user's groups) only
        creates a missing namespace's objects and never touches existing ones. With
        ``prune``, pairs of projects not in ``projects`` are deleted.
        """
        base = self.base_objects(username, groups)
        name = base[0]["metadata"]["name"]
        result = EnsureResult(namespace=name)
        digest = objects.digest(base[1:])
        namespace = await api.get("v1", "Namespace", name)
        if namespace is None:
            namespace, created = await api.ensure(base[0])
            if created:
                result.created.append(f"Namespace/{name}")
        if namespace.get("status", {}).get("phase") == "Terminating":
            raise NamespaceTerminating(
                f"namespace {name} is being deleted; try again when it is gone"
            )
        applied = namespace["metadata"].get("annotations", {}).get(DIGEST_ANNOTATION)
        if applied != digest and (groups is not None or not applied):
            await asyncio.gather(*(self._put(api, obj, result, groups) for obj in base[1:]))
            annotations = {"metadata": {"annotations": {DIGEST_ANNOTATION: digest}}}
            await api.patch("v1", "Namespace", name, None, annotations)

        claims, _ = await api.list(
            "v1", "PersistentVolumeClaim", name, {"app.kubernetes.io/component": CLAIM_COMPONENT}
        )
        existing = {c["metadata"].get("labels", {}).get(objects.PROJECT_LABEL): c for c in claims}
        wanted = {p: self.project_objects(username, p, ro) for p, ro in projects.items()}
        for project, (_, claim) in wanted.items():
            result.claims[project] = claim["metadata"]["name"]
        await asyncio.gather(
            *(
                self._ensure_pair(api, pair, existing.get(project), result)
                for project, pair in wanted.items()
            )
        )
        if prune:
            for project, claim in existing.items():
                if project and project not in wanted:
                    await self.remove_project(api, username, project)
                    result.removed.append(f"PersistentVolumeClaim/{claim['metadata']['name']}")
        return result

    @staticmethod
    async def _put(api: KubeAPI, obj: dict, result: EnsureResult, groups) -> None:
        """Create ``obj`` or update it (a ServiceAccount is only created; a quota only updated
        when the user's groups are known)."""
        update = obj["kind"] != "ServiceAccount" and (
            obj["kind"] != "ResourceQuota" or groups is not None
        )
        _, created = await api.ensure(obj, update=update)
        if created:
            result.created.append(f"{obj['kind']}/{obj['metadata']['name']}")

    async def _ensure_pair(
        self, api: KubeAPI, pair: list[dict], existing: dict | None, result: EnsureResult
    ) -> None:
        """Volume then claim; a pair whose access mode changed (role change) is replaced."""
        volume, claim = pair
        if existing is not None:
            if existing["spec"].get("accessModes") == claim["spec"]["accessModes"]:
                return
            meta = claim["metadata"]
            await self._delete_pair(
                api, meta["namespace"], meta["name"], volume["metadata"]["name"]
            )
        for obj in pair:
            _, created = await api.ensure(obj)
            if created:
                result.created.append(f"{obj['kind']}/{obj['metadata']['name']}")

    async def _delete_pair(self, api: KubeAPI, namespace: str, claim: str, volume: str) -> None:
        await api.delete("v1", "PersistentVolumeClaim", claim, namespace)
        await api.delete("v1", "PersistentVolume", volume)

    async def remove_project(self, api: KubeAPI, username: str, project: str) -> None:
        """Delete ``username``'s volume pair of ``project`` (the user lost access to it).

        A pod still using the claim keeps it until the pod ends (Kubernetes' claim
        protection); the volume is deleted now, so the claim can never be bound again.
        """
        namespace = self.namespace(username)
        pv_name, pvc_name = objects.project_volume_names(namespace, project)
        await self._delete_pair(api, namespace, pvc_name, pv_name)

    async def remove_project_everywhere(self, api: KubeAPI, project: str) -> None:
        """Delete every user's volume pair of ``project`` (the project was deleted)."""
        selector = {objects.PROJECT_LABEL: project}
        claims, _ = await api.list(
            "v1",
            "PersistentVolumeClaim",
            labels={**selector, "app.kubernetes.io/component": CLAIM_COMPONENT},
        )
        volumes, _ = await api.list(
            "v1",
            "PersistentVolume",
            labels={**selector, "app.kubernetes.io/component": VOLUME_COMPONENT},
        )
        for claim in claims:
            meta = claim["metadata"]
            await api.delete("v1", "PersistentVolumeClaim", meta["name"], meta["namespace"])
        for volume in volumes:
            await api.delete("v1", "PersistentVolume", volume["metadata"]["name"])

    async def delete(self, api: KubeAPI, username: str) -> None:
        """Delete the user's namespace and project volumes (files on NFS stay)."""
        namespace = self.namespace(username)
        try:
            await api.delete("v1", "Namespace", namespace)
        except ApiException as e:
            if e.status != 409:  # already terminating
                raise
        volumes, _ = await api.list(
            "v1", "PersistentVolume", labels={objects.USER_LABEL: objects.user_label(username)}
        )
        for volume in volumes:
            await api.delete("v1", "PersistentVolume", volume["metadata"]["name"])
