"""Controllers: asyncio tasks that react to store events, as kube-controller-manager does.

Each controller keeps a de-duplicating work queue of keys filled synchronously by store
events and drained by one task (``start()``/``stop()``). Implemented:

* namespace: a Terminating namespace has its content deleted, then disappears;
* garbage collector: dependents of a vanished owner are deleted (Background) or the owner
  waits for its blocking dependents (Foreground);
* volumes: PV/PVC binding (``claimRef`` + ``volumeName``), Released/Delete/Recycle on claim
  loss, ``kubernetes.io/pvc-protection`` and ``kubernetes.io/pv-protection`` finalizers;
* resource quota: ``status.used`` of every ResourceQuota kept current;
* jobs: one pod at a time from the template, backoffLimit, activeDeadlineSeconds,
  ttlSecondsAfterFinished, Complete/Failed conditions as Kubernetes 1.31+ reports them;
* deployments and replica sets: one ReplicaSet per ``pod-template-hash``, rolling updates
  honouring maxSurge/maxUnavailable, Recreate, scaling, status and conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import uuid
from collections.abc import Hashable, Iterable

import orjson

from tests.kubeapi.admission import PV_PROTECTION, PVC_PROTECTION, quota_used
from tests.kubeapi.errors import ApiError
from tests.kubeapi.resources import RESOURCES
from tests.kubeapi.store import (
    Event,
    Store,
    clone,
    owner_uids,
    parse_timestamp,
    timestamp,
    utcnow,
)

log = logging.getLogger(__name__)
TERMINAL = ("Succeeded", "Failed")
_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


_PLURALS = {(rt.api_version, rt.kind): rt.plural for rt in RESOURCES.values()}


def resource_of(obj: dict) -> str:
    """The resource (plural) of a stored object."""
    return _PLURALS[(obj["apiVersion"], obj["kind"])]


def pod_from_template(owner: dict) -> dict:
    """A new pod from a Job's or ReplicaSet's template, owned by it (``generateName``)."""
    template = clone(owner["spec"]["template"])
    meta = template.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{owner['metadata']['name']}-",
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": template["spec"],
    }


def record_event(
    store: Store,
    obj: dict,
    reason: str,
    message: str,
    *,
    type: str = "Normal",
    component: str = "kubelet",
    host: str | None = None,
) -> None:
    """Create a core/v1 Event about ``obj`` (skipped in a missing or terminating namespace)."""
    meta = obj["metadata"]
    namespace = meta.get("namespace") or "default"
    ns = store.get("namespaces", None, namespace)
    if ns is None or ns["metadata"].get("deletionTimestamp"):
        return
    now = timestamp()
    source = {"component": component, **({"host": host} if host else {})}
    event = {
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": namespace,
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": type,
        "source": source,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": component,
        "reportingInstance": host or "",
    }
    try:
        store.create("events", event, namespace)
    except ApiError:
        log.debug("event %s on %s not recorded", reason, meta["name"])


def is_ready(pod: dict) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def set_condition(
    conditions: list[dict],
    type_: str,
    status: bool,
    reason: str = "",
    message: str = "",
    *,
    times: tuple[str, ...] = ("lastTransitionTime",),
) -> None:
    """Set a condition in place, keeping lastTransitionTime when the status is unchanged."""
    now = timestamp()
    value = "True" if status else "False"
    current = next((c for c in conditions if c["type"] == type_), None)
    if current is None:
        current = {"type": type_}
        conditions.append(current)
    if current.get("status") != value:
        for field in times:
            current[field] = now
    elif "lastUpdateTime" in times and (current.get("reason"), current.get("message")) != (
        reason,
        message,
    ):
        current["lastUpdateTime"] = now
    current["status"] = value
    if reason:
        current["reason"] = reason
    if message:
        current["message"] = message


def owner_reference(owner: dict) -> dict:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_of(obj: dict, kind: str) -> str | None:
    """The name of the controlling owner of ``kind``, if any."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return ref["name"]
    return None


