"""What the API server does to an object on create besides storing it: defaulting, the
admission plugins that matter here (NamespaceLifecycle is in the store; ServiceAccount,
LimitRanger, ResourceQuota, StorageObjectInUseProtection), initial status, and the objects a
new namespace gets (``default`` ServiceAccount, ``kube-root-ca.crt`` ConfigMap).
"""

from __future__ import annotations

import base64
from fractions import Fraction
from typing import TYPE_CHECKING

from tests.kubeapi.errors import forbidden
from tests.kubeapi.quantity import format_quantity, parse_quantity
from tests.kubeapi.resources import RESOURCES, ResourceType

if TYPE_CHECKING:
    from tests.kubeapi.store import Store

PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"
#: a placeholder, not a certificate: nothing in the double speaks TLS
ROOT_CA = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
_COMPUTE = ("cpu", "memory")


def _containers(spec: dict) -> list[dict]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def default_pod_spec(spec: dict) -> None:
    """The API server's defaults for a PodSpec (in pods and in pod templates)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    for container in _containers(spec):
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        image = container.get("image") or ""
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        latest = not tagged or image.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("resources", {})
        for port in container.get("ports") or []:
            port.setdefault("protocol", "TCP")


def _default_job(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    uid = obj["metadata"]["uid"]
    template = spec.setdefault("template", {})
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    if not spec.get("manualSelector"):
        labels.update({"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid})
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatedOrFailed")
    default_pod_spec(template.setdefault("spec", {}))


def _default_workload(obj: dict, deployment: bool) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("minReadySeconds", 0)
    if deployment:
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
    default_pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))


def _default_service(store: Store, obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if not spec.get("clusterIP"):
            n = store.rv + 1
            spec["clusterIP"] = f"10.{96 + ((n >> 16) & 15)}.{(n >> 8) & 255}.{n & 255}"
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))


def _default_limit_range(obj: dict) -> None:
    for item in (obj.get("spec") or {}).get("limits") or []:
        if item.get("type") != "Container":
            continue
        default = item.setdefault("default", {})
        for key, value in (item.get("max") or {}).items():
            default.setdefault(key, value)
        request = item.setdefault("defaultRequest", {})
        for key, value in default.items():
            request.setdefault(key, value)
        for key, value in (item.get("min") or {}).items():
            request.setdefault(key, value)
        for field in ("default", "defaultRequest"):
            if not item[field]:
                del item[field]


def prepare_for_create(store: Store, rt: ResourceType, obj: dict) -> None:
    """Defaults and initial status (client-sent status is dropped where there is a status
    subresource, as the real strategies do)."""
    resource = rt.plural
    if rt.status_subresource:
        obj.pop("status", None)
    meta = obj["metadata"]
    if resource == "pods":
        spec = obj.setdefault("spec", {})
        default_pod_spec(spec)
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault(
            "tolerations",
            [
                {
                    "key": f"node.kubernetes.io/{taint}",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
                for taint in ("not-ready", "unreachable")
            ],
        )
        for container in _containers(spec):
            resources = container["resources"]
            for key, value in (resources.get("limits") or {}).items():
                resources.setdefault("requests", {}).setdefault(key, value)
    elif resource == "namespaces":
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
    elif resource == "services":
        _default_service(store, obj)
        obj["status"] = {"loadBalancer": {}}
    elif resource == "secrets":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(value.encode()).decode()
        if not data:
            del obj["data"]
    elif resource == "persistentvolumeclaims":
        obj.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
        meta["finalizers"] = [*(meta.get("finalizers") or []), PVC_PROTECTION]
        obj["status"] = {"phase": "Pending"}
    elif resource == "persistentvolumes":
        spec = obj.setdefault("spec", {})
        spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
        spec.setdefault("volumeMode", "Filesystem")
        meta["finalizers"] = [*(meta.get("finalizers") or []), PV_PROTECTION]
        obj["status"] = {"phase": "Available"}
    elif resource == "jobs":
        _default_job(obj)
        obj["status"] = {}
    elif resource in ("deployments", "replicasets"):
        _default_workload(obj, resource == "deployments")
        obj["status"] = {} if resource == "deployments" else {"replicas": 0}
    elif resource == "horizontalpodautoscalers":
        obj["status"] = {"currentReplicas": 0, "desiredReplicas": 0}
    elif resource == "limitranges":
        _default_limit_range(obj)
    elif resource == "resourcequotas":
        hard = (obj.get("spec") or {}).get("hard") or {}
        obj["status"] = {"hard": dict(hard), "used": quota_used(store, meta["namespace"], hard)}
    elif resource == "nodes":
        obj.setdefault("status", {})


def mutate(store: Store, rt: ResourceType, obj: dict, display: str) -> None:
    """Mutating admission for pods: ServiceAccount existence, LimitRange defaults, QoS."""
    if rt.plural != "pods":
        return
    spec, namespace = obj["spec"], obj["metadata"]["namespace"]
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = spec["serviceAccount"] = account
    if store.get("serviceaccounts", namespace, account) is None:
        raise forbidden(
            rt,
            display,
            f"error looking up service account {namespace}/{account}: "
            f'serviceaccount "{account}" not found',
        )
    for limit_range in store.list("limitranges", namespace):
        for item in (limit_range.get("spec") or {}).get("limits") or []:
            if item.get("type") != "Container":
                continue
            for container in _containers(spec):
                resources = container.setdefault("resources", {})
                for field, source in (("limits", "default"), ("requests", "defaultRequest")):
                    for key, value in (item.get(source) or {}).items():
                        resources.setdefault(field, {}).setdefault(key, value)
    obj["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}


def qos_class(spec: dict) -> str:
    requests: dict = {}
    limits: dict = {}
    guaranteed = True
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        req, lim = resources.get("requests") or {}, resources.get("limits") or {}
        requests.update({k: v for k, v in req.items() if k in _COMPUTE})
        limits.update({k: v for k, v in lim.items() if k in _COMPUTE})
        for key in _COMPUTE:
            if key not in lim or parse_quantity(req.get(key, lim[key])) != parse_quantity(lim[key]):
                guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


# -- resource quota ------------------------------------------------------------------------------


def _pod_amount(pod: dict, field: str, name: str) -> Fraction:
    spec = pod.get("spec") or {}

    def amount(container: dict) -> Fraction:
        value = ((container.get("resources") or {}).get(field) or {}).get(name)
        return parse_quantity(value) if value is not None else Fraction(0)

    total = sum((amount(c) for c in spec.get("containers") or []), Fraction(0))
    return max([total, *(amount(c) for c in spec.get("initContainers") or [])])


def _count_resource(key: str) -> str | None:
    """The resource a count key is about: ``pods``, ``count/jobs.batch`` -> jobs."""
    if key in (
        "pods",
        "services",
        "secrets",
        "configmaps",
        "persistentvolumeclaims",
        "resourcequotas",
    ):
        return key
    if key.startswith("count/"):
        plural = key[len("count/") :].split(".", 1)[0]
        return plural if plural in RESOURCES else None
    return None


def _compute_key(key: str) -> tuple[str, str]:
    """``limits.cpu`` -> (limits, cpu); a bare ``memory`` is a request."""
    for field in ("requests", "limits"):
        if key.startswith(field + "."):
            return field, key[len(field) + 1 :]
    return "requests", key


def key_resource(key: str) -> str | None:
    """The resource whose objects a quota key counts or sums."""
    counted = _count_resource(key)
    if counted:
        return counted
    if key == "requests.storage":
        return "persistentvolumeclaims"
    if key in (*_COMPUTE, "ephemeral-storage") or key.startswith(("requests.", "limits.")):
        return "pods"
    return None


def usage_of(resource: str, obj: dict, key: str) -> Fraction | None:
    """What one object adds to quota key ``key`` (None: the key does not concern it)."""
    if key_resource(key) != resource:
        return None
    if _count_resource(key):
        return Fraction(1)
    if resource == "pods":
        return _pod_amount(obj, *_compute_key(key))
    storage = ((obj.get("spec") or {}).get("resources") or {}).get("requests") or {}
    return parse_quantity(storage.get("storage", "0"))


def _counts(resource: str, obj: dict) -> bool:
    if resource == "pods":
        return (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    return True


def quota_used(store: Store, namespace: str, hard: dict) -> dict[str, str]:
    """``status.used`` for a quota with these ``hard`` keys."""
    used = {}
    for key in hard:
        total = Fraction(0)
        resource = key_resource(key)
        for obj in store.list(resource, namespace) if resource else ():
            if _counts(resource, obj):
                total += usage_of(resource, obj, key)
        used[key] = format_quantity(total, key)
    return used


def _check_quota(store: Store, rt: ResourceType, obj: dict, display: str) -> None:
    namespace = obj["metadata"]["namespace"]
    for quota in store.list("resourcequotas", namespace):
        hard = (quota.get("spec") or {}).get("hard") or {}
        relevant = {k: v for k, v in hard.items() if usage_of(rt.plural, obj, k) is not None}
        if not relevant:
            continue
        name = quota["metadata"]["name"]
        if rt.plural == "pods":
            missing = []
            for key in sorted(relevant):
                field, resource = _compute_key(key)
                if resource not in _COMPUTE:
                    continue
                lacking = [
                    c["name"]
                    for c in obj["spec"].get("containers") or []
                    if resource not in ((c.get("resources") or {}).get(field) or {})
                ]
                if lacking:
                    missing.append(f"{field}.{resource} for: {','.join(lacking)}")
            if missing:
                why = f"failed quota: {name}: must specify {'; '.join(missing)}"
                raise forbidden(rt, display, why)
        used = quota_used(store, namespace, relevant)
        over = []
        for key in sorted(relevant):
            requested = usage_of(rt.plural, obj, key)
            if requested and parse_quantity(used[key]) + requested > parse_quantity(hard[key]):
                over.append(
                    (
                        key,
                        format_quantity(requested, key),
                        used[key],
                        format_quantity(parse_quantity(hard[key]), key),
                    )
                )
        if over:
            requested, used_now, limited = (
                ",".join(f"{row[0]}={row[i]}" for row in over) for i in (1, 2, 3)
            )
            why = (
                f"exceeded quota: {name}, requested: {requested}, used: {used_now}, "
                f"limited: {limited}"
            )
            raise forbidden(rt, display, why)


def _check_limit_ranges(store: Store, rt: ResourceType, obj: dict, display: str) -> None:
    problems = []
    for limit_range in store.list("limitranges", obj["metadata"]["namespace"]):
        for item in (limit_range.get("spec") or {}).get("limits") or []:
            if item.get("type") != "Container":
                continue
            for container in _containers(obj["spec"]):
                resources = container.get("resources") or {}
                for key, bound in (item.get("max") or {}).items():
                    limit = (resources.get("limits") or {}).get(key)
                    if limit is None:
                        problems.append(
                            f"maximum {key} usage per Container is {bound}.  No limit is specified"
                        )
                    elif parse_quantity(limit) > parse_quantity(bound):
                        problems.append(
                            f"maximum {key} usage per Container is {bound}, but limit is {limit}"
                        )
                for key, bound in (item.get("min") or {}).items():
                    request = (resources.get("requests") or {}).get(key)
                    if request is None:
                        problems.append(
                            f"minimum {key} usage per Container is {bound}.  "
                            "No request is specified"
                        )
                    elif parse_quantity(request) < parse_quantity(bound):
                        problems.append(
                            f"minimum {key} usage per Container is {bound}, but "
                            f"request is {request}"
                        )
    if problems:
        why = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
        raise forbidden(rt, display, why)


def named(rt: ResourceType, obj: dict) -> None:
    """Defaults that need the final name (known only after ``generateName`` is resolved)."""
    name = obj["metadata"]["name"]
    if rt.plural == "namespaces":
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    if rt.plural == "jobs" and not obj["spec"].get("manualSelector"):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        labels.update({"batch.kubernetes.io/job-name": name, "job-name": name})


def admit(store: Store, rt: ResourceType, obj: dict, display: str) -> None:
    """Validating admission: LimitRange bounds, then ResourceQuota."""
    if rt.plural == "pods":
        _check_limit_ranges(store, rt, obj, display)
    if rt.namespaced:
        _check_quota(store, rt, obj, display)


def after_create(store: Store, rt: ResourceType, obj: dict) -> None:
    """What controllers add to a new namespace at once (the service account controller and the
    root CA publisher): the ``default`` ServiceAccount and the ``kube-root-ca.crt`` ConfigMap."""
    if rt.plural != "namespaces":
        return
    name = obj["metadata"]["name"]
    store.create("serviceaccounts", {"metadata": {"name": "default"}}, name)
    store.create(
        "configmaps", {"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": ROOT_CA}}, name
    )
