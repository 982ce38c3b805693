"""Fixtures shared by every test package: a real PostgreSQL server and real workbenches."""

import pytest

from tests.harness import Workbench
from tests.postgres import PostgresServer


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
