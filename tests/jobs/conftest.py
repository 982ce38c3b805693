"""Fixtures of the job engine tests: a real database (SQLite and PostgreSQL), a real local
runtime in a temporary state directory, a project directory and a clock the test moves."""

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from workbench_hub.db import Database
from workbench_hub.jobs.engine import JobEngine
from workbench_hub.orm import Job, JobRun, Project
from workbench_hub.runtime import procfs
from workbench_hub.runtime.local import LocalProcessRuntime

JOB_DEFAULTS = {
    "arguments": [],
    "parameters": {},
    "env": {},
    "profile": "small",
    "schedule": "manual",
    "active": True,
    "retry_max": 0,
    "retry_delay_seconds": 0,
    "retry_on": ["failed", "timed_out"],
    "concurrency": "forbid",
    "notify": {},
    "created_by": "alice",
}


class Clock:
    """The engine's clock: real time until `set`, then frozen and moved by hand."""

    def __init__(self) -> None:
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        return self.frozen or datetime.now(UTC)

    def set(self, value: datetime) -> None:
        self.frozen = value

    def advance(self, seconds: float) -> None:
        self.frozen = self() + timedelta(seconds=seconds)


def gone(pid: int) -> bool:
    """No process `pid` runs any more (a zombie counts as gone)."""
    stat = procfs.read_stat(pid)
    return stat is None or stat.state in ("Z", "X")


class JobsEnv:
    """A database, runtime, project root and engine, with helpers to build jobs."""

    def __init__(self, url: str, tmp: Path, **engine_traits) -> None:
        self.url = url
        self.tmp = tmp
        self.db = Database(url)
        self.runtime = LocalProcessRuntime(state_dir=str(tmp / "runtime"), poll_interval=0.05)
        self.project_root = tmp / "projects"
        self.project_root.mkdir(exist_ok=True)
        self.clock = Clock()
        traits = {"poll_interval": 0.2, "stop_grace": 1.0} | engine_traits
        self.engine = JobEngine(
            db=self.db,
            runtime=self.runtime,
            project_root=str(self.project_root),
            snapshot_dir=str(tmp / "snapshots"),
            clock=self.clock,
            **traits,
        )

    async def project(self, name: str = "demo", files: dict[str, str] | None = None) -> int:
        directory = self.project_root / name
        directory.mkdir()
        for path, text in (files or {}).items():
            self.write(name, path, text)
        async with self.db.session() as s:
            project = Project(name=name, owner_kind="user", owner_name="alice")
            s.add(project)
            await s.commit()
            return project.id

    def write(self, project: str, path: str, text: str) -> Path:
        target = self.project_root / project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    async def job(self, project_id: int, name: str, target: str, **fields) -> int:
        async with self.db.session() as s:
            job = Job(project_id=project_id, name=name, target=target, **JOB_DEFAULTS | fields)
            s.add(job)
            await s.commit()
            job_id = job.id
        self.engine.job_changed(job_id)
        return job_id

    async def update_job(self, job_id: int, **fields) -> None:
        async with self.db.session() as s:
            job = await s.get(Job, job_id)
            for key, value in fields.items():
                setattr(job, key, value)
            await s.commit()
        self.engine.job_changed(job_id)

    async def get_job(self, job_id: int) -> Job:
        async with self.db.session() as s:
            return await s.get(Job, job_id)

    async def run(self, run_id: int) -> JobRun:
        async with self.db.session() as s:
            return await s.get(JobRun, run_id)

    async def runs(self, job_id: int) -> list[JobRun]:
        async with self.db.session() as s:
            return list(
                (
                    await s.scalars(
                        select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.number)
                    )
                ).all()
            )

    async def settle(self, check, timeout: float = 90):
        """Tick the engine until `await check()` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            await self.engine.tick()
            value = await check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached in {timeout}s")
            await asyncio.sleep(0.05)

    async def ended(self, run_id: int, timeout: float = 90) -> JobRun:
        """Tick until the run has ended and its processes and follow-ups are done."""

        async def check():
            run = await self.run(run_id)
            done = run.state not in ("queued", "running") and not self.engine._killing
            return run if done else None

        await self.settle(check, timeout)
        await self.quiet()
        return await self.run(run_id)

    async def quiet(self) -> None:
        """Wait for the engine's background work (kills, log copies, emails)."""
        while self.engine._tasks:
            await asyncio.gather(*list(self.engine._tasks), return_exceptions=True)

    async def close(self) -> None:
        await self.engine.stop()
        await self.quiet()
        for status in await self.runtime.list():
            if status.phase in ("pending", "running"):
                await self.runtime.stop(status.name, grace=0)
        await self.db.dispose()


@pytest.fixture
async def make_env(db_url, tmp_path):
    """Build the JobsEnv of a test (engine traits as keyword arguments); closed at the end."""
    envs = []

    def make(**engine_traits) -> JobsEnv:
        env = JobsEnv(db_url, tmp_path, **engine_traits)
        envs.append(env)
        return env

    yield make
    for env in envs:
        await env.close()


@pytest.fixture
async def env(db_url, tmp_path):
    jobs_env = JobsEnv(db_url, tmp_path)
    yield jobs_env
    await jobs_env.close()
