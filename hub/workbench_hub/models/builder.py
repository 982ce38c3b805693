"""Model builds: run the build step as a workload and record its outcome (docs/models.md).

A build is a ``model-build`` workload running ``python -m workbench_serving.build`` in the
project's directory; it writes the build into ``<build_dir>/<build uuid>/`` (``src/``,
``env/``, ``build.json``). :class:`ModelBuilder` moves the build's record through
``queued → building → succeeded | failed``, keeps the workload's output as ``build.log`` in
the build's directory, and after a restart adopts the builds that were running. It never
touches deployments: a failed build leaves whatever is being served alone.
"""

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from traitlets import Any, Dict, Float, Int, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from workbench_hub import audit, confine
from workbench_hub.orm import Model, ModelBuild, Project
from workbench_hub.runtime.base import (
    ACTIVE_PHASES,
    KIND_LABEL,
    LABEL_PREFIX,
    Resources,
    VolumeMount,
    WorkloadNotFound,
    WorkloadSpec,
    WorkloadStatus,
)

BUILD_LABEL = LABEL_PREFIX + "model-build"
MODEL_LABEL = LABEL_PREFIX + "model"
NUMBER_LABEL = LABEL_PREFIX + "build-number"
END_STATES = ("succeeded", "failed")
LOG_FILE = "build.log"
MANIFEST = "build.json"
ERROR_PREFIX = "error: "
SYSTEM_ACTOR = "workbench"
RESTART_LOST = "the control plane restarted and the build was lost"
_LOG_BATCH = 2000


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---- pure builders


def workload_name(build_id: int) -> str:
    """A runtime name for a build: unique even if a database is reset on the same runtime."""
    return f"build-{build_id}-{secrets.token_hex(3)}"


def build_command(
    *,
    python: str,
    project_dir: str,
    output: str,
    file: str,
    function: str,
    max_bytes: int,
    max_file_bytes: int,
    install_timeout: float,
    pip_args: Sequence[str] = (),
) -> list[str]:
    """argv of the build step (``workbench_serving.build``)."""
    return [
        python,
        "-m",
        "workbench_serving.build",
        "--project-dir",
        project_dir,
        "--output",
        output,
        "--file",
        file,
        "--function",
        function,
        "--max-bytes",
        str(max_bytes),
        "--max-file-bytes",
        str(max_file_bytes),
        "--install-timeout",
        f"{install_timeout:g}",
        *(f"--pip-arg={arg}" for arg in pip_args),
    ]


def make_build_spec(
    *,
    name: str,
    build_id: int,
    model_id: int,
    number: int,
    user: str,
    project: str,
    command: list[str],
    working_dir: str,
    env: dict[str, str],
    resources: Resources,
    volumes: list[VolumeMount] | None = None,
) -> WorkloadSpec:
    """The WorkloadSpec of a build, labelled with its build id, model id and number."""
    return WorkloadSpec(
        name=name,
        kind="model-build",
        user=user,
        project=project,
        command=command,
        working_dir=working_dir,
        env=env,
        resources=resources,
        volumes=list(volumes or []),
        labels={BUILD_LABEL: str(build_id), MODEL_LABEL: str(model_id), NUMBER_LABEL: str(number)},
    )


def outcome(
    status: WorkloadStatus | None, tail: list[str], *, timed_out: float | None = None
) -> tuple[str, str]:
    """(state, message) of a build from its finished workload and its log's last lines."""
    if timed_out is not None:
        return "failed", f"the build timed out after {timed_out:g} s"
    if status is None:
        return "failed", "the build's workload disappeared from the runtime"
    if status.phase == "succeeded":
        return "succeeded", ""
    if status.phase == "stopped":
        return "failed", "the build was stopped"
    if status.phase == "lost":
        return "failed", RESTART_LOST
    errors = [line for line in tail if line.startswith(ERROR_PREFIX)]
    if errors:
        return "failed", errors[-1].removeprefix(ERROR_PREFIX).strip()
    message = status.message or f"the build step exited with code {status.exit_code}"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    return "failed", f"{message}: {last[:500]}" if last else message


