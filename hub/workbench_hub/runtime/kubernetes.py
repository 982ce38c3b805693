"""Run workloads on Kubernetes: job runs and model builds as Jobs, model replicas as Deployments.

Every object is built by the pure functions of :mod:`workbench_hub.kube.workload_objects` and
lives in its user's namespace (kept in shape by ``UserNamespaces``). Workloads are found by
the ``workbench.jupyter.org/workload`` label across all namespaces, never from memory alone,
so a restarted control plane adopts what runs. A cache fed by a watch of the workbench's Jobs
and Pods (:meth:`KubernetesRuntime.start_watching`) answers reads when it knows the name.

Files: each project lives at ``<projects_root>/<project>`` both in the control plane (which
mounts the NFS export root there) and in pods (which mount the user's claim of the project
there). Other host directories a spec mounts must lie under one of ``nfs_paths``; each
becomes a static NFS PersistentVolume ``wb-<workload>-<hash>`` and a pre-bound claim
``<workload>-<hash>`` (hash of namespace, path and access), deleted by ``remove``.

A stopped Job is deleted with its pods. ``stop`` first marks the Job with the
``workbench.jupyter.org/stopped-at`` annotation, so every instance sees a ``stopped`` workload
while it terminates, then keeps its final status as an in-memory *tombstone* until ``remove``
(at most 1000, this process only: after a restart a stopped Job is unknown). A Job deleted
by someone else while active becomes a ``lost`` tombstone the same way (seen by the watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import posixpath
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration
from traitlets import Dict, Float, Instance, Int, List, TraitError, Unicode, default, validate

from workbench_hub.kube import workload_objects as objects
from workbench_hub.kube.api import ApiException, KubeAPI, status_message
from workbench_hub.kube.namespace_objects import claim_spec, digest, nfs_volume_spec
from workbench_hub.kube.namespaces import NamespaceTerminating, UserNamespaces
from workbench_hub.runtime.base import (
    ACTIVE_PHASES,
    KIND_LABEL,
    LABEL_PREFIX,
    PROJECT_LABEL,
    ReplicatedStatus,
    Runtime,
    VolumeMount,
    WorkloadNotFound,
    WorkloadSpec,
    WorkloadStatus,
)

WORKLOAD_LABEL = objects.WORKLOAD_LABEL
USERNAME_ANNOTATION = LABEL_PREFIX + "username"
STOPPED_ANNOTATION = LABEL_PREFIX + "stopped-at"
SPEC_HASH_ANNOTATION = LABEL_PREFIX + "spec-hash"
REPLICAS_ANNOTATION = LABEL_PREFIX + "replicas"
AUTOSCALED_ANNOTATION = LABEL_PREFIX + "autoscaled"
#: the ``app.kubernetes.io/component`` of per-workload volumes and claims
VOLUME_COMPONENT = "workload-volume"
MANAGED = {"app.kubernetes.io/managed-by": objects.APP_LABELS["app.kubernetes.io/managed-by"]}
JOB_KINDS = frozenset({"job-run", "model-build"})
CONTAINER = "workload"
_OBJECT_LABELS = {*objects.APP_LABELS, "app.kubernetes.io/component", WORKLOAD_LABEL}
_TOMBSTONES = 1000
_STOP_MARGIN = 30.0  # seconds stop() waits beyond the grace for pods to disappear
_AUTOSCALING_KEYS = {"min_replicas", "max_replicas", "cpu_percent"}
_AUTOSCALING_REQUIRED = {"max_replicas", "cpu_percent"}


# ---- pure helpers


@contextlib.contextmanager
def _refusals_as_value_errors():
    """Turn the API server's 4xx answers and a terminating namespace into ValueError (the
    interface's "cannot run this spec"); outages (5xx, no connection) propagate."""
    try:
        yield
    except NamespaceTerminating as e:
        raise ValueError(str(e)) from None
    except ApiException as e:
        if not 400 <= (e.status or 0) < 500:
            raise
        raise ValueError(f"Kubernetes refused it: {status_message(e)}") from None


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _spec_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The spec's labels (plus kind and project) of an object's labels."""
    return {k: v for k, v in labels.items() if k not in _OBJECT_LABELS}


def _true_conditions(obj: dict) -> dict[str, dict]:
    conditions = obj.get("status", {}).get("conditions") or []
    return {c["type"]: c for c in conditions if c.get("status") == "True"}


def _container_status(pod: dict | None) -> dict:
    for status in (pod or {}).get("status", {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return status
    return {}


def _newest(pods: Iterable[dict]) -> dict | None:
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), default=None)


def _started(pod: dict | None) -> bool:
    """Whether the pod's container has started (so it has a log)."""
    state = _container_status(pod).get("state", {})
    return "running" in state or "terminated" in state


