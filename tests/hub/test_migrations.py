"""Schema migrations on SQLite and PostgreSQL, and the service's refusal of a stale schema."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text

from tests.postgres import free_port
from workbench_hub import db

REPO = Path(__file__).parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("pg_database")()
    return f"sqlite:///{tmp_path}/workbench.sqlite"


def test_upgrade_creates_schema_at_head(empty_db_url):
    assert db.current_revision(empty_db_url) is None
    db.upgrade_db(empty_db_url)
    assert db.current_revision(empty_db_url) == db.head_revision()
    engine = create_engine(db.sync_url(empty_db_url))
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"projects", "collaborators", "audit_events", "alembic_version"} <= tables
        columns = {c["name"] for c in inspect(engine).get_columns("audit_events")}
        assert columns == {
            "id",
            "time",
            "actor",
            "action",
            "object_type",
            "object_id",
            "outcome",
            "detail",
        }
    finally:
        engine.dispose()
    db.upgrade_db(empty_db_url)  # idempotent
    assert db.current_revision(empty_db_url) == db.head_revision()


async def test_rows_round_trip_with_aware_times_and_cascade(empty_db_url):
    from sqlalchemy import select

    from workbench_hub.orm import Collaborator, Project, utcnow

    db.upgrade_db(empty_db_url)
    database = db.Database(empty_db_url)
    try:
        await database.check_schema()
        async with database.session() as session:
            project = Project(
                name="p",
                owner_kind="user",
                owner_name="a",
                visibility="private",
                description="",
                created=utcnow(),
                updated=utcnow(),
            )
            session.add(project)
            await session.flush()
            session.add(Collaborator(project_id=project.id, user_name="b", role="viewer"))
            await session.commit()
        async with database.session() as session:
            loaded = await session.scalar(select(Project))
            assert loaded.created.utcoffset().total_seconds() == 0
            await session.delete(loaded)
            await session.commit()
        async with database.session() as session:
            assert (await session.scalars(select(Collaborator))).all() == []
    finally:
        await database.dispose()


def test_url_drivers():
    assert db.async_url("sqlite:////x/y.db") == "sqlite+aiosqlite:////x/y.db"
    assert db.sync_url("postgresql://u:p%40ss@h/d") == "postgresql+psycopg://u:p%40ss@h/d"
    assert db.async_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"
    with pytest.raises(ValueError, match="unsupported database"):
        db.sync_url("mysql://h/d")


def _run_service(db_url: str, tmp_path: Path, port: int = 0) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("hub", "spawner", "extensions")),
        "JUPYTERHUB_API_TOKEN": "not-a-real-token",
        "JUPYTERHUB_API_URL": "http://127.0.0.1:1/hub/api",
        "JUPYTERHUB_CLIENT_ID": "service-workbench",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port or free_port()}",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workbench_hub",
            f"--WorkbenchService.db_url={db_url}",
            f"--WorkbenchService.data_dir={tmp_path}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_service_refuses_empty_database(empty_db_url, tmp_path):
    proc = _run_service(empty_db_url, tmp_path)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    assert "workbench upgrade-db" in output and "Refusing to start" in output


def test_service_refuses_old_revision(empty_db_url, tmp_path):
    db.upgrade_db(empty_db_url)
    engine = create_engine(db.sync_url(empty_db_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    engine.dispose()
    proc = _run_service(empty_db_url, tmp_path)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    assert "revision 0000" in output and "workbench upgrade-db" in output


def test_service_starts_on_current_schema(empty_db_url, tmp_path):
    db.upgrade_db(empty_db_url)
    port = free_port()
    proc = _run_service(empty_db_url, tmp_path, port)
    url = f"http://127.0.0.1:{port}/services/workbench/api/v1/projects"
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                response = httpx.get(url, timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0]
        # up, and answering: no identity → 401 JSON, never a redirect
        assert response.status_code == 401
        assert response.json()["status"] == 401
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output


def test_migrations_match_the_orm(empty_db_url):
    """Alembic's autogenerate finds nothing to change: the migrations build the ORM's schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from workbench_hub.orm import Base

    db.upgrade_db(empty_db_url)
    engine = create_engine(db.sync_url(empty_db_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": False}
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
