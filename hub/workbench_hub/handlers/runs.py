"""Runs of a job: trigger, list, read, stop, rerun, logs and output files (docs/jobs.md)."""

import asyncio
import contextlib
import mimetypes
import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sqlalchemy import select
from tornado.iostream import StreamClosedError

from workbench_hub import confine
from workbench_hub.handlers.base import APIError, path_number
from workbench_hub.handlers.jobs import JobsAPIHandler, jobs_dir
from workbench_hub.jobs import END_STATES
from workbench_hub.jobs.engine import RunConflict
from workbench_hub.orm import Job, JobRun, Project
from workbench_hub.roles import Role

_CHUNK = 64 * 1024
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


class RunsAPIHandler(JobsAPIHandler):
    async def run_for(
        self, session, project: str, job: str, number: str, need: Role, action: str
    ) -> tuple[Project, Job, JobRun]:
        """Project, job and run `number`: 404 when any is hidden or missing, 403 if too low."""
        found_project, found_job, _ = await self.job_for(session, project, job, need, action)
        run = await session.scalar(
            select(JobRun).where(
                JobRun.job_id == found_job.id, JobRun.number == path_number(number)
            )
        )
        if run is None:
            raise APIError(404, f"job {job!r} of project {project!r} has no run {number}")
        return found_project, found_job, run

    async def write_run(self, run_id: int, status: int = 200) -> None:
        """Answer with run `run_id` as stored now."""
        async with self.db.session() as session:
            run = await session.get(JobRun, run_id)
            project = await session.get(Project, run.project_id)
            [result] = await self.runs_json(session, project, [run])
        if status == 201:
            self.set_header("Location", self._run_url(result["number"]))
        self.write_json(result, status=status)

    def _run_url(self, number: int) -> str:
        path = self.request.path.rstrip("/")
        if not path.endswith("/runs"):
            path = path.rsplit("/runs/", 1)[0] + "/runs"
        return f"{path}/{number}"

    def output_dir(self, project: Project, job: Job, run: JobRun) -> Path:
        """The run's output directory, relative to project_root (where `confine` starts)."""
        if run.output_dir:
            with contextlib.suppress(confine.PathEscape):
                return confine.beneath(self.service.project_root, run.output_dir)
        return jobs_dir(Path(project.name), job.name) / "runs" / str(run.number)


class RunListHandler(RunsAPIHandler):
    async def get(self, name, job):
        async with self.db.session() as session:
            project, found, _ = await self.job_for(session, name, job, Role.VIEWER, "viewing")
            page = self.page()
            runs = await page.scalars(
                session,
                select(JobRun).where(JobRun.job_id == found.id).order_by(JobRun.number.desc()),
            )
            result = await self.runs_json(session, project, runs)
        self.write_page("runs", result, page)

    async def post(self, name, job):
        self.json_body({})
        async with self.db.session() as session:
            _, found, _ = await self.job_for(session, name, job, Role.OPERATOR, "running jobs")
        engine = self.engine
        try:
            run = await engine.trigger(found.id, trigger="user", user=self.identity.name)
        except RunConflict as e:
            raise APIError(409, e.message) from None
        await self.write_run(run.id, status=201)


class RunHandler(RunsAPIHandler):
    async def get(self, name, job, number):
        async with self.db.session() as session:
            project, _, run = await self.run_for(session, name, job, number, Role.VIEWER, "viewing")
            [result] = await self.runs_json(session, project, [run])
        self.write_json(result)


class RunStopHandler(RunsAPIHandler):
    async def post(self, name, job, number):
        self.json_body({})
        async with self.db.session() as session:
            _, _, run = await self.run_for(
                session, name, job, number, Role.OPERATOR, "stopping runs"
            )
        if run.state in END_STATES:
            raise APIError(409, f"run {run.number} of job {job!r} already ended: {run.state}")
        engine = self.engine
        try:
            await engine.stop_run(run.id, self.identity.name)
        except RunConflict as e:
            raise APIError(409, e.message) from None
        await self.write_run(run.id)


class RunRerunHandler(RunsAPIHandler):
    async def post(self, name, job, number):
        self.json_body({})
        async with self.db.session() as session:
            _, _, run = await self.run_for(
                session, name, job, number, Role.OPERATOR, "rerunning runs"
            )
        engine = self.engine
        try:
            new = await engine.rerun(run.id, self.identity.name)
        except RunConflict as e:
            raise APIError(409, e.message) from None
        await self.write_run(new.id, status=201)