def merge_patch(old: Mapping, new: Mapping) -> dict:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (removed keys become None)."""
    patch: dict[str, Any] = dict.fromkeys(old.keys() - new.keys())
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            if sub := merge_patch(before, value):
                patch[key] = sub
        elif value != before:
            patch[key] = value
    return patch


def job_status(job: dict, pods: Iterable[dict]) -> WorkloadStatus:
    """A workload's status from its Job and the Job's pods (the newest pod counts)."""
    meta = job["metadata"]
    labels = meta.get("labels", {})
    pod = _newest(pods)
    container = _container_status(pod)
    state = container.get("state", {})
    terminated = state.get("terminated") or container.get("lastState", {}).get("terminated")
    conditions = _true_conditions(job)
    pod_phase = (pod or {}).get("status", {}).get("phase")
    finished = _time(terminated and terminated.get("finishedAt"))
    exit_code = terminated.get("exitCode") if terminated else None
    message = ""
    if STOPPED_ANNOTATION in meta.get("annotations", {}):
        alive = pod is not None and not terminated and pod_phase in {"Pending", "Running"}
        phase = "running" if alive else "stopped"
        message = "" if alive else "stopped on request"
        if not alive and finished is None:
            finished = _time(meta.get("deletionTimestamp")) or _time(
                meta["annotations"][STOPPED_ANNOTATION]
            )
    elif "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        phase = "succeeded"
        finished = finished or _time(job.get("status", {}).get("completionTime"))
    elif failure := conditions.get("Failed") or conditions.get("FailureTarget"):
        phase = "failed"
        finished = finished or _time(failure.get("lastTransitionTime"))
        if failure.get("reason") == "DeadlineExceeded":
            message = f"timed out after {job['spec'].get('activeDeadlineSeconds')} s"
        else:
            message = _failure(terminated, pod) or failure.get("message", "")
    elif pod_phase == "Unknown":
        phase, message = "lost", "the node running the pod stopped reporting"
    elif pod_phase in {"Running", "Succeeded", "Failed"}:
        # the Job's conditions decide how it ended (e.g. a deadline kills the pod first)
        phase, finished, exit_code = "running", None, None
    else:
        phase, message = "pending", _waiting(pod)
    started = (state.get("running") or terminated or {}).get("startedAt")
    return WorkloadStatus(
        name=labels.get(WORKLOAD_LABEL, meta["name"]),
        kind=labels.get(KIND_LABEL, "job-run"),
        user=meta.get("annotations", {}).get(USERNAME_ANNOTATION, ""),
        project=labels.get(PROJECT_LABEL, ""),
        phase=phase,
        labels=_spec_labels(labels),
        created=_time(meta.get("creationTimestamp")) or datetime.now(UTC),
        started=_time(started),
        finished=finished,
        exit_code=exit_code,
        message=message,
        endpoints=_endpoints(job["spec"]["template"], pod),
    )


def _failure(terminated: dict | None, pod: dict | None) -> str:
    if terminated:
        if terminated.get("reason") == "OOMKilled":
            return "killed: out of memory (OOMKilled)"
        if terminated.get("reason") not in {None, "Error", "Completed"}:
            return f"{terminated['reason']}: {terminated.get('message', '')}".rstrip(": ")
        return f"exited with code {terminated.get('exitCode')}"
    status = (pod or {}).get("status", {})
    return ": ".join(filter(None, [status.get("reason"), status.get("message")]))


def _waiting(pod: dict | None) -> str:
    """Why a pod is not running yet: its container's waiting reason or a scheduling problem."""
    waiting = _container_status(pod).get("state", {}).get("waiting") or {}
    if waiting.get("reason") not in {None, "ContainerCreating", "PodInitializing"}:
        return ": ".join(filter(None, [waiting["reason"], waiting.get("message")]))
    for condition in (pod or {}).get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("message") or condition.get("reason", "")
    return ""


def _ports(template: dict) -> dict[str, int]:
    containers = template.get("spec", {}).get("containers") or [{}]
    return {p["name"]: p["containerPort"] for p in containers[0].get("ports") or [] if "name" in p}


def _endpoints(template: dict, pod: dict | None) -> dict[str, str]:
    """``name → podIP:port`` of the ports named in `template` (a pod or a pod template)."""
    ip = (pod or {}).get("status", {}).get("podIP")
    if not ip:
        return {}
    return {name: f"{ip}:{port}" for name, port in _ports(template).items()}


def _ready(pod: dict) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return "Ready" in _true_conditions(pod)


def replica_status(pod: dict) -> WorkloadStatus:
    """One replica (pod) of a replicated workload, as a WorkloadStatus named after the pod."""
    meta, status = pod["metadata"], pod.get("status", {})
    labels = meta.get("labels", {})
    container = _container_status(pod)
    terminated = container.get("state", {}).get("terminated")
    phase = {"Running": "running", "Succeeded": "succeeded", "Failed": "failed"}.get(
        status.get("phase"), "pending"
    )
    return WorkloadStatus(
        name=meta["name"],
        kind="model-replica",
        user=meta.get("annotations", {}).get(USERNAME_ANNOTATION, ""),
        project=labels.get(PROJECT_LABEL, ""),
        phase=phase,
        labels=_spec_labels(labels),
        created=_time(meta.get("creationTimestamp")) or datetime.now(UTC),
        started=_time(status.get("startTime")),
        exit_code=terminated.get("exitCode") if terminated else None,
        message=_waiting(pod) if phase == "pending" else "",
        endpoints=_endpoints(pod, pod),
    )


