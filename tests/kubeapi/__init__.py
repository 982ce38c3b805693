"""A stateful Kubernetes API server test double, served over real HTTP.

No cluster can run where these tests run, so :class:`KubeAPIDouble` plays one: an aiohttp
server on 127.0.0.1 (random port, plain HTTP, no auth) that ``kubernetes_asyncio`` and
KubeSpawner talk to through a kubeconfig, with the API server's semantics and the handful of
controllers the workbench relies on. It is a test double, not an emulator: what it models
and what it does not is listed in ``tests/kubeapi/README.md``.

Usage::

    async with KubeAPIDouble(execute=host_command_exists) as kube:
        kube.write_kubeconfig(tmp_path / "kubeconfig")    # or monkeypatch KUBECONFIG
        ...                                              # talk to kube.url over HTTP
        kube.objects("pods", "ns")                        # inspect state directly
        kube.calls[("create", "pods")]                    # count API calls

or the ``kube_double`` fixture from ``tests.kubeapi.fixtures``.

Modules: ``resources`` (the resource table, discovery), ``store`` (objects, versions,
watches, verbs), ``admission`` (defaults, quota, limit ranges), ``validation`` (schemas and
names), ``patch``, ``selectors``, ``quantity``, ``controllers`` (namespace, GC, volumes,
quota, jobs, deployments), ``kubelet`` (scheduling, pod execution, probes, logs), ``server``
(HTTP).
"""

from tests.kubeapi.quantity import format_quantity, parse_quantity
from tests.kubeapi.server import NODE_NAME, KubeAPIDouble, host_command_exists

__all__ = [
    "NODE_NAME",
    "KubeAPIDouble",
    "format_quantity",
    "host_command_exists",
    "parse_quantity",
]
