"""Fixtures shared by every test package: a real PostgreSQL server and real workbenches."""

import shutil

import pytest

from tests.harness import Workbench
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