class RunLogsHandler(RunsAPIHandler):
    """The run's output as text/plain; with ``?follow=true`` streamed until the run ends."""

    _streaming: asyncio.Task | None = None
    _closed = False

    async def get(self, name, job, number):
        follow = self.get_query_argument("follow", "false").lower()
        if follow not in _TRUE + _FALSE:
            raise APIError(400, "follow must be true or false", field="follow")
        async with self.db.session() as session:
            _, _, run = await self.run_for(session, name, job, number, Role.VIEWER, "viewing")
        engine = self.engine
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Accel-Buffering", "no")
        self._streaming = asyncio.ensure_future(self._stream(engine, run, follow in _TRUE))
        try:
            await self._streaming
        except (asyncio.CancelledError, StreamClosedError):
            if self._closed:
                return
            raise
        self.finish()

    async def _stream(self, engine, run: JobRun, follow: bool) -> None:
        async with contextlib.aclosing(engine.logs(run, follow)) as chunks:
            async for line in chunks:
                self.write(line + "\n")
                await self.flush()

    def on_connection_close(self) -> None:
        self._closed = True
        if self._streaming is not None:
            self._streaming.cancel()


class RunOutputListHandler(RunsAPIHandler):
    async def get(self, name, job, number):
        async with self.db.session() as session:
            project, found, run = await self.run_for(
                session, name, job, number, Role.VIEWER, "viewing"
            )
        outputs = self.output_dir(project, found, run)
        files = await self.run_blocking(_list_files, self.service.project_root, outputs)
        self.write_json({"files": files})


class RunOutputHandler(RunsAPIHandler):
    async def get(self, name, job, number, path):
        async with self.db.session() as session:
            project, found, run = await self.run_for(
                session, name, job, number, Role.VIEWER, "viewing"
            )
        outputs = self.output_dir(project, found, run)
        try:
            handle = await self.run_blocking(_open_output, self.service.project_root, outputs, path)
        except confine.PathEscape:
            raise APIError(
                404,
                f"output file {path!r} of run {run.number} of job {job!r} leads outside the"
                " run's output directory through a symbolic link: it is not served",
            ) from None
        except OSError:
            raise APIError(
                404, f"run {run.number} of job {job!r} has no output file {path!r}"
            ) from None
        name = PurePosixPath(path).name
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/"):
            content_type += "; charset=UTF-8"
        self.set_header("Content-Type", content_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        # run outputs are user content: never let them script the hub's origin
        self.set_header("Content-Security-Policy", "sandbox")
        self.set_header("Content-Disposition", f'inline; filename="{_quote(name)}"')
        try:
            while chunk := await self.run_blocking(handle.read, _CHUNK):
                self.write(chunk)
                await self.flush()
        finally:
            await self.run_blocking(handle.close)
        self.finish()


def _quote(name: str) -> str:
    return "".join(c if c.isprintable() and c not in '"\\' else "_" for c in name)


# Run outputs are written by the run, which may plant links: a file is listed and served only
# if it resolves inside the output directory, itself reached from project_root with no link.


def _list_files(root: str, outputs: Path) -> list[dict]:
    """Regular files in the output directory `root/outputs`, by path."""
    base = Path(root).resolve() / outputs
    files = []
    for directory, dirs, names in os.walk(base):
        dirs.sort()
        for file_name in names:
            relative = Path(directory, file_name).relative_to(base)
            try:
                resolved = confine.resolve_within(root, outputs / relative, inside=outputs)
            except confine.PathEscape:
                continue
            if resolved.is_file():
                files.append({"path": relative.as_posix(), "size": resolved.stat().st_size})
    return sorted(files, key=lambda f: f["path"])


def _open_output(root: str, outputs: Path, relative: str) -> BinaryIO:
    """Output file `relative` opened for reading (PathEscape if it leads out, else OSError)."""
    parts = PurePosixPath(relative).parts
    if "\x00" in relative or relative.startswith("/") or ".." in parts:
        raise FileNotFoundError(relative)
    resolved = confine.resolve_within(root, outputs / relative, inside=outputs)
    return confine.read_beneath(root, resolved.relative_to(Path(root).resolve()))


RUN = r"projects/(?P<name>[^/]+)/jobs/(?P<job>[^/]+)/runs/(?P<number>[0-9]+)"
handlers = [
    (r"projects/(?P<name>[^/]+)/jobs/(?P<job>[^/]+)/runs", RunListHandler),
    (RUN, RunHandler),
    (RUN + "/stop", RunStopHandler),
    (RUN + "/rerun", RunRerunHandler),
    (RUN + "/logs", RunLogsHandler),
    (RUN + "/outputs", RunOutputListHandler),
    (RUN + "/outputs/(?P<path>.+)", RunOutputHandler),
]
