"""Pytest fixtures for the Kubernetes API double (import them into a conftest.py)."""

import pytest

from tests.kubeapi.server import KubeAPIDouble, host_command_exists


@pytest.fixture
async def kube_double():
    """A started :class:`KubeAPIDouble` whose pods run on the host when the first
    container's ``command[0]`` is an absolute path that exists; stopped after the test."""
    double = KubeAPIDouble(execute=host_command_exists)
    await double.start()
    yield double
    await double.stop()


@pytest.fixture
async def kubespawner_double(kube_double, tmp_path, monkeypatch):
    """``kube_double`` with KubeSpawner pointed at it and KubeSpawner's process-wide state
    reset around the test: its cached kube config and clients (kept per event loop, and the
    loop outlives a test) and its class-level shared reflectors.

    kubernetes_asyncio reads ``KUBECONFIG`` once, at import, so the fixture sets both the
    variable and the module constant it was read into."""
    from kubernetes_asyncio.config import kube_config
    from kubespawner import KubeSpawner, clients

    async def reset():
        for reflector in list(KubeSpawner.reflectors.values()):
            await reflector.stop()
        KubeSpawner.reflectors.clear()
        clients.load_config.cache_clear()
        clients._client_cache.clear()

    path = str(kube_double.write_kubeconfig(tmp_path / "kubeconfig"))
    monkeypatch.setenv("KUBECONFIG", path)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", path)
    await reset()
    yield kube_double
    await reset()
