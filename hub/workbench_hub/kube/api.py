"""A small async client of the Kubernetes API that sends and returns plain dicts.

It rides on a ``kubernetes_asyncio`` ApiClient (so kubeconfig, in-cluster service account
tokens and TLS work as usual) but skips its model classes: the builders in this package make
dicts, and reading them back as dicts is faster. Every write is idempotent where the verb
allows: :meth:`KubeAPI.ensure` treats 409 AlreadyExists as success and :meth:`KubeAPI.delete`
treats 404 as success.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["ApiException", "KubeAPI", "Resource", "resource_of", "status_message"]


@dataclass(frozen=True)
class Resource:
    """Where objects of one kind live in the API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


_RESOURCES = {
    (r.api_version, r.kind): r
    for r in (
        Resource("v1", "Namespace", "namespaces", namespaced=False),
        Resource("v1", "PersistentVolume", "persistentvolumes", namespaced=False),
        Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Resource("v1", "Pod", "pods"),
        Resource("v1", "Service", "services"),
        Resource("v1", "ServiceAccount", "serviceaccounts"),
        Resource("v1", "Secret", "secrets"),
        Resource("v1", "ConfigMap", "configmaps"),
        Resource("v1", "ResourceQuota", "resourcequotas"),
        Resource("v1", "LimitRange", "limitranges"),
        Resource("v1", "Event", "events"),
        Resource("rbac.authorization.k8s.io/v1", "Role", "roles"),
        Resource("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
        Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
        Resource("batch/v1", "Job", "jobs"),
        Resource("apps/v1", "Deployment", "deployments"),
        Resource("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    )
}


def resource_of(api_version: str, kind: str) -> Resource:
    """The :class:`Resource` of ``apiVersion``/``kind``; KeyError for kinds we never use."""
    return _RESOURCES[(api_version, kind)]


def status_message(error: ApiException) -> str:
    """The message of the API server's Status answer (not the HTTP dump ``str()`` gives)."""
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return error.reason or f"HTTP {error.status}"


#: every success answer deserialized as plain JSON (dicts, lists), not as model classes
_AS_DICT = {200: "object", 201: "object", 202: "object"}


def _selector(labels: Mapping[str, str] | None) -> dict:
    if not labels:
        return {}
    return {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))}


class KubeAPI:
    """Dict-in, dict-out calls on one ``ApiClient``; errors raise ``ApiException``."""

    def __init__(self, client: ApiClient, timeout: float = 30):
        self.client = client
        self.timeout = timeout

    async def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        query: Mapping[str, object] | None = None,
        content_type: str = "application/json",
        stream: bool = False,
        request_timeout: float | aiohttp.ClientTimeout | None = None,
    ):
        headers = {"Accept": "application/json", "Content-Type": content_type}
        response = await self.client.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            response_types_map=None if stream else _AS_DICT,
            _return_http_data_only=True,
            _preload_content=not stream,
            _request_timeout=request_timeout if request_timeout is not None else self.timeout,
        )
        if stream:
            if response.status >= 400:
                data = await response.read()
                response.release()
                raise ApiException(status=response.status, reason=data.decode(errors="replace"))
            return response
        return response or {}

    async def create(self, obj: dict) -> dict:
        """Create ``obj`` (raises ApiException, 409 if it exists)."""
        resource = resource_of(obj["apiVersion"], obj["kind"])
        return await self._call("POST", resource.path(obj["metadata"].get("namespace")), obj)

    async def ensure(self, obj: dict, update: bool = False) -> tuple[dict, bool]:
        """Create ``obj`` unless it exists; ``(object, created)``.

        With ``update`` an existing object is merge-patched to ``obj``'s labels and spec (or
        rules, subjects…: every top-level field but metadata and status).
        """
        try:
            return await self.create(obj), True
        except ApiException as e:
            if e.status != 409:
                raise
        meta = obj["metadata"]
        if not update:
            existing = await self.get(
                obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace")
            )
            if existing is not None:
                return existing, False
            return await self.create(obj), True
        patch = {
            k: v for k, v in obj.items() if k not in {"apiVersion", "kind", "metadata", "status"}
        }
        patch["metadata"] = {"labels": meta.get("labels", {})}
        return (
            await self.patch(
                obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"), patch
            ),
            False,
        )

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict | None:
        """The object, or None when it does not exist."""
        try:
            return await self._call("GET", resource_of(api_version, kind).path(namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> tuple[list[dict], str]:
        """``(items, resourceVersion)`` of the objects matching ``labels`` and ``fields``
        (all namespaces if ``namespace`` is None)."""
        query = _selector(labels)
        if fields:
            query["fieldSelector"] = ",".join(f"{k}={v}" for k, v in sorted(fields.items()))
        answer = await self._call(
            "GET", resource_of(api_version, kind).path(namespace), query=query
        )
        items = answer.get("items") or []
        for item in items:  # lists leave these out of each item
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items, answer.get("metadata", {}).get("resourceVersion", "")

    async def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        patch: dict,
        patch_type: str = "merge",
    ) -> dict:
        """Patch an object (``merge`` or ``strategic-merge``); raises 404 if it is gone."""
        return await self._call(
            "PATCH",
            resource_of(api_version, kind).path(namespace, name),
            patch,
            content_type=f"application/{patch_type}-patch+json",
        )

    async def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None = None,
        grace_seconds: int | None = None,
        propagation: str = "Background",
    ) -> bool:
        """Delete an object; False when it was already gone."""
        body: dict = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            await self._call("DELETE", resource_of(api_version, kind).path(namespace, name), body)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    async def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: Mapping[str, str] | None,
        resource_version: str,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[dict]:
        """Events (``{"type", "object"}``) after ``resource_version`` until the server ends the
        watch; an ``ERROR`` event (e.g. 410 Gone) is yielded as it comes, for the caller to
        re-list."""
        query = {
            **_selector(labels),
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        response = await self._call(
            "GET",
            resource_of(api_version, kind).path(namespace),
            query=query,
            stream=True,
            request_timeout=aiohttp.ClientTimeout(
                sock_connect=self.timeout, sock_read=timeout_seconds + 30
            ),
        )
        try:
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)
        finally:
            response.release()

    async def pod_log(self, namespace: str, pod: str, follow: bool = False) -> AsyncIterator[str]:
        """The pod's output as lines without newline; with ``follow`` until the pod ends."""
        path = resource_of("v1", "Pod").path(namespace, pod) + "/log"
        query = {"follow": "true"} if follow else {}
        no_limit = aiohttp.ClientTimeout(sock_connect=self.timeout)
        response = await self._call(
            "GET", path, query=query, stream=True, request_timeout=no_limit if follow else None
        )
        try:
            async for line in response.content:
                yield line.decode("utf-8", errors="replace").rstrip("\n")
        finally:
            response.release()