class Controller:
    """A work queue of keys filled by store events and drained by one task."""

    resources: tuple[str, ...] = ()

    def __init__(self, store: Store):
        self.store = store
        self._dirty: dict[Hashable, None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    def keys_for(self, event: Event) -> Iterable[Hashable]:
        meta = event.obj["metadata"]
        return [(meta.get("namespace"), meta["name"])]

    def _on_event(self, event: Event) -> None:
        if event.resource in self.resources:
            for key in self.keys_for(event):
                self.enqueue(key)

    def enqueue(self, key: Hashable) -> None:
        self._dirty[key] = None
        self._wake.set()

    def enqueue_after(self, key: Hashable, delay: float) -> None:
        loop = asyncio.get_running_loop()
        handle = loop.call_later(
            max(delay, 0.0), lambda: (self._timers.discard(handle), self.enqueue(key))
        )
        self._timers.add(handle)

    def start(self) -> None:
        self.store.listeners.append(self._on_event)
        self._task = asyncio.create_task(self._run(), name=type(self).__name__)

    async def stop(self) -> None:
        if self._on_event in self.store.listeners:
            self.store.listeners.remove(self._on_event)
        for handle in self._timers:
            handle.cancel()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            done = 0
            while self._dirty:
                key = next(iter(self._dirty))
                del self._dirty[key]
                try:
                    result = self.reconcile(key)
                    if inspect.isawaitable(result):
                        await result
                except ApiError as exc:
                    log.debug("%s %r: %s", type(self).__name__, key, exc.message)
                except Exception:
                    log.exception("%s failed on %r", type(self).__name__, key)
                done += 1
                if done % 50 == 0:
                    await asyncio.sleep(0)

    def reconcile(self, key):
        raise NotImplementedError


class NamespaceController(Controller):
    """Empties Terminating namespaces, then removes them."""

    resources = tuple(RESOURCES)
    #: how long a Terminating namespace waits before its content is deleted
    delay = 0.05

    def _on_event(self, event: Event) -> None:
        meta = event.obj["metadata"]
        was_deleting = ((event.old or {}).get("metadata") or {}).get("deletionTimestamp")
        if event.resource == "namespaces" and meta.get("deletionTimestamp") and not was_deleting:
            self.enqueue_after(meta["name"], self.delay)
        else:
            super()._on_event(event)

    def keys_for(self, event: Event) -> Iterable[Hashable]:
        meta = event.obj["metadata"]
        if event.resource == "namespaces":
            return [meta["name"]] if meta.get("deletionTimestamp") else []
        namespace = meta.get("namespace")
        if event.type == "DELETED" and namespace:
            ns = self.store.get("namespaces", None, namespace)
            if ns and ns["metadata"].get("deletionTimestamp"):
                return [namespace]
        return []

    def reconcile(self, name: str) -> None:
        ns = self.store.get("namespaces", None, name)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        for resource, obj in list(self.store.in_namespace(name)):
            if not obj["metadata"].get("deletionTimestamp"):
                with contextlib.suppress(ApiError):
                    self.store.delete(
                        resource, name, obj["metadata"]["name"], propagation="Background"
                    )
        if next(self.store.in_namespace(name), None) is not None:
            self.enqueue_after(name, 0.2)
            return
        self.store.modify(
            "namespaces", None, name, lambda obj: obj["spec"].__setitem__("finalizers", [])
        )


class GarbageCollector(Controller):
    """Deletes dependents whose owners are gone; completes Foreground deletions."""

    resources = tuple(RESOURCES)

    def keys_for(self, event: Event) -> Iterable[Hashable]:
        meta = event.obj["metadata"]
        keys: list[Hashable] = []
        if event.type == "DELETED":
            keys.append(("gone", meta["uid"]))
        elif event.type == "ADDED":
            keys += [("gone", uid) for uid in owner_uids(event.obj) if uid not in self.store.uids]
        if "foregroundDeletion" in (meta.get("finalizers") or []):
            keys.append(("foreground", meta["uid"]))
        if event.type == "DELETED" or meta.get("deletionTimestamp"):
            keys += [("foreground", uid) for uid in owner_uids(event.obj)]
        return keys

    def reconcile(self, key: tuple[str, str]) -> None:
        what, uid = key
        if what == "gone":
            if uid in self.store.uids:
                return
            for dep in self.store.owned_by(uid):
                meta = dep["metadata"]
                refs = meta.get("ownerReferences") or []
                if any(r.get("uid") in self.store.uids for r in refs if r.get("uid") != uid):
                    self.store.orphan_dependents(uid)
                elif not meta.get("deletionTimestamp"):
                    self.store.delete(
                        resource_of(dep),
                        meta.get("namespace"),
                        meta["name"],
                        propagation="Background",
                    )
            return
        owner = self.store.by_uid(uid)
        if owner is None or "foregroundDeletion" not in (owner["metadata"].get("finalizers") or []):
            return
        blocking = 0
        for dep in self.store.owned_by(uid):
            meta = dep["metadata"]
            if not meta.get("deletionTimestamp"):
                self.store.delete(
                    resource_of(dep), meta.get("namespace"), meta["name"], propagation="Foreground"
                )
            dep = self.store.get(resource_of(dep), meta.get("namespace"), meta["name"])
            if dep and any(
                r.get("uid") == uid and r.get("blockOwnerDeletion")
                for r in dep["metadata"].get("ownerReferences") or []
            ):
                blocking += 1
        if not blocking:
            meta = owner["metadata"]
            self.store.remove_finalizer(
                resource_of(owner), meta.get("namespace"), meta["name"], "foregroundDeletion"
            )


class VolumeController(Controller):
    """PV/PVC binding, reclaim on claim loss, and the two storage protection finalizers."""

    resources = ("persistentvolumes", "persistentvolumeclaims", "pods")

    def keys_for(self, event: Event) -> Iterable[Hashable]:
        obj = event.obj
        meta, spec = obj["metadata"], obj.get("spec") or {}
        if event.resource == "persistentvolumes":
            keys: list[Hashable] = [("pv", meta["name"])]
            ref = spec.get("claimRef")
            if ref:
                keys.append(("pvc", ref.get("namespace"), ref.get("name")))
            return keys
        if event.resource == "persistentvolumeclaims":
            keys = [("pvc", meta["namespace"], meta["name"])]
            keys += [
                ("pv", pv["metadata"]["name"])
                for pv in self.store.list("persistentvolumes")
                if (pv["spec"].get("claimRef") or {}).get("name") == meta["name"]
                or pv["metadata"]["name"] == spec.get("volumeName")
            ]
            return keys
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in spec.get("volumes") or []
            if v.get("persistentVolumeClaim")
        ]
        return [
            ("pvc", meta["namespace"], c)
            for c in claims
            if (self.store.get("persistentvolumeclaims", meta["namespace"], c) or {"metadata": {}})[
                "metadata"
            ].get("deletionTimestamp")
        ]

    def in_use(self, namespace: str, claim: str) -> bool:
        for pod in self.store.list("pods", namespace):
            if (pod.get("status") or {}).get("phase") in TERMINAL:
                continue
            for volume in pod["spec"].get("volumes") or []:
                if (volume.get("persistentVolumeClaim") or {}).get("claimName") == claim:
                    return True
        return False

    def reconcile(self, key: tuple) -> None:
        if key[0] == "pvc":
            self._sync_claim(key[1], key[2])
        else:
            self._sync_volume(key[1])

    def _sync_claim(self, namespace: str, name: str) -> None:
        pvc = self.store.get("persistentvolumeclaims", namespace, name)
        if pvc is None:
            return
        meta = pvc["metadata"]
        if meta.get("deletionTimestamp"):
            if PVC_PROTECTION in (meta.get("finalizers") or []) and not self.in_use(
                namespace, name
            ):
                self.store.remove_finalizer(
                    "persistentvolumeclaims", namespace, name, PVC_PROTECTION
                )
            return
        volume_name = pvc["spec"].get("volumeName")
        pv = None
        if volume_name:
            pv = self.store.get("persistentvolumes", None, volume_name)
        else:
            for candidate in self.store.list("persistentvolumes"):
                ref = candidate["spec"].get("claimRef") or {}
                if (
                    (ref.get("namespace"), ref.get("name")) == (namespace, name)
                    and ref.get("uid", meta["uid"]) == meta["uid"]
                    and candidate["status"].get("phase") != "Released"
                ):
                    pv = candidate
                    break
        if pv is None:
            if volume_name and pvc["status"].get("phase") == "Bound":
                self.store.modify(
                    "persistentvolumeclaims",
                    namespace,
                    name,
                    lambda c: c["status"].__setitem__("phase", "Lost"),
                )
            return
        ref = pv["spec"].get("claimRef")
        if ref and (
            (ref.get("namespace"), ref.get("name")) != (namespace, name)
            or ref.get("uid", meta["uid"]) != meta["uid"]
        ):
            return  # the volume is meant for another claim
        if pv["metadata"].get("deletionTimestamp"):
            return

        def bind_volume(volume: dict) -> None:
            volume["spec"]["claimRef"] = {
                "kind": "PersistentVolumeClaim",
                "namespace": namespace,
                "name": name,
                "uid": meta["uid"],
                "apiVersion": "v1",
                "resourceVersion": meta["resourceVersion"],
            }
            volume["status"] = {"phase": "Bound"}

        def bind_claim(claim: dict) -> None:
            annotations = claim["metadata"].setdefault("annotations", {})
            annotations["pv.kubernetes.io/bind-completed"] = "yes"
            if not claim["spec"].get("volumeName"):
                annotations["pv.kubernetes.io/bound-by-controller"] = "yes"
                claim["spec"]["volumeName"] = pv["metadata"]["name"]
            claim["status"] = {
                "phase": "Bound",
                "accessModes": pv["spec"].get("accessModes") or [],
                "capacity": pv["spec"].get("capacity") or {},
            }

        if pv["status"].get("phase") != "Bound" or not ref or "uid" not in ref:
            self.store.modify("persistentvolumes", None, pv["metadata"]["name"], bind_volume)
        self.store.modify("persistentvolumeclaims", namespace, name, bind_claim)

    def _sync_volume(self, name: str) -> None:
        pv = self.store.get("persistentvolumes", None, name)
        if pv is None:
            return
        meta, phase = pv["metadata"], pv["status"].get("phase")
        protected = PV_PROTECTION in (meta.get("finalizers") or [])
        if meta.get("deletionTimestamp") and phase != "Bound" and protected:
            self.store.remove_finalizer("persistentvolumes", None, name, PV_PROTECTION)
        ref = pv["spec"].get("claimRef")
        if not ref or "uid" not in ref or phase == "Released":
            return
        claim = self.store.get("persistentvolumeclaims", ref.get("namespace"), ref.get("name"))
        if claim is not None and claim["metadata"]["uid"] == ref["uid"]:
            return
        policy = pv["spec"].get("persistentVolumeReclaimPolicy", "Retain")
        if policy == "Delete":
            if not meta.get("deletionTimestamp"):
                self.store.delete("persistentvolumes", None, name)
            self.store.modify(
                "persistentvolumes",
                None,
                name,
                lambda v: v["status"].__setitem__("phase", "Released"),
            )
        elif policy == "Recycle":

            def recycle(volume: dict) -> None:
                volume["spec"].pop("claimRef", None)
                volume["status"] = {"phase": "Available"}

            self.store.modify("persistentvolumes", None, name, recycle)
        else:
            self.store.modify(
                "persistentvolumes",
                None,
                name,
                lambda v: v["status"].__setitem__("phase", "Released"),
            )


