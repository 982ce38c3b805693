"""Fixtures shared by every test package: a real PostgreSQL server and real workbenches."""

import os
import shutil

import pytest

from tests.harness import Workbench
from tests.links import SECRET
from tests.postgres import PostgresServer
from workbench_hub.db import upgrade_db


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server started for this test session."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_database(postgres):
    """Factory of fresh, empty PostgreSQL databases (SQLAlchemy URLs)."""
    return postgres.new_database


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A SQLite database at the head revision, copied by `db_url` (faster than migrating)."""
    path = tmp_path_factory.mktemp("template") / "workbench.sqlite"
    upgrade_db(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path, sqlite_template):
    """A fresh database at the head revision: SQLite, then PostgreSQL."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database")()
        upgrade_db(url)
        return url
    path = tmp_path / "workbench.sqlite"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def workbench_factory():
    """Start real `workbench up` processes: `workbench_factory(db_url=None, extra_config="")`."""
    started = []

    def start(db_url=None, extra_config=""):
        wb = Workbench(db_url=db_url, extra_config=extra_config)
        started.append(wb)
        return wb.start()

    yield start
    for wb in started:
        wb.stop()


class KubeTarget:
    """The Kubernetes API a ``k8s`` test talks to: the test double or a real cluster."""

    def __init__(self, kubeconfig: str, host: str | None, double=None):
        self.kubeconfig = kubeconfig
        self.host = host  # KubeSpawner's k8s_api_host (None: from the kubeconfig)
        self.double = double  # tests.kubeapi.KubeAPIDouble, None on a real cluster

    async def configuration(self):
        """A kubernetes_asyncio Configuration for this API server."""
        from kubernetes_asyncio.client import Configuration
        from kubernetes_asyncio.config import load_kube_config

        configuration = Configuration()
        await load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
        return configuration


@pytest.fixture(params=["double", "cluster"])
async def kube(request, tmp_path, monkeypatch):
    """The Kubernetes API server of a ``k8s`` test.

    ``double``: the API test double of tests/kubeapi (always). ``cluster``: the cluster that
    $KUBECONFIG points at, only when it is set (skipped otherwise); see docs/kubernetes.md.
    """
    if request.param == "cluster":
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig:
            pytest.skip("set KUBECONFIG to run the k8s tests against a real cluster")
        yield KubeTarget(kubeconfig, None)
        return
    from kubernetes_asyncio.config import kube_config

    from tests.kubeapi import KubeAPIDouble, host_command_exists

    double = KubeAPIDouble(execute=host_command_exists)
    await double.start()
    kubeconfig = str(double.write_kubeconfig(tmp_path / "kubeconfig"))
    # kubernetes_asyncio reads $KUBECONFIG once, at import
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    yield KubeTarget(kubeconfig, double.url, double)
    await double.stop()


@pytest.fixture
def outside(tmp_path):
    """A directory beside the project with a secret in it (the link tests' target)."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text(SECRET)
    return directory