def replicated_status(deployment: dict, pods: Iterable[dict]) -> ReplicatedStatus:
    """A replicated workload's status from its Deployment and pods.

    ``ready`` counts ready pods whose template carries the Deployment's current spec hash.
    """
    meta, spec = deployment["metadata"], deployment["spec"]
    status = deployment.get("status", {})
    digest = meta.get("annotations", {}).get(SPEC_HASH_ANNOTATION)
    current = [
        p for p in pods if p["metadata"].get("annotations", {}).get(SPEC_HASH_ANNOTATION) == digest
    ]
    wanted = spec.get("replicas", 1)
    rolled_out = status.get("observedGeneration", 0) >= meta.get("generation", 1) and status.get(
        "updatedReplicas", 0
    ) == status.get("readyReplicas", 0) == wanted == status.get("replicas", 0)
    messages = [
        c["message"]
        for c in status.get("conditions") or []
        if c.get("message")
        and (
            (c["type"] == "Progressing" and c.get("status") == "False")
            or (c["type"] == "ReplicaFailure" and c.get("status") == "True")
        )
    ]
    messages += [
        f"{p['metadata']['name']}: {reason}"
        for p in current
        if not _ready(p) and (reason := _waiting(p) or _failure(None, p))
    ]
    ports = _ports(spec["template"])
    port = ports[min(ports)] if ports else 0
    return ReplicatedStatus(
        name=meta["name"],
        replicas=wanted,
        ready=sum(1 for p in current if _ready(p)),
        rolled_out=rolled_out,
        endpoint=f"{meta['name']}.{meta['namespace']}.svc:{port}",
        labels=_spec_labels(meta.get("labels", {})),
        message="; ".join(messages),
    )


def make_workload_volume(
    spec: WorkloadSpec,
    namespace: str,
    nfs_server: str,
    path: str,
    read_only: bool,
    csi_driver: str = "",
    storage_class: str = "",
    capacity: str = "10Gi",
) -> tuple[str, list[dict]]:
    """``(claim name, [PersistentVolume, PersistentVolumeClaim])`` for one NFS directory of a
    workload. Named ``<workload>-<hash>`` (volume: ``wb-`` prefix) after the namespace, path
    and access, so a new spec of a Deployment gets new ones while old pods keep theirs."""
    suffix = digest([namespace, nfs_server, path, read_only])[:8]
    claim, volume = f"{spec.name}-{suffix}", f"wb-{spec.name}-{suffix}"
    labels = objects.labels_for(spec, VOLUME_COMPONENT)
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": volume, "labels": labels},
        "spec": nfs_volume_spec(
            nfs_server, path, read_only, namespace, claim, capacity, csi_driver, storage_class
        ),
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": namespace, "labels": labels},
        "spec": claim_spec(volume, capacity, read_only, storage_class),
    }
    return claim, [pv, pvc]


class _Relist(Exception):
    """The watch must start over from a fresh list (410 Gone or another ERROR event)."""


class _Store:
    """Objects of one kind carrying the workload label, kept current by a list and watch."""

    def __init__(self) -> None:
        self.synced = False
        self.by_workload: dict[str, dict[tuple[str, str], dict]] = {}

    @staticmethod
    def _key(obj: dict) -> tuple[str, str]:
        return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]

    def replace(self, items: Iterable[dict]) -> None:
        self.by_workload = {}
        for item in items:
            self.put(item)
        self.synced = True

    def put(self, obj: dict) -> None:
        if workload := obj["metadata"].get("labels", {}).get(WORKLOAD_LABEL):
            self.by_workload.setdefault(workload, {})[self._key(obj)] = obj

    def discard(self, obj: dict) -> None:
        workload = obj["metadata"].get("labels", {}).get(WORKLOAD_LABEL)
        found = self.by_workload.get(workload or "", {})
        found.pop(self._key(obj), None)
        if not found:
            self.by_workload.pop(workload or "", None)

    def get(self, workload: str) -> list[dict]:
        return list(self.by_workload.get(workload, {}).values())

    def all(self) -> list[dict]:
        return [obj for found in self.by_workload.values() for obj in found.values()]