class QuotaController(Controller):
    """Keeps ``status.hard`` and ``status.used`` of ResourceQuotas current."""

    resources = tuple(r for r, rt in RESOURCES.items() if rt.namespaced and r != "events")

    def keys_for(self, event: Event) -> Iterable[Hashable]:
        namespace = event.obj["metadata"].get("namespace")
        if event.resource == "resourcequotas" or self.store.list("resourcequotas", namespace):
            return [namespace]
        return []

    def reconcile(self, namespace: str) -> None:
        for quota in self.store.list("resourcequotas", namespace):
            hard = (quota.get("spec") or {}).get("hard") or {}
            status = {"hard": dict(hard), "used": quota_used(self.store, namespace, hard)}
            self.store.modify(
                "resourcequotas",
                namespace,
                quota["metadata"]["name"],
                lambda q, status=status: q.__setitem__("status", status),
            )


class JobController(Controller):
    """batch/v1 Jobs: pods from the template until success, backoff limit or deadline."""

    resources = ("jobs", "pods")

    def keys_for(self, event: Event) -> Iterable[Hashable]:
        meta = event.obj["metadata"]
        if event.resource == "jobs":
            return [(meta["namespace"], meta["name"])]
        owner = controller_of(event.obj, "Job")
        return [(meta["namespace"], owner)] if owner else []

    def reconcile(self, key: tuple[str, str]) -> None:
        namespace, name = key
        job = self.store.get("jobs", namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        spec, status = job["spec"], job.get("status") or {}
        conditions = status.get("conditions") or []
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions):
            self._expire(job)
            return
        if spec.get("suspend"):
            return
        now = utcnow()
        pods = self.store.owned_by(job["metadata"]["uid"], "pods")
        active = [
            p
            for p in pods
            if p["status"].get("phase") not in TERMINAL
            and not p["metadata"].get("deletionTimestamp")
        ]
        terminating = [
            p
            for p in pods
            if p["status"].get("phase") not in TERMINAL and p["metadata"].get("deletionTimestamp")
        ]
        succeeded = sum(p["status"].get("phase") == "Succeeded" for p in pods)
        failed = sum(p["status"].get("phase") == "Failed" for p in pods)
        restarts = 0
        if spec["template"]["spec"].get("restartPolicy") == "OnFailure":
            restarts = sum(
                c.get("restartCount", 0)
                for p in pods
                for c in p["status"].get("containerStatuses") or []
            )
        start = status.get("startTime") or timestamp(now)
        existing = next(
            (c for c in conditions if c["type"] in ("FailureTarget", "SuccessCriteriaMet")), None
        )
        target = (
            (existing["type"], existing.get("reason", ""), existing.get("message", ""))
            if existing
            else None
        )
        deadline = spec.get("activeDeadlineSeconds")
        if target is None:
            elapsed = (now - parse_timestamp(start)).total_seconds()
            if deadline is not None and elapsed >= deadline:
                target = (
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )
            elif succeeded >= spec.get("completions", 1):
                target = (
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                )
            elif failed + restarts > spec.get("backoffLimit", 6):
                target = (
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
            if target and target[0] == "FailureTarget":
                record_event(
                    self.store,
                    job,
                    target[1],
                    target[2],
                    type="Warning",
                    component="job-controller",
                )
            elif target:
                record_event(
                    self.store, job, "Completed", "Job completed", component="job-controller"
                )
            elif deadline is not None:
                self.enqueue_after(key, deadline - elapsed)
        if target is not None and target[0] == "FailureTarget":
            for pod in active:
                self.store.delete("pods", namespace, pod["metadata"]["name"])
            terminating += active
            active = []
        if target is None:
            wanted = min(spec.get("parallelism", 1), spec.get("completions", 1) - succeeded) - len(
                active
            )
            for _ in range(max(wanted, 0)):
                pod = self._create_pod(job)
                if pod is None:
                    self.enqueue_after(key, 1.0)
                    break
                active.append(pod)
        self._write_status(job, start, active, terminating, succeeded, failed, target)

    def _create_pod(self, job: dict) -> dict | None:
        pod = pod_from_template(job)
        try:
            pod = self.store.create("pods", pod, job["metadata"]["namespace"])
        except ApiError as exc:
            record_event(
                self.store,
                job,
                "FailedCreate",
                f"Error creating: {exc.message}",
                type="Warning",
                component="job-controller",
            )
            return None
        record_event(
            self.store,
            job,
            "SuccessfulCreate",
            f"Created pod: {pod['metadata']['name']}",
            component="job-controller",
        )
        return pod

    def _write_status(self, job, start, active, terminating, succeeded, failed, target):
        def update(obj: dict) -> None:
            status = obj.setdefault("status", {})
            conditions = status.setdefault("conditions", [])
            status.update(
                {
                    "startTime": start,
                    "active": len(active),
                    "ready": sum(is_ready(p) for p in active),
                    "terminating": len(terminating),
                    "uncountedTerminatedPods": {},
                }
            )
            for field, value in (("succeeded", succeeded), ("failed", failed)):
                if value:
                    status[field] = value
            if target is not None:
                kind, reason, message = target
                times = ("lastProbeTime", "lastTransitionTime")
                set_condition(conditions, kind, True, reason, message, times=times)
                if not active and not terminating:
                    final = "Complete" if kind == "SuccessCriteriaMet" else "Failed"
                    set_condition(conditions, final, True, reason, message, times=times)
                    if final == "Complete":
                        status["completionTime"] = timestamp()
            for field in ("active", "ready", "terminating"):
                if not status[field] and field != "ready":
                    status.pop(field)
            if not conditions:
                del status["conditions"]

        self.store.modify("jobs", job["metadata"]["namespace"], job["metadata"]["name"], update)

    def _expire(self, job: dict) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        status = job["status"]
        finished = status.get("completionTime") or next(
            c["lastTransitionTime"]
            for c in status["conditions"]
            if c["type"] in ("Complete", "Failed")
        )
        remaining = parse_timestamp(finished).timestamp() + ttl - utcnow().timestamp()
        meta = job["metadata"]
        if remaining > 0:
            self.enqueue_after((meta["namespace"], meta["name"]), remaining)
        else:
            self.store.delete("jobs", meta["namespace"], meta["name"], propagation="Background")


def pod_template_hash(template: dict) -> str:
    """FNV-1a of the template, encoded with the API machinery's safe alphabet."""
    value = 0x811C9DC5
    for byte in orjson.dumps(template, option=orjson.OPT_SORT_KEYS):
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_HASH_ALPHABET[ord(c) % len(_HASH_ALPHABET)] for c in str(value))


