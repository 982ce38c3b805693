"""Kubernetes objects of workloads, built by pure functions from a WorkloadSpec (issue 5).

Job runs and model builds become ``batch/v1`` Jobs; model replicas become one ``apps/v1``
Deployment per deployment generation plus a Service, and optionally a HorizontalPodAutoscaler.
Every object carries the ``app.kubernetes.io/*`` labels and the spec's ``workbench`` labels, so
that a restarted control plane finds its workloads again by label. Objects are plain dicts,
ready to send to the API server; tests validate them against the official schemas.
"""

from workbench_hub.runtime.base import Resources, WorkloadSpec, port_env_name

APP_LABELS = {
    "app.kubernetes.io/name": "jupyter-workbench",
    "app.kubernetes.io/managed-by": "workbench",
}
#: the label a workload's pods carry with its name (Deployment selector, Service selector)
WORKLOAD_LABEL = "workbench.jupyter.org/workload"
#: the variable holding the pod's IP (Spark's driver host)
POD_IP_ENV = "WORKBENCH_POD_IP"


def labels_for(spec: WorkloadSpec, component: str) -> dict[str, str]:
    """Standard, workbench and spec labels of a workload's objects and pods."""
    return {
        **APP_LABELS,
        "app.kubernetes.io/component": component,
        **spec.all_labels(),
        WORKLOAD_LABEL: spec.name,
    }


def quantity_resources(resources: Resources) -> dict:
    """Requests equal to limits (Guaranteed QoS when both cpu and memory are set)."""
    limits: dict[str, str] = {}
    if resources.cpu is not None:
        limits["cpu"] = f"{round(resources.cpu * 1000)}m"
    if resources.memory is not None:
        limits["memory"] = str(resources.memory)
    if resources.gpu:
        limits["nvidia.com/gpu"] = str(resources.gpu)
    return {"requests": dict(limits), "limits": limits} if limits else {}


def make_container(spec: WorkloadSpec, image: str, readiness_path: str | None = None) -> dict:
    """The one container of a workload's pod: command, environment, ports, volumes, limits."""
    env = [{"name": key, "value": value} for key, value in sorted(spec.env.items())]
    env += [
        {"name": port_env_name(name), "value": str(number)}
        for name, number in sorted(spec.ports.items())
    ]
    env.append({"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    container = {
        "name": "workload",
        "image": image,
        "command": list(spec.command),
        "workingDir": spec.working_dir,
        "env": env,
        "resources": quantity_resources(spec.resources),
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
    }
    if spec.ports:
        container["ports"] = [
            {"name": name, "containerPort": number} for name, number in sorted(spec.ports.items())
        ]
    if spec.volumes:
        container["volumeMounts"] = [
            {
                "name": f"volume-{i}",
                "mountPath": volume.target,
                "readOnly": volume.read_only,
                **({"subPath": volume.sub_path} if volume.sub_path else {}),
            }
            for i, volume in enumerate(spec.volumes)
        ]
    if readiness_path and spec.ports:
        port = sorted(spec.ports)[0]
        container["readinessProbe"] = {
            "httpGet": {"path": readiness_path, "port": port},
            "periodSeconds": 2,
            "failureThreshold": 2,
        }
    return container


def make_pod_spec(
    spec: WorkloadSpec,
    image: str,
    restart_policy: str,
    service_account: str | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict] | None = None,
    readiness_path: str | None = None,
) -> dict:
    """A pod template's spec; volume sources are PersistentVolumeClaim names."""
    pod = {
        "restartPolicy": restart_policy,
        "containers": [make_container(spec, image, readiness_path)],
        "enableServiceLinks": False,
    }
    if spec.volumes:
        pod["volumes"] = [
            {
                "name": f"volume-{i}",
                "persistentVolumeClaim": {"claimName": volume.source, "readOnly": volume.read_only},
            }
            for i, volume in enumerate(spec.volumes)
        ]
    if service_account:
        pod["serviceAccountName"] = service_account
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = list(tolerations)
    return pod


def make_job(
    spec: WorkloadSpec,
    namespace: str,
    image: str,
    ttl_seconds: int = 3600,
    **pod_options,
) -> dict:
    """A Job running ``spec`` once: retries are the workbench's, so ``backoffLimit: 0``; the
    spec's ``timeout_seconds`` becomes ``activeDeadlineSeconds``."""
    labels = labels_for(spec, spec.kind)
    job_spec = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": ttl_seconds,
        "template": {
            "metadata": {"labels": labels},
            "spec": make_pod_spec(spec, image, "Never", **pod_options),
        },
    }
    if spec.timeout_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.timeout_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": labels},
        "spec": job_spec,
    }


def make_deployment(
    spec: WorkloadSpec,
    namespace: str,
    image: str,
    replicas: int,
    readiness_path: str = "/health",
    **pod_options,
) -> dict:
    """A Deployment of ``replicas`` pods; a rolling update never goes below ``replicas`` ready."""
    labels = labels_for(spec, spec.kind)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {WORKLOAD_LABEL: spec.name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": make_pod_spec(
                    spec, image, "Always", readiness_path=readiness_path, **pod_options
                ),
            },
        },
    }


def make_service(spec: WorkloadSpec, namespace: str) -> dict:
    """A ClusterIP Service in front of a Deployment's ready pods, one port per spec port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": spec.name,
            "namespace": namespace,
            "labels": labels_for(spec, spec.kind),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {WORKLOAD_LABEL: spec.name},
            "ports": [
                {"name": name, "port": number, "targetPort": name, "protocol": "TCP"}
                for name, number in sorted(spec.ports.items())
            ],
        },
    }


def make_autoscaler(
    spec: WorkloadSpec, namespace: str, min_replicas: int, max_replicas: int, cpu_percent: int
) -> dict:
    """A HorizontalPodAutoscaler of the Deployment, bounded by admin-set replica counts."""
    if not 1 <= min_replicas <= max_replicas:
        raise ValueError("autoscaling needs 1 <= min_replicas <= max_replicas")
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": spec.name,
            "namespace": namespace,
            "labels": labels_for(spec, spec.kind),
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": cpu_percent},
                    },
                }
            ],
        },
    }