def _write_log(path: Path, lines: list[str], first: bool) -> None:
    """Write or append to a file of the build's directory, never through a link the build's
    code could have left there (the directory is the build workload's to write)."""
    if first:  # a link left there is removed, not followed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if first else os.O_APPEND)
    fd = confine.open_beneath(path.parent, path.name, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def _remove_tree(path: Path) -> None:
    """Delete a file or directory tree, making read-only directories writable on the way."""

    def retry(func, name, _exc_info) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
        func(name)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=retry)


def _discard_outputs(path: Path) -> None:
    """Delete what a failed build made (its log stays)."""
    for part in ("src", "env", MANIFEST + ".tmp"):
        with contextlib.suppress(OSError):
            _remove_tree(path / part)


class ModelBuilder(LoggingConfigurable):
    """Builds models through the runtime; see the "Builds" section of ``docs/models.md``."""

    db = Any(help="the workbench Database (workbench_hub.db)")
    runtime = Any(help="the Runtime that runs build workloads")
    project_root = Any(help="directory holding every project's directory")
    data_dir = Any(help="the control plane's data directory (builds live under it)")

    build_dir = Unicode(
        help="""Directory holding one directory per build (its files in src/, its environment
        in env/, its manifest build.json and its log build.log). Default:
        <data_dir>/model-builds. Deployments serve from here: keep it on storage that
        survives restarts.""",
    ).tag(config=True)

    @default("build_dir")
    def _build_dir_default(self) -> str:
        base = Path(self.data_dir) if self.data_dir else Path(self.project_root).parent
        return str(base / "model-builds")

    max_build_bytes = Int(
        1024**3,
        help="""Largest total size in bytes of the project files a build copies (its
        environment not counted). A bigger project fails to build with a message naming the
        largest files: list what the model does not need in .workbenchignore.""",
    ).tag(config=True)

    max_file_bytes = Int(
        100 * 1024**2,
        help="""Largest single file in bytes a build copies; a bigger one fails the build with
        its name (list it in .workbenchignore, or keep data outside the project).""",
    ).tag(config=True)

    install_timeout = Float(
        1800.0,
        help="""Seconds the install step (creating env/ and pip installing requirements.txt)
        may take before the build fails with "install step timed out".""",
    ).tag(config=True)

    build_timeout = Float(
        3600.0,
        help="""Seconds a whole build may take from its start; past it its workload is stopped
        and the build fails ("the build timed out after N s"). 0: no limit.""",
    ).tag(config=True)

    max_concurrent_builds = Int(
        2,
        help="""Builds running at once; further builds wait in state `queued` and start, oldest
        first, when one ends.""",
    ).tag(config=True)

    @validate("max_build_bytes", "max_file_bytes", "max_concurrent_builds")
    def _positive(self, proposal):
        if proposal["value"] < 1:
            raise ValueError(f"{proposal['trait'].name} must be at least 1")
        return proposal["value"]

    python = Unicode(
        sys.executable,
        help="""Python interpreter that runs the build step. It needs the workbench_serving
        package; builds without requirements.txt are checked (and served) with it, and
        environments from requirements.txt see its packages.""",
    ).tag(config=True)

    pip_args = List(
        Unicode(),
        help="""Extra arguments of the build's `pip install -r requirements.txt`, for example
        ["--index-url", "https://pypi.example.org/simple"] or ["--no-index",
        "--find-links", "/srv/wheels"] on machines without internet access.""",
    ).tag(config=True)

    env = Dict(
        value_trait=Unicode(),
        help="""Environment variables of build workloads, for pip's configuration
        (PIP_INDEX_URL, PIP_CERT) or a proxy (HTTPS_PROXY). Only PATH, HOME, LANG, LC_ALL and
        TZ reach a local workload otherwise.""",
    ).tag(config=True)

    build_cpu = Float(1.0, help="CPU cores a build may use (the runtime's resources.cpu).").tag(
        config=True
    )

    build_memory = Int(
        4 * 1024**3,
        help="""Memory in bytes a build may use (the runtime's resources.memory; for local
        processes an address-space limit per process).""",
    ).tag(config=True)

    stop_grace = Float(
        10.0, help="Seconds a timed-out build gets after SIGTERM before it is killed."
    ).tag(config=True)

    poll_interval = Float(
        1.0, help="Seconds between checks of wait() for a build this builder does not run."
    ).tag(config=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._tasks: dict[int, asyncio.Task] = {}  # build id → the task running it
        self._background: set[asyncio.Task] = set()  # removals of stale workloads
        self._slots = asyncio.Semaphore(self.max_concurrent_builds)

    # ---- public API

    async def start(self) -> None:
        """Adopt or finish builds left by a previous control plane; start queued builds."""
        await self._io(lambda: Path(self.build_dir).mkdir(parents=True, exist_ok=True))
        await self._reconcile_after_restart()
        async with self.db.session() as s:
            queued = (
                await s.scalars(
                    select(ModelBuild.id)
                    .where(ModelBuild.state == "queued")
                    .order_by(ModelBuild.id)
                )
            ).all()
        for build_id in queued:
            await self.start_build(build_id)
        self.log.info("Model builder started (%i queued builds)", len(queued))

    async def stop(self) -> None:
        """Stop background work. Running build workloads keep running (adopted at next start)."""
        tasks = [*self._tasks.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._background.clear()

    async def start_build(self, build_id: int) -> None:
        """Run the queued build ``build_id`` in the background (it waits for a free slot).

        The caller has committed the build's record in state ``queued``. Returns at once;
        :meth:`wait` waits for the end. Starting a build that runs already does nothing.
        """
        task = self._tasks.get(build_id)
        if task is not None and not task.done():
            return
        self._track(build_id, self._run_build(build_id))

    async def wait(self, build_id: int) -> ModelBuild:
        """Wait until the build has ended and return its record (KeyError: no such build).

        Bound the wait with ``asyncio.timeout``; cancelling the wait leaves the build alone.
        """
        while True:
            task = self._tasks.get(build_id)
            if task is not None and not task.done():
                await asyncio.wait([task])
            build = await self._get(build_id)
            if build is None:
                raise KeyError(build_id)
            if build.state in END_STATES:
                return build
            if task is None or task.done():
                await asyncio.sleep(self.poll_interval)

    def build_path(self, build: ModelBuild) -> Path:
        """The directory of a build: ``<build_dir>/<the uuid of its CRN>``."""
        tail = build.crn.rsplit(":", 1)[-1]
        if not tail or not all(c.isalnum() or c == "-" for c in tail):
            tail = f"build-{build.id}"
        return Path(self.build_dir, tail)

    def log_path(self, build: ModelBuild) -> Path | None:
        """Where the build's log is kept once it has ended (None before it started)."""
        return Path(build.path, LOG_FILE) if build.path else None

    async def read_log(self, build: ModelBuild) -> str:
        """The build's log: from ``build.log`` once written, else from the running workload."""
        path = self.log_path(build)
        if path is not None:
            text = await self._io(_read_text, path)
            if text is not None:
                return text
        if build.workload:
            lines = []
            with contextlib.suppress(WorkloadNotFound):
                async for line in self.runtime.logs(build.workload):
                    lines.append(line)
            if lines:
                return "\n".join(lines) + "\n"
            # the workload may have been removed just after build.log was written
            if path is not None and (text := await self._io(_read_text, path)) is not None:
                return text
        return ""

    # ---- helpers

    async def _io(self, func, *args):
        """Blocking file work in the default executor."""
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    def _track(self, build_id: int, coro: Coroutine) -> None:
        task = asyncio.create_task(self._guarded(build_id, coro), name=f"model-build-{build_id}")
        self._tasks[build_id] = task

        def done(task: asyncio.Task) -> None:
            if self._tasks.get(build_id) is task:
                del self._tasks[build_id]
            if not task.cancelled() and task.exception() is not None:
                self.log.error("Model build %s task failed", build_id, exc_info=task.exception())

        task.add_done_callback(done)

    def _spawn(self, coro: Coroutine) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load(self, s, build_id: int, lock: bool = False):
        query = (
            select(ModelBuild, Model, Project)
            .join(Model, Model.id == ModelBuild.model_id)
            .join(Project, Project.id == Model.project_id)
            .where(ModelBuild.id == build_id)
        )
        if lock:
            query = query.with_for_update(of=ModelBuild)
        return (await s.execute(query)).first()

    def _resources(self) -> Resources:
        return Resources(cpu=self.build_cpu or None, memory=self.build_memory or None, gpu=0)

    # ---- one build

    async def _run_build(self, build_id: int) -> None:
        async with self._slots:
            begun = await self._begin(build_id)
            if begun is None:
                return
            build, model, project = begun
            if await self._start_workload(build, model, project):
                await self._watch(build)

    async def _guarded(self, build_id: int, coro: Coroutine) -> None:
        """Run ``coro``; if it fails unexpectedly, fail the build and remove its workload."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.exception("Model build %s failed unexpectedly", build_id)
            await self._finish(build_id, "failed", f"internal error: {type(e).__name__}: {e}")
            build = await self._get(build_id)
            if build is not None and build.workload:
                with contextlib.suppress(Exception):
                    await self.runtime.remove(build.workload)

    async def _get(self, build_id: int) -> ModelBuild | None:
        async with self.db.session() as s:
            return await s.get(ModelBuild, build_id)

    async def _begin(self, build_id: int) -> tuple[ModelBuild, Model, Project] | None:
        """Move a queued build to building (its workload name and path recorded)."""
        async with self.db.session() as s:
            row = await self._load(s, build_id, lock=True)
            if row is None:
                self.log.warning("Model build %s no longer exists", build_id)
                return None
            build, model, project = row
            if build.state != "queued":
                return None
            build.state = "building"
            build.started_at = _utcnow()
            build.workload = workload_name(build.id)
            build.path = str(self.build_path(build))
            build.message = ""
            await s.commit()
        return build, model, project

    async def _start_workload(self, build: ModelBuild, model: Model, project: Project) -> bool:
        project_dir = Path(self.project_root, project.name)
        if not await self._io(project_dir.is_dir):
            await self._finish(
                build.id, "failed", f"the directory of project {project.name} no longer exists"
            )
            return False
        # the build's own directory exists before it starts: a runtime mounts it (and only it)
        await self._io(lambda: Path(build.path).mkdir(parents=True, exist_ok=True))
        command = build_command(
            python=self.python,
            project_dir=str(project_dir),
            output=build.path,
            file=build.file,
            function=build.function,
            max_bytes=self.max_build_bytes,
            max_file_bytes=self.max_file_bytes,
            install_timeout=self.install_timeout,
            pip_args=list(self.pip_args),
        )
        try:
            spec = make_build_spec(
                name=build.workload,
                build_id=build.id,
                model_id=model.id,
                number=build.number,
                user=build.created_by,
                project=project.name,
                command=command,
                working_dir=str(project_dir),
                env={**self.env, "PYTHONUNBUFFERED": "1"},
                resources=self._resources(),
                volumes=[
                    VolumeMount(source=str(project_dir), target=str(project_dir), read_only=True),
                    VolumeMount(source=build.path, target=build.path),
                ],
            )
            await self.runtime.start(spec)
        except ValueError as e:
            await self._finish(build.id, "failed", f"could not start the build: {e}")
            return False
        self.log.info(
            "Building %s/%s build %s as %s", project.name, model.name, build.number, build.workload
        )
        return True

    async def _watch(self, build: ModelBuild) -> None:
        """Wait for the build's workload (within build_timeout), then record how it ended."""
        timed_out = None
        try:
            if self.build_timeout > 0:
                elapsed = (_utcnow() - (build.started_at or _utcnow())).total_seconds()
                async with asyncio.timeout(max(self.build_timeout - elapsed, 0)):
                    status = await self.runtime.wait(build.workload)
            else:
                status = await self.runtime.wait(build.workload)
        except TimeoutError:
            timed_out = self.build_timeout
            try:
                status = await self.runtime.stop(build.workload, grace=self.stop_grace)
            except WorkloadNotFound:
                status = None
        except WorkloadNotFound:
            status = None
        await self._complete(build, status, timed_out)

    async def _complete(
        self, build: ModelBuild, status: WorkloadStatus | None, timed_out: float | None = None
    ) -> None:
        path = Path(build.path) if build.path else self.build_path(build)
        tail = await self._copy_log(build.workload, path, status is not None)
        state, message = outcome(status, tail, timed_out=timed_out)
        if state == "succeeded" and not await self._io((path / MANIFEST).is_file):
            state, message = "failed", f"the build step ended without writing {MANIFEST}"
        if state == "failed":
            await self._io(_discard_outputs, path)
        finished = status.finished if status is not None and status.finished else _utcnow()
        await self._finish(build.id, state, message, finished_at=finished, path=str(path))
        if status is not None:
            await self.runtime.remove(build.workload)

    async def _copy_log(self, workload: str, path: Path, exists: bool) -> list[str]:
        """Write the workload's whole output to ``path/build.log``; its last lines."""
        await self._io(lambda: path.mkdir(parents=True, exist_ok=True))
        tmp = path / (LOG_FILE + ".tmp")
        tail: list[str] = []
        batch: list[str] = []
        first = True
        if exists:
            with contextlib.suppress(WorkloadNotFound):
                async for line in self.runtime.logs(workload):
                    batch.append(line)
                    if len(batch) >= _LOG_BATCH:
                        await self._io(_write_log, tmp, batch, first)
                        first = False
                        tail = (tail + batch)[-50:]
                        batch = []
        await self._io(_write_log, tmp, batch, first)
        tail = (tail + batch)[-50:]
        await self._io(os.replace, tmp, path / LOG_FILE)
        return tail

    async def _finish(
        self,
        build_id: int,
        state: str,
        message: str,
        *,
        finished_at: datetime | None = None,
        path: str | None = None,
    ) -> None:
        """Record the end of a build that is not ended yet, with an audit event."""
        async with self.db.session() as s:
            row = await self._load(s, build_id, lock=True)
            if row is None:
                return
            build, model, project = row
            if build.state in END_STATES:
                return
            build.state = state
            build.message = message
            build.finished_at = finished_at or _utcnow()
            if path is not None:
                build.path = path
            audit.record(
                s,
                actor=SYSTEM_ACTOR,
                action=f"model.build.{state}",
                object_type="model_build",
                object_id=f"{project.name}/{model.name}/{build.number}",
                outcome="success" if state == "succeeded" else "failure",
                detail={"message": message} if message else {},
            )
            await s.commit()
        self.log.info(
            "Model %s/%s build %s %s%s",
            project.name,
            model.name,
            build.number,
            state,
            f": {message}" if message else "",
        )

    # ---- restart

    async def _reconcile_after_restart(self) -> None:
        workloads = {
            status.name: status
            for status in await self.runtime.list({KIND_LABEL: "model-build"})
            if BUILD_LABEL in status.labels
        }
        async with self.db.session() as s:
            building = (
                await s.scalars(
                    select(ModelBuild).where(ModelBuild.state == "building").order_by(ModelBuild.id)
                )
            ).all()
        for build in building:
            status = workloads.pop(build.workload, None) if build.workload else None
            if status is None:
                await self._finish(build.id, "failed", RESTART_LOST)
                self.log.warning("Model build %s was lost in a restart", build.id)
            elif status.phase in ACTIVE_PHASES:
                self.log.info("Adopted model build %s (%s)", build.id, build.workload)
                self._track(build.id, self._watch(build))
            else:  # it ended while no control plane watched it
                self._track(build.id, self._complete(build, status))
        for name, status in workloads.items():  # workloads of builds that have ended
            async with self.db.session() as s:
                state = await s.scalar(select(ModelBuild.state).where(ModelBuild.workload == name))
            if state is None or state in END_STATES:
                if status.phase in ACTIVE_PHASES:
                    self.log.warning("Stopping build workload %s: its build has ended", name)
                self._spawn(self.runtime.remove(name))


def _read_text(path: Path) -> str | None:
    """A file of the build's directory; None if missing or a link (which is not followed)."""
    try:
        with confine.read_beneath(path.parent, path.name) as f:
            return f.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, confine.PathEscape):
        return None
