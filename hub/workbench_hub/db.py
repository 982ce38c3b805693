"""Database access: URLs, the async engine, and Alembic schema upgrades and checks."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

_HERE = Path(__file__).parent
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}


class SchemaError(RuntimeError):
    """The database schema is not at the Alembic head revision."""


def _with_driver(url: str, drivers: dict[str, str]) -> str:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in drivers:
        raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
    return parsed.set(drivername=drivers[backend]).render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    """The URL with the synchronous driver Alembic uses."""
    return _with_driver(url, _SYNC_DRIVERS)


def async_url(url: str) -> str:
    """The URL with the asyncio driver the service uses (sqlite → sqlite+aiosqlite)."""
    return _with_driver(url, _ASYNC_DRIVERS)


def alembic_config(db_url: str) -> Config:
    """Alembic configuration for `db_url`, using the migrations shipped in this package."""
    config = Config(str(_HERE / "alembic.ini"))
    config.set_main_option("script_location", str(_HERE / "alembic"))
    config.set_main_option("sqlalchemy.url", sync_url(db_url).replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration shipped with this version."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _ensure_sqlite_dir(db_url: str) -> None:
    parsed = make_url(db_url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def upgrade_db(db_url: str) -> None:
    """Bring the schema at `db_url` to the head revision (``workbench upgrade-db``)."""
    _ensure_sqlite_dir(db_url)
    command.upgrade(alembic_config(db_url), "head")


def current_revision(db_url: str) -> str | None:
    """The revision the database at `db_url` is at (None for an empty database)."""
    engine = create_engine(sync_url(db_url))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


async def upgrade(db_url: str) -> None:
    """`upgrade_db` without blocking the event loop."""
    await asyncio.get_running_loop().run_in_executor(None, upgrade_db, db_url)


def _enable_sqlite_foreign_keys(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """The async engine and session factory for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_async_engine(async_url(url))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _enable_sqlite_foreign_keys)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session that is rolled back if the block raises (commit explicitly)."""
        async with self._sessions() as session:
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise

    async def revision(self) -> str | None:
        """The schema revision of this database (None when Alembic never ran)."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
            )

    async def check_schema(self) -> None:
        """Raise SchemaError unless the schema is at the head revision."""
        current, head = await self.revision(), head_revision()
        if current != head:
            raise SchemaError(
                f"database schema is at revision {current or 'none (no tables)'}, this version"
                f" needs {head}: stop the workbench and run `workbench upgrade-db`"
            )

    async def dispose(self) -> None:
        await self.engine.dispose()