def _scaled(value, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value or 0)


class WorkloadController(Controller):
    """apps/v1 Deployments and ReplicaSets."""

    resources = ("deployments", "replicasets", "pods")

    def keys_for(self, event: Event) -> Iterable[Hashable]:
        meta = event.obj["metadata"]
        namespace = meta.get("namespace")
        if event.resource == "deployments":
            return [("deployments", namespace, meta["name"])]
        if event.resource == "replicasets":
            keys: list[Hashable] = [("replicasets", namespace, meta["name"])]
            owner = controller_of(event.obj, "Deployment")
            return keys + ([("deployments", namespace, owner)] if owner else [])
        owner = controller_of(event.obj, "ReplicaSet")
        return [("replicasets", namespace, owner)] if owner else []

    def reconcile(self, key: tuple[str, str, str]) -> None:
        if key[0] == "replicasets":
            self._sync_replica_set(key[1], key[2])
        else:
            self._sync_deployment(key[1], key[2])

    # -- replica sets -------------------------------------------------------------------------

    def _sync_replica_set(self, namespace: str, name: str) -> None:
        rs = self.store.get("replicasets", namespace, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        pods = self.store.owned_by(rs["metadata"]["uid"], "pods")
        live = [
            p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and p["status"].get("phase") not in TERMINAL
        ]
        wanted = rs["spec"].get("replicas", 1)
        if len(live) < wanted:
            for _ in range(wanted - len(live)):
                pod = self._create_pod(rs)
                if pod is None:
                    self.enqueue_after(("replicasets", namespace, name), 1.0)
                    break
                live.append(pod)
        elif len(live) > wanted:
            live.sort(key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
            live.sort(key=is_ready)  # unready first, then newest first
            for pod in live[: len(live) - wanted]:
                self.store.delete("pods", namespace, pod["metadata"]["name"])
                record_event(
                    self.store,
                    rs,
                    "SuccessfulDelete",
                    f"Deleted pod: {pod['metadata']['name']}",
                    component="replicaset-controller",
                )
            live = live[len(live) - wanted :]
        ready = sum(is_ready(p) for p in live)
        status = {
            "replicas": len(live),
            "fullyLabeledReplicas": len(live),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        for field in ("fullyLabeledReplicas", "readyReplicas", "availableReplicas"):
            if not status[field]:
                del status[field]
        self.store.modify(
            "replicasets", namespace, name, lambda obj: obj.__setitem__("status", status)
        )

    def _create_pod(self, rs: dict) -> dict | None:
        pod = pod_from_template(rs)
        try:
            pod = self.store.create("pods", pod, rs["metadata"]["namespace"])
        except ApiError as exc:
            record_event(
                self.store,
                rs,
                "FailedCreate",
                f"Error creating: {exc.message}",
                type="Warning",
                component="replicaset-controller",
            )
            return None
        record_event(
            self.store,
            rs,
            "SuccessfulCreate",
            f"Created pod: {pod['metadata']['name']}",
            component="replicaset-controller",
        )
        return pod

    # -- deployments --------------------------------------------------------------------------

    def _scale(self, deployment: dict, rs: dict, replicas: int) -> dict:
        old = rs["spec"].get("replicas", 0)
        if old == replicas:
            return rs
        meta = rs["metadata"]

        def set_replicas(obj: dict) -> None:
            obj["spec"]["replicas"] = replicas
            annotations = obj["metadata"].setdefault("annotations", {})
            annotations["deployment.kubernetes.io/desired-replicas"] = str(
                deployment["spec"]["replicas"]
            )

        updated = self.store.modify("replicasets", meta["namespace"], meta["name"], set_replicas)
        direction = "up" if replicas > old else "down"
        record_event(
            self.store,
            deployment,
            "ScalingReplicaSet",
            f"Scaled {direction} replica set {meta['name']} from {old} to {replicas}",
            component="deployment-controller",
        )
        return updated or rs

    def _sync_deployment(self, namespace: str, name: str) -> None:
        deployment = self.store.get("deployments", namespace, name)
        if deployment is None or deployment["metadata"].get("deletionTimestamp"):
            return
        spec = deployment["spec"]
        replicas = spec.get("replicas", 1)
        template_hash = pod_template_hash(spec["template"])
        owned = [
            rs
            for rs in self.store.owned_by(deployment["metadata"]["uid"], "replicasets")
            if not rs["metadata"].get("deletionTimestamp")
        ]
        owned.sort(key=lambda rs: rs["metadata"]["creationTimestamp"])
        new = next(
            (
                rs
                for rs in owned
                if rs["metadata"].get("labels", {}).get("pod-template-hash") == template_hash
            ),
            None,
        )
        old = [rs for rs in owned if rs is not new]
        strategy = spec.get("strategy") or {}
        rolling = strategy.get("rollingUpdate") or {}
        surge = _scaled(rolling.get("maxSurge", "25%"), replicas, True)
        unavailable = _scaled(rolling.get("maxUnavailable", "25%"), replicas, False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        old_pods = sum(rs["status"].get("replicas", 0) for rs in old)
        created = False
        if new is None:
            if strategy.get("type") == "Recreate":
                initial = 0 if old_pods or any(rs["spec"]["replicas"] for rs in old) else replicas
            else:
                total = sum(rs["spec"].get("replicas", 0) for rs in old)
                initial = max(0, min(replicas, replicas + surge - total))
            new = self._create_replica_set(deployment, template_hash, initial, owned)
            if new is None:
                return
            created = True
        elif not spec.get("paused"):
            if strategy.get("type") == "Recreate":
                for rs in old:
                    self._scale(deployment, rs, 0)
                if not old_pods:
                    new = self._scale(deployment, new, replicas)
            else:
                new = self._roll(deployment, new, old, replicas, surge, unavailable)
        self._cleanup(deployment, old)
        self._write_status(deployment, new, created, replicas - unavailable)

    def _roll(
        self,
        deployment: dict,
        new: dict,
        old: list[dict],
        replicas: int,
        surge: int,
        unavailable: int,
    ) -> dict:
        total = sum(rs["spec"].get("replicas", 0) for rs in [new, *old])
        current = new["spec"].get("replicas", 0)
        if current > replicas:
            new = self._scale(deployment, new, replicas)
        elif current < replicas:
            room = replicas + surge - total
            if room > 0:
                new = self._scale(deployment, new, current + min(room, replicas - current))
        if not any(rs["spec"].get("replicas", 0) for rs in old):
            return new
        min_available = replicas - unavailable
        all_pods = sum(rs["status"].get("replicas", 0) for rs in [new, *old])
        new_unavailable = new["spec"]["replicas"] - new["status"].get("availableReplicas", 0)
        cleanup = all_pods - min_available - new_unavailable
        for index, rs in enumerate(old):  # oldest first: unhealthy replicas go first
            if cleanup <= 0:
                break
            unhealthy = rs["spec"]["replicas"] - rs["status"].get("availableReplicas", 0)
            if unhealthy > 0:
                count = min(cleanup, unhealthy)
                old[index] = self._scale(deployment, rs, rs["spec"]["replicas"] - count)
                cleanup -= count
        available = sum(rs["status"].get("availableReplicas", 0) for rs in [new, *old])
        budget = available - min_available
        for rs in old:
            if budget <= 0:
                break
            count = min(rs["spec"]["replicas"], budget)
            if count:
                self._scale(deployment, rs, rs["spec"]["replicas"] - count)
                budget -= count
        return new

    def _create_replica_set(
        self, deployment: dict, template_hash: str, replicas: int, owned: list[dict]
    ) -> dict | None:
        meta, spec = deployment["metadata"], deployment["spec"]
        template = clone(spec["template"])
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            "pod-template-hash": template_hash,
        }
        template.setdefault("metadata", {})["labels"] = labels
        selector = clone(spec["selector"])
        selector.setdefault("matchLabels", {})["pod-template-hash"] = template_hash
        revision = (
            max(
                [
                    int(
                        rs["metadata"]
                        .get("annotations", {})
                        .get("deployment.kubernetes.io/revision", "0")
                    )
                    for rs in owned
                ]
                + [0]
            )
            + 1
        )
        max_surge = _scaled(
            (spec.get("strategy") or {}).get("rollingUpdate", {}).get("maxSurge", "25%"),
            spec["replicas"],
            True,
        )
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta['name']}-{template_hash}",
                "labels": labels,
                "annotations": {
                    "deployment.kubernetes.io/desired-replicas": str(spec["replicas"]),
                    "deployment.kubernetes.io/max-replicas": str(spec["replicas"] + max_surge),
                    "deployment.kubernetes.io/revision": str(revision),
                },
                "ownerReferences": [owner_reference(deployment)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": spec.get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
        }
        try:
            rs = self.store.create("replicasets", rs, meta["namespace"])
        except ApiError as exc:
            record_event(
                self.store,
                deployment,
                "FailedCreate",
                exc.message,
                type="Warning",
                component="deployment-controller",
            )
            return None
        record_event(
            self.store,
            deployment,
            "ScalingReplicaSet",
            f"Scaled up replica set {rs['metadata']['name']} from 0 to {replicas}",
            component="deployment-controller",
        )
        return rs

    def _cleanup(self, deployment: dict, old: list[dict]) -> None:
        limit = deployment["spec"].get("revisionHistoryLimit", 10)
        idle = [
            rs for rs in old if not rs["spec"].get("replicas") and not rs["status"].get("replicas")
        ]
        for rs in idle[: max(len(idle) - limit, 0)]:
            self.store.delete("replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"])

    def _write_status(self, deployment: dict, new: dict, created: bool, min_available: int) -> None:
        meta = deployment["metadata"]
        owned = [
            rs
            for rs in self.store.owned_by(meta["uid"], "replicasets")
            if not rs["metadata"].get("deletionTimestamp")
        ]
        new = self.store.get("replicasets", meta["namespace"], new["metadata"]["name"]) or new
        replicas = deployment["spec"].get("replicas", 1)
        total = sum(rs["status"].get("replicas", 0) for rs in owned)
        updated = new["status"].get("replicas", 0)
        ready = sum(rs["status"].get("readyReplicas", 0) for rs in owned)
        available = sum(rs["status"].get("availableReplicas", 0) for rs in owned)
        wanted = sum(rs["spec"].get("replicas", 0) for rs in owned)
        new_name = new["metadata"]["name"]
        complete = updated == replicas and available == replicas and total == replicas

        def update(obj: dict) -> None:
            status = obj.setdefault("status", {})
            conditions = status.setdefault("conditions", [])
            status.update(
                {
                    "observedGeneration": obj["metadata"].get("generation", 1),
                    "replicas": total,
                    "updatedReplicas": updated,
                    "readyReplicas": ready,
                    "availableReplicas": available,
                    "unavailableReplicas": max(wanted - available, 0),
                }
            )
            for field in (
                "replicas",
                "updatedReplicas",
                "readyReplicas",
                "availableReplicas",
                "unavailableReplicas",
            ):
                if not status[field]:
                    del status[field]
            times = ("lastUpdateTime", "lastTransitionTime")
            if available >= min_available:
                set_condition(
                    conditions,
                    "Available",
                    True,
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                    times=times,
                )
            else:
                set_condition(
                    conditions,
                    "Available",
                    False,
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                    times=times,
                )
            if created:
                reason, message = "NewReplicaSetCreated", f'Created new replica set "{new_name}"'
            elif complete:
                reason = "NewReplicaSetAvailable"
                message = f'ReplicaSet "{new_name}" has successfully progressed.'
            else:
                reason, message = "ReplicaSetUpdated", f'ReplicaSet "{new_name}" is progressing.'
            set_condition(conditions, "Progressing", True, reason, message, times=times)
            annotations = obj["metadata"].setdefault("annotations", {})
            annotations["deployment.kubernetes.io/revision"] = (
                new["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision", "1")
            )

        self.store.modify("deployments", meta["namespace"], meta["name"], update)


def start_controllers(store: Store) -> list[Controller]:
    """Create and start every controller; stop them with ``await c.stop()``."""
    controllers = [
        NamespaceController(store),
        GarbageCollector(store),
        VolumeController(store),
        QuotaController(store),
        JobController(store),
        WorkloadController(store),
    ]
    for controller in controllers:
        controller.start()
    return controllers
