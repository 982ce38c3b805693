"""The HTTP face of the double: an aiohttp server speaking the Kubernetes REST API.

One catch-all route parses ``/api/v1/...`` and ``/apis/<group>/<version>/...`` paths the way
the API server does (namespaced, cluster-scoped, all-namespaces, subresources ``status``,
``log`` and ``finalize``), calls the store, and answers JSON (``application/json``) or a
``Status`` error. Watches are chunked streams of newline-delimited JSON events. Every request
is counted in ``KubeAPIDouble.calls`` by ``(verb, resource)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import web

from tests.kubeapi import resources as res
from tests.kubeapi.controllers import start_controllers
from tests.kubeapi.errors import ApiError, bad_request, conflict, invalid, path_not_found
from tests.kubeapi.kubelet import Kubelet
from tests.kubeapi.logs import Logs
from tests.kubeapi.patch import PatchError
from tests.kubeapi.resources import BY_PATH, RESOURCES, ResourceType
from tests.kubeapi.selectors import parse_field_selector, parse_label_selector
from tests.kubeapi.store import PATCH_TYPES, Store, Watcher, clone

log = logging.getLogger(__name__)

JOB_ORPHAN_WARNING = (
    '299 - "child pods are preserved by default when jobs are deleted; set '
    "propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress "
    'this warning"'
)
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
NODE_NAME = "workbench-node-1"


def host_command_exists(pod: dict) -> bool:
    """The fixture's execution predicate: the first container's ``command[0]`` is an absolute
    path that exists on this host."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    command = containers[0].get("command") or []
    return bool(command) and os.path.isabs(command[0]) and os.path.exists(command[0])