class KubernetesRuntime(Runtime):
    """Job runs and model builds as ``batch/v1`` Jobs, model replicas as Deployments.

    Call :meth:`start_watching` to keep a cache of the workbench's Jobs and Pods (without it,
    every call reads the API) and :meth:`close` at shutdown.
    """

    manages_rollouts = True

    image = Unicode(
        "",
        help="""Image of job runs and model builds (and model replicas unless `model_image` is
        set). It must hold the project's tools and `python`, and run as a non-root user.
        Required.""",
    ).tag(config=True)
    model_image = Unicode(
        help="Image of model replicas. Default: `image`.",
    ).tag(config=True)
    python = Unicode(
        "python3",
        help="""The Python interpreter inside the images: a spec whose command starts with the
        control plane's own interpreter (``sys.executable``) runs this instead.""",
    ).tag(config=True)
    projects_root = Unicode(
        "/srv/workbench/projects",
        help="""Directory holding one directory per project, at the same path in the control
        plane (which mounts the NFS export root there) and in pods (which mount the user's
        claim of the project at ``<projects_root>/<project>``).""",
    ).tag(config=True)
    nfs_paths = Dict(
        value_trait=Unicode(),
        key_trait=Unicode(),
        help="""Other host directories workloads may mount, as host directory prefix → NFS
        export path on `UserNamespaces.nfs_server` (e.g. ``{"/srv/workbench/builds":
        "/exports/workbench/builds"}``). A spec volume under a prefix is mounted through a
        static NFS volume and claim of its own; any other volume is refused.""",
    ).tag(config=True)
    node_selector = Dict(
        value_trait=Unicode(),
        help='nodeSelector of workload pods (e.g. ``{"workbench.jupyter.org/node": "jobs"}``).',
    ).tag(config=True)
    tolerations = List(
        Dict(), help="Tolerations of workload pods, as Kubernetes Toleration objects."
    ).tag(config=True)
    job_ttl_seconds = Int(
        86400,
        help="""Seconds a finished Job (its status and pod log) stays before Kubernetes deletes
        it; the control plane must have read its outcome and logs by then.""",
    ).tag(config=True)
    autoscaling = Dict(
        help="""Autoscale model replicas on CPU: ``{"max_replicas": 10, "cpu_percent": 80}``,
        optionally ``"min_replicas"``. The autoscaler's minimum is the deployment's replica
        count (at least ``min_replicas``), its maximum at least that. Empty: a fixed replica
        count, no HorizontalPodAutoscaler.""",
    ).tag(config=True)
    kubeconfig = Unicode(
        "",
        help="""Path of a kubeconfig file to reach the API server. Empty: the in-cluster
        configuration (the pod's service account).""",
    ).tag(config=True)
    request_timeout = Float(
        30.0, help="Seconds an API request may take (watches and followed logs excepted)."
    ).tag(config=True)
    user_namespaces = Instance(
        UserNamespaces,
        help="Keeps users' namespaces and project claims in shape (``c.UserNamespaces``).",
    )

    @default("model_image")
    def _default_model_image(self) -> str:
        return self.image

    @default("user_namespaces")
    def _default_user_namespaces(self) -> UserNamespaces:
        return UserNamespaces(parent=self)

    @validate("autoscaling")
    def _check_autoscaling(self, proposal: dict[str, Any]) -> dict:
        value = proposal["value"]
        if value and not (_AUTOSCALING_REQUIRED <= set(value) <= _AUTOSCALING_KEYS):
            raise TraitError(
                f"autoscaling needs the keys {sorted(_AUTOSCALING_REQUIRED)}"
                f" and may have min_replicas, not {sorted(value)}"
            )
        if value and not all(isinstance(v, int) and v > 0 for v in value.values()):
            raise TraitError("autoscaling values must be positive integers")
        return value

    @validate("nfs_paths")
    def _check_nfs_paths(self, proposal: dict[str, Any]) -> dict[str, str]:
        paths = proposal["value"]
        if not all(p.startswith("/") for pair in paths.items() for p in pair):
            raise TraitError("nfs_paths maps absolute host paths to absolute export paths")
        return {posixpath.normpath(k): posixpath.normpath(v) for k, v in paths.items()}

    @validate("projects_root")
    def _check_projects_root(self, proposal: dict[str, Any]) -> str:
        if not proposal["value"].startswith("/"):
            raise TraitError("projects_root must be an absolute path")
        return posixpath.normpath(proposal["value"])

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._kube: KubeAPI | None = None
        self._client_lock = asyncio.Lock()
        self._ensured: dict[tuple[str, str], asyncio.Task] = {}
        self._jobs = _Store()
        self._pods = _Store()
        self._watchers: list[asyncio.Task] = []
        self._tombstones: OrderedDict[str, WorkloadStatus] = OrderedDict()

    # ---- client, cache

    async def api(self) -> KubeAPI:
        """The API client, configured on first use from `kubeconfig` or in-cluster."""
        async with self._client_lock:
            if self._kube is None:
                configuration = Configuration()
                if self.kubeconfig:
                    await kube_config.load_kube_config(
                        config_file=self.kubeconfig,
                        client_configuration=configuration,
                        persist_config=False,
                    )
                else:
                    await asyncio.to_thread(
                        kube_config.load_incluster_config, client_configuration=configuration
                    )
                self._kube = KubeAPI(ApiClient(configuration), timeout=self.request_timeout)
        return self._kube

    async def open(self) -> None:
        """Start watching the workbench's Jobs and pods (the control plane calls this)."""
        await self.start_watching()

    async def start_watching(self) -> None:
        """Start caching the workbench's Jobs and Pods; returns once both are listed (an
        unreachable API raises here; later failures are retried in the background)."""
        if self._watchers:
            return
        for api_version, kind, store in (
            ("batch/v1", "Job", self._jobs),
            ("v1", "Pod", self._pods),
        ):
            version = await self._relist(api_version, kind, store)
            task = asyncio.create_task(self._reflect(api_version, kind, store, version))
            self._watchers.append(task)

    async def close(self) -> None:
        """Stop watching and close the API client."""
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers = []
        self._jobs.synced = self._pods.synced = False
        if self._kube is not None:
            await self._kube.client.close()
            self._kube = None

    async def _relist(self, api_version: str, kind: str, store: _Store) -> str:
        api = await self.api()
        items, version = await api.list(api_version, kind, None, MANAGED)
        store.replace(items)
        return version

    async def _reflect(self, api_version: str, kind: str, store: _Store, version: str) -> None:
        """Watch from ``version``; list again after 410 Gone or an error, with backoff."""
        api = await self.api()
        delay = 1.0
        while True:
            try:
                if not version:
                    version = await self._relist(api_version, kind, store)
                async for event in api.watch(api_version, kind, None, MANAGED, version):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise _Relist(obj.get("message", ""))
                    version = obj["metadata"].get("resourceVersion") or version
                    if event["type"] == "DELETED":
                        store.discard(obj)
                        if kind == "Job":
                            self._job_deleted(obj)
                    elif event["type"] in {"ADDED", "MODIFIED"}:
                        store.put(obj)
                delay = 1.0  # the server ended the watch: go on from the last version
            except _Relist as e:
                self.log.debug("Listing %s again: %s", kind, e)
                version = ""
            except Exception:
                store.synced = False
                version = ""
                self.log.warning("Watch of %s failed; retrying in %ss", kind, delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _job_deleted(self, job: dict) -> None:
        """A Job deleted while active without stop() (by someone else) is ``lost``."""
        name = job["metadata"].get("labels", {}).get(WORKLOAD_LABEL, "")
        status = job_status(job, [p for p in self._pods.get(name) if _is_job_pod(p)])
        if status.phase in ACTIVE_PHASES:
            self._tombstone(
                replace(status, phase="lost", message="its Job was deleted outside the workbench")
            )

    def _tombstone(self, status: WorkloadStatus) -> None:
        self._tombstones[status.name] = status
        self._tombstones.move_to_end(status.name)
        while len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)

    # ---- user namespaces and volumes

    async def _ensure_user(self, user: str, project: str) -> None:
        """Ensure the user's namespace and project claim, once per process (concurrent
        callers share one call; a failure is retried by the next caller)."""
        key = (user, project)
        task = self._ensured.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            api = await self.api()
            task = asyncio.ensure_future(
                self.user_namespaces.ensure(api, user, {project: False}, groups=None, prune=False)
            )
            self._ensured[key] = task
        await asyncio.shield(task)

    async def _create(self, obj: dict, spec: WorkloadSpec) -> dict:
        """Create ``obj``; re-ensure the user's namespace once if it vanished (404)."""
        api = await self.api()
        try:
            return await api.create(obj)
        except ApiException as e:
            if e.status != 404:
                raise
        self._ensured.pop((spec.user, spec.project), None)
        await self._ensure_user(spec.user, spec.project)
        return await api.create(obj)

    def _export_path(self, source: str) -> str:
        for root in sorted(self.nfs_paths, key=len, reverse=True):
            if source == root or source.startswith(root.rstrip("/") + "/"):
                rest = posixpath.relpath(source, root)
                export = self.nfs_paths[root]
                return export if rest == "." else posixpath.join(export, rest)
        raise ValueError(
            f"volume source {source!r} is neither in the project nor under a directory of "
            "KubernetesRuntime.nfs_paths"
        )

    def _prepare(self, spec: WorkloadSpec, namespace: str) -> tuple[WorkloadSpec, list[dict]]:
        """The spec as pods see it (claims as volume sources, the project mounted, the
        interpreter replaced) and the per-workload volumes and claims to create."""
        project_path = posixpath.join(self.projects_root, spec.project)
        claim = self.user_namespaces.claim_name(spec.user, spec.project)
        mounts = [VolumeMount(source=claim, target=project_path)]
        volumes: dict[str, dict] = {}
        for volume in spec.volumes:
            source = posixpath.normpath(volume.source)
            if source == project_path and volume.target == project_path and not volume.sub_path:
                mounts[0] = replace(mounts[0], read_only=volume.read_only)  # the project itself
                continue
            if source == project_path or source.startswith(project_path + "/"):
                sub_path = posixpath.normpath(
                    posixpath.join(posixpath.relpath(source, project_path), volume.sub_path)
                )
                mounts.append(
                    replace(volume, source=claim, sub_path="" if sub_path == "." else sub_path)
                )
                continue
            if source.startswith(self.projects_root.rstrip("/") + "/"):
                raise ValueError(f"volume source {source!r} lies in another project")
            export = self._export_path(source)
            if not self.user_namespaces.nfs_server:
                raise ValueError("UserNamespaces.nfs_server must be set")
            name, pair = make_workload_volume(
                spec,
                namespace,
                self.user_namespaces.nfs_server,
                export,
                volume.read_only,
                csi_driver=self.user_namespaces.csi_driver,
                storage_class=self.user_namespaces.storage_class,
            )
            mounts.append(replace(volume, source=name))
            volumes.update({obj["metadata"]["name"]: obj for obj in pair})
        command = list(spec.command)
        if command[0] == sys.executable:
            command[0] = self.python
        # Spark's driver in the pod (workbench.spark) needs these to start executors
        env = {
            **spec.env,
            "WORKBENCH_SERVICE_ACCOUNT": self.user_namespaces.service_account,
            "WORKBENCH_PROJECT_DIR": project_path,
        }
        return replace(spec, volumes=mounts, command=command, env=env), list(volumes.values())

    def _pod_options(self) -> dict:
        return {
            "service_account": self.user_namespaces.service_account,
            "node_selector": self.node_selector,
            "tolerations": self.tolerations,
        }

    async def _delete_volumes(self, name: str) -> None:
        api = await self.api()
        selector = {WORKLOAD_LABEL: name, "app.kubernetes.io/component": VOLUME_COMPONENT}
        claims, _ = await api.list("v1", "PersistentVolumeClaim", None, selector)
        for claim in claims:
            meta = claim["metadata"]
            await api.delete("v1", "PersistentVolumeClaim", meta["name"], meta["namespace"])
        volumes, _ = await api.list("v1", "PersistentVolume", None, selector)
        for volume in volumes:
            await api.delete("v1", "PersistentVolume", volume["metadata"]["name"])

    # ---- Jobs

    async def _find(self, name: str) -> tuple[dict, list[dict]] | None:
        """The workload's Job and pods, from the cache if it knows the Job, else the API."""
        if self._jobs.synced and self._pods.synced and (jobs := self._jobs.get(name)):
            return jobs[0], [p for p in self._pods.get(name) if _is_job_pod(p)]
        api = await self.api()
        jobs, _ = await api.list("batch/v1", "Job", None, {WORKLOAD_LABEL: name})
        if not jobs:
            return None
        namespace = jobs[0]["metadata"]["namespace"]
        pods, _ = await api.list("v1", "Pod", namespace, {WORKLOAD_LABEL: name})
        return jobs[0], [p for p in pods if _is_job_pod(p)]

    async def start(self, spec: WorkloadSpec) -> WorkloadStatus:
        """Run a job run or model build as a Job. The API server's refusals (quota, a
        namespace being deleted, an invalid object) raise ValueError with its message."""
        with _refusals_as_value_errors():
            return await self._start(spec)

    async def _start(self, spec: WorkloadSpec) -> WorkloadStatus:
        if spec.kind not in JOB_KINDS:
            raise ValueError(
                f"KubernetesRuntime starts {sorted(JOB_KINDS)} workloads, not {spec.kind!r}; "
                "model replicas go through apply_replicated()"
            )
        if not self.image:
            raise ValueError("KubernetesRuntime.image is not set")
        found = await self._find(spec.name)
        if found is not None:
            return job_status(*found)
        if spec.name in self._tombstones:
            return self._tombstones[spec.name]
        namespace = self.user_namespaces.namespace(spec.user)
        run_spec, volumes = self._prepare(spec, namespace)
        job = objects.make_job(
            run_spec,
            namespace,
            self.image,
            ttl_seconds=self.job_ttl_seconds,
            **self._pod_options(),
        )
        job["metadata"]["annotations"] = {USERNAME_ANNOTATION: spec.user}
        job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = math.ceil(
            self.stop_grace
        )
        await self._ensure_user(spec.user, spec.project)
        api = await self.api()
        for obj in volumes:
            await api.ensure(obj)
        try:
            created = await self._create(job, spec)
        except ApiException as e:
            if e.status != 409:
                raise
            found = await self._find(spec.name)
            if found is None:
                raise
            return job_status(*found)
        self.log.info("Started %s %s for %s in %s", spec.kind, spec.name, spec.user, namespace)
        return job_status(created, [])

    async def status(self, name: str) -> WorkloadStatus | None:
        found = await self._find(name)
        if found is None:
            return self._tombstones.get(name)
        status = job_status(*found)
        if status.phase == "pending" and not found[1]:
            # no pod yet: say why when the Job controller could not create it (quota, …)
            problem = await self._creation_problem(found[0])
            if problem:
                status = replace(status, message=problem)
        return status

    async def _creation_problem(self, job: dict) -> str:
        """The latest FailedCreate event of a Job, as "cannot create its pod: …"."""
        api = await self.api()
        meta = job["metadata"]
        fields = {"involvedObject.kind": "Job", "involvedObject.name": meta["name"]}
        events, _ = await api.list("v1", "Event", meta["namespace"], fields=fields)
        failed = [e for e in events if e.get("reason") == "FailedCreate"]
        if not failed:
            return ""
        latest = max(
            failed, key=lambda e: e.get("lastTimestamp") or e["metadata"]["resourceVersion"]
        )
        return f"cannot create its pod: {latest.get('message', '')}"

    async def list(self, selector: dict[str, str] | None = None) -> list[WorkloadStatus]:
        selector = dict(selector or {})
        if self._jobs.synced and self._pods.synced:
            jobs = [j for j in self._jobs.all() if _matches(j, selector)]
            pods = [p for p in self._pods.all() if _is_job_pod(p)]
        else:
            api = await self.api()
            jobs, _ = await api.list("batch/v1", "Job", None, {**selector, **MANAGED})
            pods, _ = await api.list("v1", "Pod", None, {**selector, **MANAGED})
            jobs = [j for j in jobs if WORKLOAD_LABEL in j["metadata"].get("labels", {})]
            pods = [p for p in pods if _is_job_pod(p)]
        by_workload: dict[str, list[dict]] = {}
        for pod in pods:
            by_workload.setdefault(pod["metadata"]["labels"][WORKLOAD_LABEL], []).append(pod)
        found = [
            job_status(j, by_workload.get(j["metadata"]["labels"][WORKLOAD_LABEL], []))
            for j in jobs
        ]
        live = {s.name for s in found}
        found += [
            s
            for s in self._tombstones.values()
            if s.name not in live and selector.items() <= s.labels.items()
        ]
        return sorted(found, key=lambda s: s.created)

    async def stop(self, name: str, grace: float | None = None) -> WorkloadStatus:
        grace = self.stop_grace if grace is None else grace
        found = await self._find(name)
        if found is None:
            if name in self._tombstones:
                return self._tombstones[name]
            raise WorkloadNotFound(name)
        job, pods = found
        if job_status(job, pods).phase not in ACTIVE_PHASES:
            return job_status(job, pods)
        api = await self.api()
        namespace = job["metadata"]["namespace"]
        self.log.info("Stopping workload %s (grace %ss)", name, grace)
        with contextlib.suppress(ApiException):  # 404: it went away meanwhile
            job = await api.patch(
                "batch/v1",
                "Job",
                job["metadata"]["name"],
                namespace,
                {"metadata": {"annotations": {STOPPED_ANNOTATION: _now()}}},
            )
        seconds = math.ceil(grace)
        stopping = {pod["metadata"]["name"] for pod in pods}
        for pod in pods:  # the grace applies to pods, not to the Job
            await api.delete("v1", "Pod", pod["metadata"]["name"], namespace, seconds)
        await api.delete(
            "batch/v1", "Job", job["metadata"]["name"], namespace, seconds, "Foreground"
        )
        deadline = time.monotonic() + grace + _STOP_MARGIN
        while time.monotonic() < deadline:
            current = await api.get("batch/v1", "Job", job["metadata"]["name"], namespace)
            listed, _ = await api.list("v1", "Pod", namespace, {WORKLOAD_LABEL: name})
            # the pods stopped (a controller may have started another meanwhile)
            pods = [p for p in listed if p["metadata"]["name"] in stopping] or pods
            if current is None and not listed:
                break
            job = current or job
            await asyncio.sleep(self.poll_interval)
        else:
            self.log.warning("Workload %s: Job or pods still there after %ss", name, grace)
        final = job_status(job, pods)
        final = replace(
            final,
            phase="stopped",
            message="stopped on request",
            finished=final.finished or datetime.now(UTC),
        )
        self._tombstone(final)
        return final

    async def remove(self, name: str) -> None:
        status = await self.status(name)
        if status is not None and status.phase in ACTIVE_PHASES:
            await self.stop(name)
        api = await self.api()
        if (found := await self._find(name)) is not None:
            meta = found[0]["metadata"]
            await api.delete("batch/v1", "Job", meta["name"], meta["namespace"])
        await self._delete_volumes(name)
        self._tombstones.pop(name, None)
        if status is not None:
            self.log.info("Removed workload %s", name)

    async def logs(self, name: str, follow: bool = False) -> AsyncIterator[str]:
        found = await self._find(name)
        if found is None:
            if name in self._tombstones:
                return
            raise WorkloadNotFound(name)
        while not _started(pod := _newest(found[1])):
            if not follow or job_status(*found).phase not in ACTIVE_PHASES:
                return
            await asyncio.sleep(self.poll_interval)
            if (found := await self._find(name)) is None:
                return
        api = await self.api()
        try:
            async for line in api.pod_log(
                pod["metadata"]["namespace"], pod["metadata"]["name"], follow
            ):
                yield line
        except ApiException as e:
            if e.status not in {400, 404}:  # 404: the pod is gone; 400: its log is
                raise

    # ---- replicated workloads

    async def apply_replicated(self, spec: WorkloadSpec, replicas: int) -> ReplicatedStatus:
        """A Deployment and Service (and HorizontalPodAutoscaler with `autoscaling`).

        Patches only what changed: a new spec hash patches the pod template (a rolling update
        with ``maxUnavailable: 0``), a new count the replicas (or the autoscaler's bounds).
        The API server's refusals raise ValueError with its message.
        """
        with _refusals_as_value_errors():
            return await self._apply_replicated(spec, replicas)

    async def _apply_replicated(self, spec: WorkloadSpec, replicas: int) -> ReplicatedStatus:
        if spec.kind != "model-replica":
            raise ValueError(f"apply_replicated runs model-replica workloads, not {spec.kind!r}")
        if not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be a positive integer, not {replicas!r}")
        if not spec.ports:
            raise ValueError("a replicated workload needs a port")
        if not spec.name[0].isalpha():
            raise ValueError(f"name {spec.name!r} must start with a letter (it names a Service)")
        if not self.model_image:
            raise ValueError("KubernetesRuntime.model_image is not set")
        namespace = self.user_namespaces.namespace(spec.user)
        run_spec, volumes = self._prepare(spec, namespace)
        deployment = objects.make_deployment(
            run_spec, namespace, self.model_image, replicas, **self._pod_options()
        )
        template = deployment["spec"]["template"]
        template["spec"]["terminationGracePeriodSeconds"] = math.ceil(self.stop_grace)
        spec_hash = digest(template)
        template["metadata"]["annotations"] = {
            SPEC_HASH_ANNOTATION: spec_hash,
            USERNAME_ANNOTATION: spec.user,
        }
        autoscaler = None
        if self.autoscaling:
            low = max(replicas, self.autoscaling.get("min_replicas", 1))
            autoscaler = objects.make_autoscaler(
                spec,
                namespace,
                low,
                max(low, self.autoscaling["max_replicas"]),
                self.autoscaling["cpu_percent"],
            )
        annotations = {
            SPEC_HASH_ANNOTATION: spec_hash,
            REPLICAS_ANNOTATION: str(replicas),
            AUTOSCALED_ANNOTATION: str(autoscaler is not None).lower(),
            USERNAME_ANNOTATION: spec.user,
        }
        deployment["metadata"]["annotations"] = annotations
        service = objects.make_service(spec, namespace)
        api = await self.api()
        existing = await api.get("apps/v1", "Deployment", spec.name, namespace)
        if existing is None:  # the Deployment comes last: once it exists, all exists
            await self._ensure_user(spec.user, spec.project)
            for obj in volumes:
                await api.ensure(obj)
            await self._put(service)
            if autoscaler is not None:
                await self._put(autoscaler)
            try:
                existing = await self._create(deployment, spec)
                self.log.info("Created deployment %s (%s replicas)", spec.name, replicas)
                return await self._replicated_status(existing)
            except ApiException as e:
                if e.status != 409:
                    raise
                existing = await api.get("apps/v1", "Deployment", spec.name, namespace)
                if existing is None:
                    raise
        old = existing["metadata"].get("annotations", {})
        patch: dict[str, Any] = {}
        if old.get(SPEC_HASH_ANNOTATION) != spec_hash:
            for obj in volumes:
                await api.ensure(obj)
            await self._put(service)
            patch["spec"] = {"template": merge_patch(existing["spec"]["template"], template)}
            self.log.info("Rolling out a new spec of deployment %s", spec.name)
        if autoscaler is not None and (
            old.get(REPLICAS_ANNOTATION) != str(replicas)
            or old.get(AUTOSCALED_ANNOTATION) != "true"
        ):
            await self._put(autoscaler)
        elif autoscaler is None and (
            old.get(REPLICAS_ANNOTATION) != str(replicas)
            or existing["spec"].get("replicas") != replicas
            or old.get(AUTOSCALED_ANNOTATION) == "true"
        ):
            if old.get(AUTOSCALED_ANNOTATION) == "true":
                await api.delete("autoscaling/v2", "HorizontalPodAutoscaler", spec.name, namespace)
            patch.setdefault("spec", {})["replicas"] = replicas
        if patch or any(old.get(k) != v for k, v in annotations.items()):
            patch["metadata"] = {
                "annotations": annotations,
                "labels": deployment["metadata"]["labels"],
            }
            existing = await api.patch("apps/v1", "Deployment", spec.name, namespace, patch)
        if "template" in patch.get("spec", {}):
            await self._prune_volumes(spec.name, namespace, volumes)
        return await self._replicated_status(existing)

    async def _put(self, obj: dict) -> None:
        """Merge-patch ``obj``'s labels and spec onto the object, creating it if missing."""
        api = await self.api()
        meta = obj["metadata"]
        patch = {"metadata": {"labels": meta["labels"]}, "spec": obj["spec"]}
        try:
            await api.patch(obj["apiVersion"], obj["kind"], meta["name"], meta["namespace"], patch)
        except ApiException as e:
            if e.status != 404:
                raise
            await api.ensure(obj)

    async def _prune_volumes(self, name: str, namespace: str, keep: list[dict]) -> None:
        """Delete a Deployment's volumes of older specs (claim protection keeps those still in
        use by old pods until they end)."""
        api = await self.api()
        names = {obj["metadata"]["name"] for obj in keep}
        selector = {WORKLOAD_LABEL: name, "app.kubernetes.io/component": VOLUME_COMPONENT}
        for kind, where in (("PersistentVolumeClaim", namespace), ("PersistentVolume", None)):
            found, _ = await api.list("v1", kind, where, selector)
            for obj in found:
                if obj["metadata"]["name"] not in names:
                    await api.delete("v1", kind, obj["metadata"]["name"], where)

    async def _replica_pods(self, namespace: str | None, selector: dict[str, str]) -> list[dict]:
        if self._pods.synced:
            return [p for p in self._pods.all() if _matches(p, selector)]
        api = await self.api()
        pods, _ = await api.list("v1", "Pod", namespace, {**selector, **MANAGED})
        return pods

    async def _replicated_status(self, deployment: dict) -> ReplicatedStatus:
        meta = deployment["metadata"]
        pods = await self._replica_pods(meta["namespace"], {WORKLOAD_LABEL: meta["name"]})
        return replicated_status(deployment, pods)

    async def list_replicas(self, selector: dict[str, str] | None = None) -> list[WorkloadStatus]:
        """The pods of replicated workloads whose labels include ``selector``."""
        selector = {**(selector or {}), KIND_LABEL: "model-replica"}
        pods = await self._replica_pods(None, selector)
        return sorted(
            (replica_status(p) for p in pods if not p["metadata"].get("deletionTimestamp")),
            key=lambda s: s.created,
        )

    async def list_replicated(
        self, selector: dict[str, str] | None = None
    ) -> list[ReplicatedStatus]:
        api = await self.api()
        selector = {**(selector or {}), KIND_LABEL: "model-replica"}
        deployments, _ = await api.list("apps/v1", "Deployment", None, {**selector, **MANAGED})
        pods = await self._replica_pods(None, selector)
        by_workload: dict[str, list[dict]] = {}
        for pod in pods:
            by_workload.setdefault(pod["metadata"]["labels"].get(WORKLOAD_LABEL, ""), []).append(
                pod
            )
        return [
            replicated_status(d, by_workload.get(d["metadata"]["name"], []))
            for d in deployments
            if WORKLOAD_LABEL in d["metadata"].get("labels", {})
            and not d["metadata"].get("deletionTimestamp")
        ]

    async def project_access_removed(self, project: str, user: str | None = None) -> None:
        """Delete ``user``'s (None: every user's) volume pair of ``project``."""
        api = await self.api()
        if user is None:
            await self.user_namespaces.remove_project_everywhere(api, project)
        else:
            await self.user_namespaces.remove_project(api, user, project)
        for key in [k for k in self._ensured if k[1] == project and user in (None, k[0])]:
            del self._ensured[key]

    async def remove_replicated(self, name: str) -> None:
        api = await self.api()
        selector = {WORKLOAD_LABEL: name}
        namespaces = set()
        for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service")):
            found, _ = await api.list(api_version, kind, None, selector)
            namespaces |= {obj["metadata"]["namespace"] for obj in found}
        for namespace in namespaces:
            await api.delete("apps/v1", "Deployment", name, namespace)  # pods follow (GC)
            await api.delete("v1", "Service", name, namespace)
            await api.delete("autoscaling/v2", "HorizontalPodAutoscaler", name, namespace)
        await self._delete_volumes(name)
        if namespaces:
            self.log.info("Removed deployment %s", name)


def _matches(obj: dict, selector: Mapping[str, str]) -> bool:
    return selector.items() <= obj["metadata"].get("labels", {}).items()


def _is_job_pod(pod: dict) -> bool:
    return pod["metadata"].get("labels", {}).get(KIND_LABEL) in JOB_KINDS
