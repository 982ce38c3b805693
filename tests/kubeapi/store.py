"""The in-memory object store: the part of the double that is the API server proper.

Objects are plain dicts kept per resource, namespace and name. Every write takes the next
value of one global counter as ``metadata.resourceVersion`` (a string, like etcd's revision)
and is appended to a bounded history that watches replay from; a watch asking for a
resourceVersion older than the history gets ``410 Expired``. Stored dicts are never mutated
in place (writers build a new dict), so events and watch streams can share them safely.

Deletion follows the real registry: an object with finalizers, a namespace, or a scheduled
pod (graceful deletion) gets ``deletionTimestamp`` and stays until its finalizers are gone
(the namespace controller, the kubelet, the garbage collector and the volume controller
remove them); everything else goes at once. ``propagationPolicy`` is honoured: Background
(the garbage collector deletes dependents afterwards), Foreground (``foregroundDeletion``
finalizer until blocking dependents are gone), Orphan (owner references are stripped, at
once rather than through an ``orphan`` finalizer).

Everything runs on the event loop of the test; no method blocks or awaits, so there are no
locks: controllers call the same methods the HTTP layer calls.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from tests.kubeapi import admission
from tests.kubeapi.errors import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    expired,
    forbidden,
    invalid,
    not_found,
)
from tests.kubeapi.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from tests.kubeapi.resources import RESOURCES, ResourceType
from tests.kubeapi.selectors import FieldRequirement, Requirement, fields_match, labels_match
from tests.kubeapi.validation import name_problems, schema_problems, semantic_problems

_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
PATCH_TYPES = {
    "application/json-patch+json": json_patch,
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": strategic_merge_patch,
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def timestamp(when: datetime | None = None) -> str:
    """RFC 3339 in UTC with second precision, as ``metav1.Time`` is serialised."""
    return (when or utcnow()).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def clone(obj):
    """A deep copy of a JSON document (faster than copy.deepcopy)."""
    return orjson.loads(orjson.dumps(obj))


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice(_NAME_ALPHABET) for _ in range(length))


def owner_uids(obj: dict | None) -> set[str]:
    if not obj:
        return set()
    return {ref["uid"] for ref in obj["metadata"].get("ownerReferences") or [] if "uid" in ref}


def _spec_part(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@dataclass
class Event:
    """One change: ``type`` is ADDED, MODIFIED or DELETED; ``old`` is the previous state."""

    rv: int
    type: str
    resource: str
    obj: dict
    old: dict | None


class Watcher:
    """One open watch: a queue of ``(type, object)`` pairs, ``None`` when the server stops."""

    def __init__(
        self,
        resource: str,
        namespace: str | None,
        labels: list[Requirement],
        fields: list[FieldRequirement],
    ):
        self.resource = resource
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.queue: asyncio.Queue[tuple[str, dict] | None] = asyncio.Queue()

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return labels_match(self.labels, meta.get("labels")) and fields_match(self.fields, obj)

    def translate(self, event: Event) -> tuple[str, dict] | None:
        """The event as this watch sees it: leaving the selection is a DELETED, entering ADDED."""
        now_in = self.matches(event.obj)
        if event.type != "MODIFIED":
            return (event.type, event.obj) if now_in else None
        was_in = self.matches(event.old)
        if now_in:
            return ("MODIFIED" if was_in else "ADDED", event.obj)
        return ("DELETED", event.obj) if was_in else None


class Store:
    """Objects, resourceVersions, watch history, owner index, and the create/update/patch/delete
    semantics of the API server (admission and validation included)."""

    def __init__(self, validate_version: str | None = "1.37.0", history_size: int = 20000):
        self.validate_version = validate_version
        self.rv = 0
        self.history: deque[Event] = deque(maxlen=history_size)
        #: events with a resourceVersion up to this one are gone from the history
        self.compacted_rv = 0
        self._objects: dict[str, dict[str, dict[str, dict]]] = {r: {} for r in RESOURCES}
        self._watchers: dict[str, set[Watcher]] = {r: set() for r in RESOURCES}
        self.listeners: list[Callable[[Event], None]] = []
        #: owner uid -> {(resource, namespace, name)} of the objects naming it as owner
        self.dependents: dict[str, set[tuple[str, str, str]]] = {}
        #: uid -> (resource, namespace, name) of every stored object
        self.uids: dict[str, tuple[str, str, str]] = {}

    # -- reading ------------------------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> dict | None:
        """The stored object (do not mutate it), or None."""
        return self._objects[resource].get(namespace or "", {}).get(name)

    def must_get(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        obj = self.get(rt.plural, namespace, name)
        if obj is None:
            raise not_found(rt, name)
        return obj

    def by_uid(self, uid: str) -> dict | None:
        key = self.uids.get(uid)
        return self.get(*key) if key else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict]:
        """Stored objects of a resource, in one namespace or all of them (do not mutate)."""
        by_ns = self._objects[resource]
        if namespace is not None:
            return list(by_ns.get(namespace, {}).values())
        return [obj for objs in by_ns.values() for obj in objs.values()]

    def in_namespace(self, namespace: str) -> Iterator[tuple[str, dict]]:
        """Every namespaced object in a namespace, as (resource, object)."""
        for resource, by_ns in self._objects.items():
            if RESOURCES[resource].namespaced:
                for obj in list(by_ns.get(namespace, {}).values()):
                    yield resource, obj

    def owned_by(self, uid: str, resource: str | None = None) -> list[dict]:
        out = []
        for key in self.dependents.get(uid, ()):
            if resource is None or key[0] == resource:
                obj = self.get(*key)
                if obj is not None:
                    out.append(obj)
        return out

    # -- watching -----------------------------------------------------------------------------

    def watch(
        self,
        resource: str,
        namespace: str | None,
        labels: list[Requirement],
        fields: list[FieldRequirement],
        resource_version: str | None,
    ) -> Watcher:
        """Open a watch whose queue already holds what happened after ``resource_version``
        (or synthetic ADDED events for the current objects when it is unset or "0")."""
        watcher = Watcher(resource, namespace, labels, fields)
        if resource_version in (None, "", "0"):
            for obj in self.list(resource, namespace):
                if watcher.matches(obj):
                    watcher.queue.put_nowait(("ADDED", obj))
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise bad_request(f"invalid resource version: {resource_version}") from None
            if since < self.compacted_rv:
                raise expired(f"too old resource version: {since} ({self.compacted_rv + 1})")
            for event in self.history:
                if event.rv > since and event.resource == resource:
                    seen = watcher.translate(event)
                    if seen:
                        watcher.queue.put_nowait(seen)
        self._watchers[resource].add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers[watcher.resource].discard(watcher)

    def close_watches(self) -> None:
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.queue.put_nowait(None)
            watchers.clear()

    def compact(self) -> None:
        """Forget the watch history, as etcd compaction does: older resourceVersions get 410."""
        self.history.clear()
        self.compacted_rv = self.rv

    # -- writing: the primitives --------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if len(self.history) == self.history.maxlen:
            self.compacted_rv = self.history[0].rv
        self.history.append(event)
        for watcher in self._watchers[event.resource]:
            seen = watcher.translate(event)
            if seen:
                watcher.queue.put_nowait(seen)
        for listener in self.listeners:
            listener(event)

    def _reindex_owners(self, key: tuple[str, str, str], old: dict | None, new: dict | None):
        before, after = owner_uids(old), owner_uids(new)
        for uid in before - after:
            deps = self.dependents.get(uid)
            if deps:
                deps.discard(key)
                if not deps:
                    del self.dependents[uid]
        for uid in after - before:
            self.dependents.setdefault(uid, set()).add(key)

    def _commit(self, rt: ResourceType, obj: dict, old: dict | None) -> dict:
        """Store ``obj`` (a new dict) with the next resourceVersion, or remove it if it was
        being deleted and nothing holds it any more."""
        meta = obj["metadata"]
        if old is not None and meta.get("deletionTimestamp") and self._releasable(rt, obj):
            return self._remove(rt, obj)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        namespace = meta.get("namespace", "")
        key = (rt.plural, namespace, meta["name"])
        self._objects[rt.plural].setdefault(namespace, {})[meta["name"]] = obj
        self.uids[meta["uid"]] = key
        self._reindex_owners(key, old, obj)
        self._emit(Event(self.rv, "MODIFIED" if old else "ADDED", rt.plural, obj, old))
        return obj

    @staticmethod
    def _releasable(rt: ResourceType, obj: dict) -> bool:
        meta = obj["metadata"]
        if meta.get("finalizers") or meta.get("deletionGracePeriodSeconds"):
            return False
        return not (rt.plural == "namespaces" and (obj.get("spec") or {}).get("finalizers"))

    def _remove(self, rt: ResourceType, obj: dict) -> dict:
        meta = obj["metadata"]
        namespace = meta.get("namespace", "")
        old = self._objects[rt.plural].get(namespace, {}).pop(meta["name"], None)
        if old is None:
            return obj
        if not self._objects[rt.plural][namespace]:
            del self._objects[rt.plural][namespace]
        self.uids.pop(meta["uid"], None)
        self._reindex_owners((rt.plural, namespace, meta["name"]), old, None)
        self.rv += 1
        gone = {**obj, "metadata": {**meta, "resourceVersion": str(self.rv)}}
        self._emit(Event(self.rv, "DELETED", rt.plural, gone, old))
        return gone

    def modify(
        self, resource: str, namespace: str | None, name: str, change: Callable[[dict], object]
    ) -> dict | None:
        """Controllers' write: ``change`` mutates a copy; written only if it differs.
        Returns the new object, or None if it does not exist."""
        old = self.get(resource, namespace, name)
        if old is None:
            return None
        new = clone(old)
        change(new)
        if new == old:
            return old
        rt = RESOURCES[resource]
        if resource != "pods" and _spec_part(new) != _spec_part(old):  # binding keeps it
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        return self._commit(rt, new, old)

    # -- writing: the verbs -------------------------------------------------------------------

    def _validate(self, rt: ResourceType, obj: dict) -> None:
        meta = obj["metadata"]
        causes = name_problems(meta["name"], rt.name_rule) + semantic_problems(rt.plural, obj)
        if not causes and self.validate_version:
            causes = schema_problems(self.validate_version, obj)
        if causes:
            raise invalid(rt, meta["name"], causes)

    def _check_namespace(self, rt: ResourceType, namespace: str, display: str) -> None:
        ns = self.get("namespaces", None, namespace)
        if ns is None:
            raise not_found(RESOURCES["namespaces"], namespace)
        if ns["metadata"].get("deletionTimestamp"):
            cause = {
                "reason": "NamespaceTerminating",
                "message": f"namespace {namespace} is being terminated",
                "field": "metadata.namespace",
            }
            why = (
                f"unable to create new content in namespace {namespace} because it is "
                "being terminated"
            )
            raise forbidden(rt, display, why, [cause])

    def _check_kind(self, rt: ResourceType, obj: dict) -> None:
        if obj.get("apiVersion", rt.api_version) != rt.api_version or (
            obj.get("kind", rt.kind) != rt.kind
        ):
            raise bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({rt.api_version})"
                if obj.get("apiVersion") != rt.api_version
                else f"the kind in the data ({obj.get('kind')}) does not match the expected "
                f"kind ({rt.kind})"
            )
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if not isinstance(obj.get("metadata", {}), dict):
            raise bad_request("metadata must be an object")

    def create(self, resource: str, body: dict, namespace: str | None = None) -> dict:
        """POST: admission, defaults, validation, then store (201)."""
        rt = RESOURCES[resource]
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        obj = clone(body)
        self._check_kind(rt, obj)
        meta = obj.setdefault("metadata", {})
        display = meta.get("name") or meta.get("generateName") or ""
        if rt.namespaced:
            if namespace and meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request"
                )
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
            self._check_namespace(rt, namespace, display)
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise ApiError(
                500,
                "InternalError",
                "Internal error occurred: resourceVersion "
                "should not be set on objects to be created",
                {},
            )
        for field in ("uid", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(field, None)
        meta["creationTimestamp"] = timestamp()
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        admission.prepare_for_create(self, rt, obj)
        admission.mutate(self, rt, obj, display)
        if not meta.get("name"):
            base = meta.get("generateName")
            if not base:
                raise invalid(
                    rt,
                    "",
                    [
                        (
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
            meta["name"] = base[:58] + random_suffix()
            while self.get(resource, namespace, meta["name"]):
                meta["name"] = base[:58] + random_suffix()
        admission.named(rt, obj)
        self._validate(rt, obj)
        admission.admit(self, rt, obj, display)
        if self.get(resource, namespace, meta["name"]) is not None:
            raise already_exists(rt, meta["name"])
        obj = self._commit(rt, obj, None)
        admission.after_create(self, rt, obj)
        return obj

    def replace(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        body: dict,
        subresource: str | None = None,
    ) -> dict:
        """PUT (200); 409 Conflict when ``metadata.resourceVersion`` is stale."""
        rt = RESOURCES[resource]
        old = self.must_get(rt, namespace, name)
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        new = clone(body)
        self._check_kind(rt, new)
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise bad_request(
                f"the name of the object ({meta['name']}) does not match the "
                f"name on the URL ({name})"
            )
        if rt.namespaced and meta.get("namespace", namespace) != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the "
                "namespace sent on the request"
            )
        return self._update(rt, old, new, subresource)

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        body,
        content_type: str,
        subresource: str | None = None,
    ) -> dict:
        """PATCH with a JSON, merge or strategic merge patch (200)."""
        rt = RESOURCES[resource]
        apply = PATCH_TYPES.get(content_type)
        if apply is None:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media "
                f"types include: {', '.join(PATCH_TYPES)}",
                {},
            )
        old = self.must_get(rt, namespace, name)
        try:
            new = apply(clone(old), body)
        except (PatchError, KeyError, TypeError, ValueError) as exc:
            raise ApiError(422, "Invalid", str(exc), {}) from None
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise bad_request("the patch must leave an object with metadata")
        if new["metadata"].get("name") != name:
            raise invalid(
                rt,
                name,
                [
                    (
                        "FieldValueInvalid",
                        "metadata.name",
                        f'Invalid value: "{new["metadata"].get("name")}": field is immutable',
                    )
                ],
            )
        return self._update(rt, old, new, subresource)

    def _update(self, rt: ResourceType, old: dict, new: dict, subresource: str | None) -> dict:
        meta, old_meta = new["metadata"], old["metadata"]
        sent_rv = meta.get("resourceVersion")
        if sent_rv and sent_rv != old_meta["resourceVersion"]:
            raise conflict(rt, old_meta["name"])
        for field in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
            "resourceVersion",
        ):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        if subresource == "status":
            new = {**clone(old), "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif rt.status_subresource:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
            if rt.plural == "namespaces":
                new["spec"] = old.get("spec", {})
        if new == old:
            return old
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise invalid(
                    rt,
                    old_meta["name"],
                    [
                        (
                            "FieldValueForbidden",
                            "metadata.finalizers",
                            f"Forbidden: no new finalizers can be added if the object is being "
                            f"deleted, found new finalizers {sorted(added)}",
                        )
                    ],
                )
        if _spec_part(new) != _spec_part(old):
            meta["generation"] = old_meta.get("generation", 1) + 1
        self._validate(rt, new)
        return self._commit(rt, new, old)

    def delete(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        grace: int | None = None,
        preconditions: dict | None = None,
    ) -> tuple[dict, bool]:
        """DELETE: returns (object, removed now?)."""
        rt = RESOURCES[resource]
        obj = self.must_get(rt, namespace, name)
        meta = obj["metadata"]
        for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            wanted = (preconditions or {}).get(field)
            if wanted and wanted != meta[field]:
                message = (
                    f"Precondition failed: {label} in precondition: {wanted}, {label} in "
                    f"object meta: {meta[field]}"
                )
                raise ApiError(409, "Conflict", message, {"name": name, "kind": rt.plural})
        propagation = propagation or rt.default_propagation
        if propagation not in ("Orphan", "Background", "Foreground"):
            raise invalid(
                rt,
                name,
                [
                    (
                        "FieldValueNotSupported",
                        "propagationPolicy",
                        f'Unsupported value: "{propagation}": supported values: '
                        '"Foreground", "Background", "Orphan"',
                    )
                ],
            )
        if meta.get("deletionTimestamp"):
            if rt.plural == "pods" and grace == 0 and not meta.get("finalizers"):
                return self._remove(rt, obj), True
            return obj, False
        if propagation == "Orphan":
            self.orphan_dependents(meta["uid"])
        new = clone(obj)
        meta = new["metadata"]
        if propagation == "Foreground" and self.dependents.get(meta["uid"]):
            meta["finalizers"] = [*(meta.get("finalizers") or []), "foregroundDeletion"]
        period = 0
        if rt.plural == "pods":
            period = (
                grace if grace is not None else new["spec"].get("terminationGracePeriodSeconds", 30)
            )
            phase = (new.get("status") or {}).get("phase")
            if not new["spec"].get("nodeName") or phase in ("Succeeded", "Failed"):
                period = 0
        if rt.plural == "namespaces":
            new.setdefault("status", {})["phase"] = "Terminating"
        elif not period and not meta.get("finalizers"):
            return self._remove(rt, obj), True
        meta["deletionTimestamp"] = timestamp(utcnow() + timedelta(seconds=period))
        meta["deletionGracePeriodSeconds"] = period
        return self._commit(rt, new, obj), False

    def orphan_dependents(self, uid: str) -> None:
        """Strip owner references to ``uid`` (what the ``orphan`` finalizer achieves)."""
        for key in list(self.dependents.get(uid, ())):
            self.modify(
                *key,
                lambda dep: dep["metadata"].__setitem__(
                    "ownerReferences",
                    [r for r in dep["metadata"].get("ownerReferences", []) if r.get("uid") != uid],
                ),
            )

    def finish_deletion(self, resource: str, namespace: str | None, name: str) -> None:
        """The kubelet's final word on a pod (or any holder letting go): remove it once its
        finalizers are gone."""
        self.modify(
            resource,
            namespace,
            name,
            lambda obj: obj["metadata"].__setitem__("deletionGracePeriodSeconds", 0),
        )

    def remove_finalizer(
        self, resource: str, namespace: str | None, name: str, finalizer: str
    ) -> None:
        def drop(obj: dict) -> None:
            finalizers = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
            if finalizers:
                obj["metadata"]["finalizers"] = finalizers
            else:
                obj["metadata"].pop("finalizers", None)

        self.modify(resource, namespace, name, drop)