def _json(body, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _int_param(query, name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"invalid value for {name}: {value!r}") from None


_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool


def _bool_param(query, name: str) -> bool:
    """A boolean query parameter; clients send ``true``, ``True`` or ``1``."""
    return query.get(name) in _TRUE


def _list_item(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class KubeAPIDouble:
    """A stateful Kubernetes API server test double on 127.0.0.1 (plain HTTP, no auth).

    ``execute(pod) -> bool`` picks the pods whose containers run as real host processes
    (None: no pod runs). ``kubelet=False`` leaves pods unscheduled and Pending: tests then move
    pod status themselves through ``pods/status``. ``validate_version`` picks the Kubernetes
    schemas objects are validated against (None disables schema validation).
    """

    def __init__(
        self,
        execute: Callable[[dict], bool] | None = None,
        kubelet: bool = True,
        validate_version: str | None = "1.37.0",
        *,
        history_size: int = 20000,
        probe_period: float = 0.2,
        bookmark_interval: float = 1.0,
    ):
        self.store = Store(validate_version, history_size)
        self.logs = Logs()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.bookmark_interval = bookmark_interval
        self.kubelet = (
            Kubelet(self.store, self.logs, execute, NODE_NAME, probe_period) if kubelet else None
        )
        self.url: str | None = None
        self._runner: web.AppRunner | None = None
        self._controllers: list = []
        self._streams: set[asyncio.Task] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> str:
        """Serve on a random port, seed the system namespaces and a node, start the
        controllers (and the kubelet); returns the base URL."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        for name in SYSTEM_NAMESPACES:
            self.store.create("namespaces", {"metadata": {"name": name}})
        self._controllers = start_controllers(self.store)
        if self.kubelet:
            self.store.create("nodes", self.kubelet.node_manifest())
            self.kubelet.start()
        return self.url

    async def stop(self) -> None:
        """Kill executed processes, stop the controllers, end open watches, close the port."""
        if self.kubelet:
            await self.kubelet.stop()
        for controller in self._controllers:
            await controller.stop()
        self.store.close_watches()
        for task in list(self._streams):
            task.cancel()
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KubeAPIDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def write_kubeconfig(self, path: str | os.PathLike) -> Path:
        """Write a kubeconfig for this server (for ``load_kube_config`` or ``KUBECONFIG``)."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": {"token": "unused"}}],
            "contexts": [
                {
                    "name": "double",
                    "context": {"cluster": "double", "user": "double", "namespace": "default"},
                }
            ],
            "current-context": "double",
        }
        path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))  # JSON is YAML
        return path

    # -- inspection ---------------------------------------------------------------------------

    def reset_calls(self) -> None:
        self.calls.clear()

    def objects(self, resource: str, namespace: str | None = None) -> list[dict]:
        """Copies of the stored objects of a resource (plural, e.g. "pods")."""
        return [clone(o) for o in self.store.list(resource, namespace)]

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict | None:
        obj = self.store.get(resource, namespace, name)
        return clone(obj) if obj is not None else None

    def pod_log(self, name: str, namespace: str, container: str | None = None) -> str:
        """The captured output of an executed pod's container ("" if none)."""
        pod = self.store.get("pods", namespace, name)
        if pod is None:
            return ""
        container = container or pod["spec"]["containers"][0]["name"]
        buffer = self.logs.find(pod["metadata"]["uid"], container)
        return buffer.render(0, False).decode(errors="replace") if buffer else ""

    # -- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except ApiError as exc:
            return _json(exc.status(), exc.code)
        except Exception as exc:  # a bug in the double: answer like the server would, loudly
            log.exception("kube API double failed on %s %s", request.method, request.path_qs)
            return _json(
                ApiError(500, "InternalError", f"Internal error occurred: {exc!r}", {}).status(),
                500,
            )

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if not parts:
            return _json({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/version"]})
        if parts[0] in ("healthz", "readyz", "livez") and len(parts) == 1:
            return web.Response(text="ok")
        if parts == ["version"]:
            return _json(
                {"major": "1", "minor": "37", "gitVersion": "v1.37.0", "platform": "linux/amd64"}
            )
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return self._discovery(parts, request)
        if not rest:
            self.calls["get", "discovery"] += 1
            doc = res.api_resource_list(group, version)
            if doc is None:
                raise path_not_found()
            return _json(doc)
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and (group, version, rest[2]) in BY_PATH:
            namespace, rest = rest[1], rest[2:]
        rt = BY_PATH.get((group, version, rest[0]))
        if rt is None or len(rest) > 3:
            raise path_not_found()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if rt.namespaced and name is not None and namespace is None:
            raise path_not_found()
        if not rt.namespaced and namespace is not None:
            raise path_not_found()
        allowed = {"status"} if rt.status_subresource else set()
        allowed |= {"log"} if rt.plural == "pods" else set()
        allowed |= {"finalize"} if rt.plural == "namespaces" else set()
        allowed |= {"scale"} if rt.plural in ("deployments", "replicasets") else set()
        if sub is not None and sub not in allowed:
            raise path_not_found()
        return await self._verb(request, rt, namespace, name, sub)

    def _discovery(self, parts: list[str], request: web.Request) -> web.Response:
        self.calls["get", "discovery"] += 1
        if parts == ["api"]:
            return _json(res.api_versions(f"{request.host}"))
        if parts == ["apis"]:
            return _json(res.api_group_list())
        if parts[0] == "apis" and len(parts) == 2:
            doc = res.api_group(parts[1])
            if doc:
                return _json(doc)
        raise path_not_found()

    async def _body(self, request: web.Request):
        raw = await request.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from None

    async def _verb(
        self,
        request: web.Request,
        rt: ResourceType,
        namespace: str | None,
        name: str | None,
        sub: str | None,
    ) -> web.StreamResponse:
        method, query, store = request.method, request.query, self.store
        resource = f"{rt.plural}/{sub}" if sub else rt.plural
        if method == "GET" and name is None:
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(rt.plural, query.get("fieldSelector"))
            if _bool_param(query, "watch"):
                self.calls["watch", resource] += 1
                return await self._watch(request, rt, namespace, labels, fields)
            self.calls["list", resource] += 1
            probe = Watcher(rt.plural, namespace, labels, fields)
            items = sorted(
                (o for o in store.list(rt.plural, namespace) if probe.matches(o)),
                key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]),
            )
            return _json(
                {
                    "kind": f"{rt.kind}List",
                    "apiVersion": rt.api_version,
                    "metadata": {"resourceVersion": str(store.rv)},
                    "items": [_list_item(o) for o in items],
                }
            )
        if sub == "scale" and method in ("GET", "PUT", "PATCH"):
            verb = {"GET": "get", "PUT": "update", "PATCH": "patch"}[method]
            self.calls[verb, resource] += 1
            return await self._scale(request, rt, namespace, name)
        if method == "GET" and sub == "log":
            self.calls["get", resource] += 1
            return await self._pod_log(request, rt, namespace, name)
        if method == "GET":
            self.calls["get", resource] += 1
            return _json(store.must_get(rt, namespace, name))
        if method == "POST" and name is None and (namespace or not rt.namespaced):
            self.calls["create", resource] += 1
            return _json(store.create(rt.plural, await self._body(request), namespace), 201)
        if method == "PUT" and name is not None and sub != "log":
            self.calls["update", resource] += 1
            body = await self._body(request)
            if sub == "finalize":
                return _json(self._finalize_namespace(name, body))
            return _json(store.replace(rt.plural, namespace, name, body, sub))
        if method == "PATCH" and name is not None and sub in (None, "status"):
            self.calls["patch", resource] += 1
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            body = await self._body(request)
            return _json(store.patch(rt.plural, namespace, name, body, content_type, sub))
        if method == "DELETE" and sub is None:
            return await self._delete(request, rt, namespace, name)
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            {},
        )

    async def _scale(
        self, request: web.Request, rt: ResourceType, namespace: str, name: str
    ) -> web.Response:
        """The ``scale`` subresource (autoscaling/v1 Scale) of deployments and replica sets."""

        def scale_of(obj: dict) -> dict:
            meta = obj["metadata"]
            selector = (obj["spec"].get("selector") or {}).get("matchLabels") or {}
            return {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {
                    k: meta[k]
                    for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                    if k in meta
                },
                "spec": {"replicas": obj["spec"].get("replicas", 1)},
                "status": {
                    "replicas": (obj.get("status") or {}).get("replicas", 0),
                    "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
                },
            }

        current = scale_of(self.store.must_get(rt, namespace, name))
        if request.method == "GET":
            return _json(current)
        body = await self._body(request)
        if request.method == "PATCH":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            apply = PATCH_TYPES.get(content_type, PATCH_TYPES["application/merge-patch+json"])
            try:
                body = apply(current, body)
            except PatchError as exc:
                raise ApiError(422, "Invalid", str(exc), {}) from None
        sent_rv = (body.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            raise conflict(rt, name)
        replicas = (body.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise invalid(
                rt,
                name,
                [
                    (
                        "FieldValueInvalid",
                        "spec.replicas",
                        f"Invalid value: {replicas}: must be greater than or equal to 0",
                    )
                ],
            )
        updated = self.store.modify(
            rt.plural, namespace, name, lambda obj: obj["spec"].__setitem__("replicas", replicas)
        )
        return _json(scale_of(updated))

    def _finalize_namespace(self, name: str, body: dict) -> dict:
        finalizers = (body.get("spec") or {}).get("finalizers") or []
        self.store.must_get(RESOURCES["namespaces"], None, name)
        return self.store.modify(
            "namespaces",
            None,
            name,
            lambda ns: ns.setdefault("spec", {}).__setitem__("finalizers", finalizers),
        )

    async def _delete(
        self, request: web.Request, rt: ResourceType, namespace: str | None, name: str | None
    ) -> web.Response:
        query = request.query
        options = {}
        if request.can_read_body:
            options = await self._body(request) or {}
        propagation = options.get("propagationPolicy") or query.get("propagationPolicy")
        if propagation is None:
            orphan = options.get("orphanDependents", query.get("orphanDependents"))
            if orphan is not None:
                propagation = "Orphan" if orphan is True or orphan in _TRUE else "Background"
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = _int_param(query, "gracePeriodSeconds")
        preconditions = options.get("preconditions")
        headers = {}
        if rt.plural == "jobs" and propagation is None:
            headers["Warning"] = JOB_ORPHAN_WARNING
        if name is None:
            self.calls["deletecollection", rt.plural] += 1
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(rt.plural, query.get("fieldSelector"))
            probe = Watcher(rt.plural, namespace, labels, fields)
            items = []
            for obj in [o for o in self.store.list(rt.plural, namespace) if probe.matches(o)]:
                meta = obj["metadata"]
                deleted, _ = self.store.delete(
                    rt.plural,
                    meta.get("namespace"),
                    meta["name"],
                    propagation=propagation,
                    grace=grace,
                )
                items.append(_list_item(deleted))
            return _json(
                {
                    "kind": f"{rt.kind}List",
                    "apiVersion": rt.api_version,
                    "metadata": {"resourceVersion": str(self.store.rv)},
                    "items": items,
                },
                headers=headers,
            )
        self.calls["delete", rt.plural] += 1
        obj, removed = self.store.delete(
            rt.plural,
            namespace,
            name,
            propagation=propagation,
            grace=grace,
            preconditions=preconditions,
        )
        if removed and not rt.returns_deleted:
            details = {"name": name}
            if rt.group:
                details["group"] = rt.group
            details.update({"kind": rt.plural, "uid": obj["metadata"]["uid"]})
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
            return _json(body, headers=headers)
        return _json(obj, headers=headers)

    async def _watch(
        self, request: web.Request, rt: ResourceType, namespace: str | None, labels, fields
    ) -> web.StreamResponse:
        query = request.query
        timeout = _int_param(query, "timeoutSeconds")
        bookmarks = _bool_param(query, "allowWatchBookmarks")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            watcher = self.store.watch(
                rt.plural, namespace, labels, fields, query.get("resourceVersion")
            )
        except ApiError as exc:
            if exc.code != 410:
                raise
            await response.prepare(request)
            await response.write(orjson.dumps({"type": "ERROR", "object": exc.status()}) + b"\n")
            await response.write_eof()
            return response
        task = asyncio.current_task()
        self._streams.add(task)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            await response.prepare(request)
            while True:
                wait = self.bookmark_interval
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        break
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                    if bookmarks:
                        mark = {
                            "kind": rt.kind,
                            "apiVersion": rt.api_version,
                            "metadata": {"resourceVersion": str(self.store.rv)},
                        }
                        await response.write(
                            orjson.dumps({"type": "BOOKMARK", "object": mark}) + b"\n"
                        )
                    continue
                if item is None:
                    break
                await response.write(orjson.dumps({"type": item[0], "object": item[1]}) + b"\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(watcher)
            self._streams.discard(task)
        return response

    async def _pod_log(
        self, request: web.Request, rt: ResourceType, namespace: str, name: str
    ) -> web.StreamResponse:
        query = request.query
        pod = self.store.must_get(rt, namespace, name)
        names = [c["name"] for c in pod["spec"].get("containers") or []]
        names += [c["name"] for c in pod["spec"].get("initContainers") or []]
        container = query.get("container")
        if not container:
            if len(pod["spec"]["containers"]) > 1:
                raise bad_request(
                    f"a container name must be specified for pod {name}, choose "
                    f"one of: [{' '.join(names)}]"
                )
            container = names[0]
        if container not in names:
            raise bad_request(f"container {container} is not valid for pod {name}")
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        statuses += (pod.get("status") or {}).get("initContainerStatuses") or []
        state = next((s.get("state") or {} for s in statuses if s["name"] == container), None)
        uid = pod["metadata"]["uid"]
        buffer = self.logs.find(uid, container)
        if buffer is None and (state is None or "waiting" in state):
            reason = ((state or {}).get("waiting") or {}).get("reason", "ContainerCreating")
            raise bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        timestamps = _bool_param(query, "timestamps")
        tail = _int_param(query, "tailLines")
        lines = buffer.lines if buffer else []
        start = max(len(lines) - tail, 0) if tail is not None else 0
        if not _bool_param(query, "follow"):
            body = buffer.render(start, timestamps) if buffer else b""
            limit = _int_param(query, "limitBytes")
            return web.Response(body=body[:limit] if limit else body, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        task = asyncio.current_task()
        self._streams.add(task)
        try:
            while True:
                buffer = buffer or self.logs.find(uid, container)
                if buffer is not None:
                    chunk = buffer.render(start, timestamps)
                    start = len(buffer.lines)
                    if chunk:
                        await response.write(chunk)
                    if buffer.closed:
                        break
                if self.store.by_uid(uid) is None:
                    break
                if request.transport is None or request.transport.is_closing():
                    break
                if buffer is not None:
                    await buffer.wait(1.0)
                else:
                    await asyncio.sleep(0.1)
            with contextlib.suppress(ConnectionResetError):
                await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(task)
        return response
