"""The job engine: one loop that schedules, starts, watches, ends and retries job runs.

State lives in the database; processes live in the runtime. Each pass of the loop
(:meth:`JobEngine.tick`):

1. recomputes ``next_tick`` of jobs that changed;
2. reconciles running runs with the runtime: records how finished ones ended, queues retries
   and the runs of dependent jobs, and stops runs past their timeout;
3. fires due cron ticks (a tick creates at most one run: ``(job_id, scheduled_for)`` is unique);
4. starts queued runs whose ``not_before`` has passed, within the quotas and the jobs'
   concurrency policies.

:meth:`trigger`, :meth:`rerun`, :meth:`stop_run` and the end of every run wake the loop at once,
so a run starts within the time of one pass. After a restart, :meth:`start` adopts runs whose
process still lives and ends the others with their real outcome.
"""

import asyncio
import contextlib
import os
import shutil
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from traitlets import Any, CaselessStrEnum, Float, Instance, Int, List, Type, Unicode, default
from traitlets.config import LoggingConfigurable

from workbench_hub import audit, confine
from workbench_hub.jobs import END_STATES, cron, execution
from workbench_hub.jobs.notify import EmailNotifier, Notifier, RunNotice
from workbench_hub.jobs.snapshots import SnapshotMissing, SnapshotStore
from workbench_hub.orm import Job, JobRun, Project
from workbench_hub.runtime.base import KIND_LABEL, VolumeMount, WorkloadNotFound

ACTIVE_STATES = ("queued", "running")
SYSTEM_ACTOR = "workbench"
RESTART_GONE = "the control plane restarted and the run's process was gone"
RESTART_UNSTARTED = "queued again: the control plane restarted before the run could start"
RUN_TOKEN_SCOPES = ["access:services!service=workbench", "custom:workbench:use"]
_LOG_TAIL_BYTES = 4096


class RunConflict(Exception):
    """The request conflicts with the job's runs (a `forbid` policy, a deleted snapshot)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _run_id(project: str, job: str, number: int) -> str:
    return f"{project}/{job}/{number}"


def _read_tail(root: str, relative: Path, limit: int) -> bytes:
    """The last `limit` bytes of a run's output file; none if missing or behind a link."""
    try:
        with confine.read_beneath(root, relative) as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read()
    except (FileNotFoundError, NotADirectoryError, confine.PathEscape):
        return b""


def _last_line(data: bytes) -> str:
    for line in reversed(data.decode(errors="replace").splitlines()):
        if line.strip():
            return line.strip()[:500]
    return ""


class JobEngine(LoggingConfigurable):
    """Schedules and runs jobs through the runtime; see ``docs/jobs.md``."""

    clock = Any(
        _utcnow,
        help="""Callable returning the current time as an aware UTC datetime. Tests replace it
        to move time by hand; everything the engine schedules reads this clock.""",
    ).tag(config=True)

    poll_interval = Float(
        5.0,
        help="""Longest time in seconds between two passes of the loop. Triggers, run ends and
        due schedules wake it earlier, so this only bounds how late an external change (a
        process killed by hand) is noticed.""",
    ).tag(config=True)

    missed_ticks = CaselessStrEnum(
        ["latest", "skip", "all"],
        "latest",
        help="""What to do with cron ticks that passed while the control plane was down or
        busy: `latest` runs one run for the most recent missed tick, `skip` runs none (a tick
        more than missed_tick_grace seconds late is skipped), `all` runs one run per missed
        tick (at most max_missed_runs). Skipped ticks are written to the audit log.""",
    ).tag(config=True)

    missed_tick_grace = Float(
        60.0,
        help="Seconds after its instant a cron tick still counts as on time (not missed).",
    ).tag(config=True)

    max_missed_runs = Int(
        100, help="With missed_ticks = all, the most runs queued at once for missed ticks."
    ).tag(config=True)

    max_runs_per_user = Int(
        0,
        help="""Most runs running at once for the jobs created by one user (0: unlimited).
        Further runs wait in `queued` with the reason in `queue_reason`.""",
    ).tag(config=True)

    max_runs_per_project = Int(
        0, help="Most runs running at once in one project (0: unlimited)."
    ).tag(config=True)

    output_retention = Int(
        50,
        help="""Runs per job whose outputs (log, executed notebook, files) are kept under the
        project's .workbench/jobs/<job>/runs/; older runs' outputs are deleted (the run
        records stay). 0 keeps everything.""",
    ).tag(config=True)

    stop_grace = Float(
        10.0,
        help="""Seconds a stopped or timed-out run gets after SIGTERM before its whole process
        tree is killed.""",
    ).tag(config=True)

    snapshot_dir = Unicode(
        help="""Directory of the content-addressed code snapshots taken at each run start
        (for reruns on the same code). Default: <data_dir>/job-snapshots of the service.""",
    ).tag(config=True)

    @default("snapshot_dir")
    def _snapshot_dir_default(self):
        data_dir = getattr(self.parent, "data_dir", None)
        base = Path(data_dir) if data_dir else Path(self.project_root).parent
        return str(base / "job-snapshots")

    snapshot_max_file_bytes = Int(
        50 * 1024**2,
        help="""Files larger than this are not copied into code snapshots (hashed by size and
        modification time instead); a rerun sees their current version.""",
    ).tag(config=True)

    python = Unicode(
        sys.executable,
        help="Python interpreter that runs script jobs and the notebook runner.",
    ).tag(config=True)

    kernel_name = Unicode(
        "python3", help="Jupyter kernel that runs notebook jobs (the project's kernel)."
    ).tag(config=True)

    token_lifetime = Int(
        86400,
        help="""Seconds a run's WORKBENCH_TOKEN is valid when the job has no timeout (with a
        timeout: the timeout plus stop_grace plus a minute). Revoked when the run ends.""",
    ).tag(config=True)

    api_url = Unicode(
        help="""URL of the workbench API given to runs as WORKBENCH_API_URL and used in
        notification links. Default: the service's public_hub_url + service prefix + api/v1.""",
    ).tag(config=True)

    @default("api_url")
    def _api_url_default(self):
        base = getattr(self.parent, "public_hub_url", "")
        if not base:
            return ""
        prefix = getattr(self.parent, "service_prefix", "/services/workbench/")
        return base.rstrip("/") + "/" + prefix.strip("/") + "/api/v1"

    resource_profiles = List(
        help="""Parsed resource profiles (a job's `profile` names one). Default: the service's
        resource_profiles. Empty: runs get no resource limits.""",
    )

    @default("resource_profiles")
    def _profiles_default(self):
        return list(getattr(self.parent, "resource_profiles", []) or [])

    notifier_class = Type(
        EmailNotifier,
        klass=Notifier,
        help="Notifier that tells a job's recipients how a run ended (EmailNotifier: SMTP).",
    ).tag(config=True)

    db = Any(None, help="workbench_hub.db.Database")
    runtime = Any(None, help="workbench_hub.runtime.base.Runtime")
    hub = Any(None, allow_none=True, help="HubClient minting run tokens; None: no tokens")
    project_root = Unicode()
    notifier = Instance(Notifier, allow_none=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.notifier is None:
            self.notifier = self.notifier_class(parent=self)
        self.snapshots = SnapshotStore(self.snapshot_dir, self.snapshot_max_file_bytes)
        self._lock = asyncio.Lock()
        self._wake_event = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._watchers: dict[int, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()
        self._killing: dict[int, int] = {}  # run id → job id, while its processes are stopped
        self._changed: set[int] = set()
        self._tokens: dict[int, tuple[str, str]] = {}  # run id → (user, token id), never tokens
        self._warned_no_hub = False

    # ---- public API

    def now(self) -> datetime:
        value = self.clock()
        if value.tzinfo is None:
            raise ValueError("JobEngine.clock must return an aware datetime")
        return value.astimezone(UTC)

    def wake(self) -> None:
        """Run a pass of the loop now."""
        self._wake_event.set()

    def job_changed(self, job_id: int) -> None:
        """Recompute the job's next cron tick (after create/update/pause/resume) and wake."""
        self._changed.add(job_id)
        self.wake()

    async def start(self) -> None:
        """Reconcile runs left by a previous control plane, then start the loop."""
        await self._run(lambda: Path(self.snapshot_dir).mkdir(parents=True, exist_ok=True))
        async with self._lock:
            await self._reconcile_after_restart()
        self._loop_task = asyncio.create_task(self._loop(), name="job-engine")
        self.log.info("Job engine started")

    async def stop(self) -> None:
        """Stop the loop and watchers; running runs keep running (adopted at next start)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for task in list(self._watchers.values()):
            task.cancel()
        await asyncio.gather(*self._watchers.values(), return_exceptions=True)
        self._watchers.clear()
        if self._tasks:  # kills and notifications in flight
            _, pending = await asyncio.wait(list(self._tasks), timeout=self.stop_grace + 10)
            for task in pending:
                task.cancel()

    async def trigger(
        self,
        job_id: int,
        trigger: str = "user",
        user: str | None = None,
        parent_run_id: int | None = None,
    ) -> JobRun:
        """Queue a run now. RunConflict if the job's policy is forbid and a run is active."""
        async with self._lock, self.db.session() as s:
            job, project = await self._job(s, job_id)
            run = await self._queue_run(
                s,
                job,
                project,
                trigger=trigger,
                user=user,
                parent_run_id=parent_run_id,
                conflict="raise",
            )
            await s.commit()
        self.wake()
        return run

    async def rerun(self, run_id: int, user: str) -> JobRun:
        """Queue a run of the same job on the code snapshot run `run_id` used."""
        async with self._lock, self.db.session() as s:
            old = await s.get(JobRun, run_id)
            if old is None:
                raise KeyError(run_id)
            job, project = await self._job(s, old.job_id)
            if not await self._run(self.snapshots.exists, old.code_hash):
                raise RunConflict(
                    f"run {old.number} of job {job.name} has no code snapshot to rerun"
                    + ("" if old.code_hash else " (it never started)")
                )
            run = await self._queue_run(
                s, job, project, trigger="rerun", user=user, conflict="raise", rerun_of=old
            )
            await s.commit()
        self.wake()
        return run

    async def stop_run(self, run_id: int, user: str) -> JobRun:
        """Stop a queued or running run and wait until its process tree is gone."""
        async with self._lock, self.db.session() as s:
            run = await s.get(JobRun, run_id)
            if run is None:
                raise KeyError(run_id)
            if run.state not in ACTIVE_STATES:
                return run
            job, project = await self._job(s, run.job_id)
            kill = await self._end(
                s, run, job, project, "stopped", f"stopped by {user}", actor=user
            )
            await s.commit()
            if kill:
                self._killing[run.id] = run.job_id
        if kill:
            await self._kill(run)
        self._spawn(self._after_end(run.id))
        self.wake()
        return run

    async def logs(self, run: JobRun, follow: bool = False) -> AsyncIterator[str]:
        """The run's output, line by line without the newline; with `follow`, until it ends."""
        while follow and (
            run.state == "queued"
            or (run.state == "running" and await self.runtime.status(run.workload) is None)
        ):  # not started yet, or its workload is being created
            await asyncio.sleep(min(self.runtime.poll_interval, 0.5))
            async with self.db.session() as s:
                run = await s.get(JobRun, run.id) or run
        if run.workload and await self.runtime.status(run.workload) is not None:
            with contextlib.suppress(WorkloadNotFound):
                async for line in self.runtime.logs(run.workload, follow=follow):
                    yield line
                return
        if (outputs := self._outputs(run)) is not None:
            data = await self._run(_read_tail, self.project_root, outputs / "output.log", 1 << 40)
            for line in data.decode(errors="replace").splitlines():
                yield line

    async def tick(self) -> None:
        """One pass of the loop."""
        async with self._lock:
            now = self.now()
            await self._update_next_ticks(now)
            await self._reconcile(now)
            await self._fire_cron(now)
            await self._start_queued(now)

    # ---- the loop

    async def _loop(self) -> None:
        while True:
            self._wake_event.clear()
            try:
                await self.tick()
            except Exception:
                self.log.exception("Job engine pass failed; retrying in %ss", self.poll_interval)
            timeout = await self._sleep_seconds()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake_event.wait()

    async def _sleep_seconds(self) -> float:
        """Until the next due instant (cron tick, retry, timeout), at most poll_interval."""
        try:
            async with self.db.session() as s:
                instants = [
                    await s.scalar(select(func.min(Job.next_tick))),
                    await s.scalar(
                        select(func.min(JobRun.not_before)).where(JobRun.state == "queued")
                    ),
                ]
                timed = await s.execute(
                    select(JobRun.started_at, Job.timeout_seconds)
                    .join(Job, Job.id == JobRun.job_id)
                    .where(JobRun.state == "running", Job.timeout_seconds.is_not(None))
                )
                instants += [
                    started + timedelta(seconds=timeout) for started, timeout in timed if started
                ]
        except Exception:
            return self.poll_interval
        now = self.now()
        waits = [(t - now).total_seconds() for t in instants if t is not None]
        return max(0.0, min([self.poll_interval, *waits]))

    # ---- helpers

    async def _run(self, func, *args):
        """Blocking file work in the default executor."""
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("Job engine task failed", exc_info=task.exception())

    async def _job(self, s, job_id: int) -> tuple[Job, Project]:
        row = (
            await s.execute(
                select(Job, Project)
                .join(Project, Project.id == Job.project_id)
                .where(Job.id == job_id)
                .with_for_update(of=Job)
            )
        ).first()
        if row is None:
            raise KeyError(job_id)
        return row[0], row[1]

    def _project_dir(self, project: Project) -> Path:
        return Path(self.project_root, project.name)

    async def _active_runs(self, s, job_id: int) -> list[JobRun]:
        return list(
            (
                await s.scalars(
                    select(JobRun)
                    .where(JobRun.job_id == job_id, JobRun.state.in_(ACTIVE_STATES))
                    .order_by(JobRun.number)
                )
            ).all()
        )

    def _audit(self, s, actor, action, project, job, run, **detail) -> None:
        audit.record(
            s,
            actor=actor or SYSTEM_ACTOR,
            action=action,
            object_type="job_run",
            object_id=_run_id(project.name, job.name, run.number),
            detail=detail,
        )

    async def _queue_run(
        self,
        s,
        job: Job,
        project: Project,
        *,
        trigger: str,
        user: str | None = None,
        parent_run_id: int | None = None,
        scheduled_for: datetime | None = None,
        attempt: int = 1,
        not_before: datetime | None = None,
        rerun_of: JobRun | None = None,
        conflict: str = "skip",
    ) -> JobRun | None:
        """Add a queued run after applying the concurrency policy (caller commits).

        ``conflict``: with policy forbid and an active run, ``raise`` RunConflict or ``skip``
        (return None, audited). Policy replace ends the active runs ("replaced by run N").
        """
        active = await self._active_runs(s, job.id) if trigger != "retry" else []
        number = job.next_run_number
        if active and job.concurrency == "forbid":
            if conflict == "raise":
                first = active[0]
                raise RunConflict(
                    f"job {job.name} already has run {first.number} {first.state} and its"
                    " concurrency policy is forbid"
                )
            audit.record(
                s,
                actor=SYSTEM_ACTOR,
                action="job.run.skip",
                object_type="job",
                object_id=f"{project.name}/{job.name}",
                detail={
                    "trigger": trigger,
                    "scheduled_for": scheduled_for and scheduled_for.isoformat(),
                    "reason": f"run {active[0].number} is {active[0].state} (concurrency forbid)",
                },
            )
            self.log.info(
                "Job %s/%s: %s trigger skipped, run %s is %s (concurrency forbid)",
                project.name,
                job.name,
                trigger,
                active[0].number,
                active[0].state,
            )
            return None
        job.next_run_number = number + 1
        now = self.now()
        run = JobRun(
            job_id=job.id,
            project_id=project.id,
            number=number,
            state="queued",
            trigger=trigger,
            triggered_by=user if trigger in ("user", "rerun") else None,
            parent_run_id=parent_run_id,
            scheduled_for=scheduled_for,
            attempt=attempt,
            not_before=not_before,
            rerun_of_id=rerun_of.id if rerun_of is not None else None,
            code_hash=rerun_of.code_hash if rerun_of is not None else None,
            message="",
            queue_reason="",
            queued_at=now,
        )
        s.add(run)
        await s.flush()
        detail = {"trigger": trigger, "attempt": attempt}
        if scheduled_for:
            detail["scheduled_for"] = scheduled_for.isoformat()
        if rerun_of is not None:
            detail["rerun_of"] = rerun_of.number
        self._audit(s, user, "job.run.queue", project, job, run, **detail)
        if job.concurrency == "replace":
            for other in active:
                if await self._end(s, other, job, project, "stopped", f"replaced by run {number}"):
                    self._killing[other.id] = job.id
                    self._spawn(self._kill_then_after_end(other))
                else:
                    self._spawn(self._after_end(other.id))
        return run

    async def _end(
        self,
        s,
        run: JobRun,
        job: Job,
        project: Project,
        state: str,
        message: str,
        *,
        exit_code: int | None = None,
        finished_at: datetime | None = None,
        actor: str | None = None,
        retry: bool = True,
    ) -> bool:
        """Record the end of a run, queue its retry or dependent runs (caller commits).

        Returns True when the run's processes still have to be killed.
        """
        was_running = run.state == "running"
        run.state = state
        run.message = message
        run.queue_reason = ""
        run.exit_code = exit_code
        run.finished_at = finished_at or self.now()
        self._audit(
            s, actor, f"job.run.{state}", project, job, run, message=message, exit_code=exit_code
        )
        self.log.info("Job %s/%s run %s %s: %s", project.name, job.name, run.number, state, message)
        replaced = message.startswith("replaced by run ")
        if (
            retry
            and not replaced
            and state in (job.retry_on or [])
            and run.attempt <= job.retry_max
        ):
            rerun_of = await s.get(JobRun, run.rerun_of_id) if run.rerun_of_id else None
            await self._queue_run(
                s,
                job,
                project,
                trigger="retry",
                parent_run_id=run.id,
                attempt=run.attempt + 1,
                not_before=run.finished_at + timedelta(seconds=job.retry_delay_seconds),
                rerun_of=rerun_of,
            )
        if state == "succeeded":
            children = (
                await s.scalars(
                    select(Job)
                    .where(Job.parent_id == job.id, Job.active.is_(True))
                    .order_by(Job.id)
                    .with_for_update()
                )
            ).all()
            for child in children:
                await self._queue_run(s, child, project, trigger="parent", parent_run_id=run.id)
        return was_running and run.workload is not None

    # ---- ending runs: kill, collect outputs, notify

    async def _kill(self, run: JobRun) -> None:
        """Stop the run's workload (whole process tree) and record its exit code."""
        self._killing[run.id] = run.job_id
        try:
            try:
                status = await self.runtime.stop(run.workload, grace=self.stop_grace)
            except WorkloadNotFound:
                return
            if status.exit_code is not None:
                async with self.db.session() as s:
                    stored = await s.get(JobRun, run.id)
                    if stored is not None and stored.exit_code is None:
                        stored.exit_code = status.exit_code
                        await s.commit()
                run.exit_code = status.exit_code
        finally:
            self._killing.pop(run.id, None)
            self.wake()

    async def _kill_then_after_end(self, run: JobRun) -> None:
        await self._kill(run)
        await self._after_end(run.id)

    async def _after_end(self, run_id: int, copy_log: bool = True) -> None:
        """Keep the log with the outputs, clean up, revoke the token, prune, notify."""
        async with self.db.session() as s:
            row = (
                await s.execute(
                    select(JobRun, Job, Project)
                    .join(Job, Job.id == JobRun.job_id)
                    .join(Project, Project.id == JobRun.project_id)
                    .where(JobRun.id == run_id)
                )
            ).first()
        if row is None:
            return
        run, job, project = row
        if copy_log and run.workload and run.output_dir:
            await self._copy_log(run)
        await self._run(shutil.rmtree, self._workdir(run.id), True)
        await self._revoke_token(run.id)
        await self._prune_outputs(job)
        if run.state in (job.notify or {}).get("on", []) and (job.notify or {}).get("recipients"):
            await self._notify(run, job, project)

    def _outputs(self, run: JobRun) -> Path | None:
        """The run's output directory relative to project_root. The run can change what is in
        it, so the engine reads and writes there with `confine`, following no link."""
        if not run.output_dir:
            return None
        try:
            return confine.beneath(self.project_root, run.output_dir)
        except confine.PathEscape:
            return None

    async def _copy_log(self, run: JobRun) -> None:
        outputs = self._outputs(run)
        if outputs is None:
            return
        lines = []
        with contextlib.suppress(WorkloadNotFound):
            async for line in self.runtime.logs(run.workload):
                lines.append(line)
        data = ("\n".join(lines) + ("\n" if lines else "")).encode()
        try:  # a new file renamed over output.log: a link the run left there is replaced
            await self._run(confine.replace_file, self.project_root, outputs / "output.log", data)
        except FileNotFoundError:  # the outputs are gone
            pass
        except (OSError, confine.PathEscape) as e:
            self.log.warning("The log of run %s is not kept with its outputs: %s", run.id, e)

    async def _prune_outputs(self, job: Job) -> None:
        if self.output_retention <= 0:
            return
        async with self.db.session() as s:
            old = (
                await s.scalars(
                    select(JobRun)
                    .where(
                        JobRun.job_id == job.id,
                        JobRun.state.in_(END_STATES),
                        JobRun.output_dir.is_not(None),
                    )
                    .order_by(JobRun.number.desc())
                    .offset(self.output_retention)
                )
            ).all()
            if not old:
                return
            for run in old:
                if (outputs := self._outputs(run)) is not None:
                    with contextlib.suppress(OSError, confine.PathEscape):
                        await self._run(confine.remove_beneath, self.project_root, outputs, True)
                if run.workload:
                    await self.runtime.remove(run.workload)
                run.output_dir = None
            await s.commit()

    async def _notify(self, run: JobRun, job: Job, project: Project) -> None:
        settings = job.notify or {}
        limit = self.notifier.max_attachment_bytes
        attachments = []
        output = self._outputs(run)
        if output is not None and settings.get("attach_notebook") and job.target.endswith(".ipynb"):
            root, notebook = self.project_root, output / "output.ipynb"
            data = await self._run(_read_tail, root, notebook, limit + 1)
            if 0 < len(data) <= limit:
                attachments.append(("output.ipynb", data, "application/x-ipynb+json"))
            elif len(data) > limit:
                self.log.info("Notebook of %s run %s too large to attach", job.name, run.number)
        if output is not None and settings.get("attach_log"):
            data = await self._run(_read_tail, self.project_root, output / "output.log", limit)
            attachments.append(("output.log", data, "text/plain"))
        base = f"{self.api_url}/projects/{project.name}/jobs/{job.name}/runs/{run.number}"
        links = {"Run": base, "Log": base + "/logs"} if self.api_url else {}
        notice = RunNotice(
            project=project.name,
            job=job.name,
            run=run.number,
            state=run.state,
            message=run.message,
            trigger=run.trigger,
            attempt=run.attempt,
            queued_at=run.queued_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            recipients=list(settings.get("recipients", [])),
            links=links,
            attachments=attachments,
        )
        try:
            await self.notifier.send(notice)
        except Exception:
            self.log.exception("Notifier failed for %s run %s", job.name, run.number)

    # ---- run tokens

    async def _mint_token(self, run: JobRun, job: Job) -> str | None:
        if self.hub is None or not getattr(self.hub, "api_url", ""):
            if not self._warned_no_hub:
                self.log.warning("No hub API available: job runs get no WORKBENCH_TOKEN")
                self._warned_no_hub = True
            return None
        lifetime = self.token_lifetime
        if job.timeout_seconds:
            lifetime = int(job.timeout_seconds + self.stop_grace + 60)
        try:
            async with asyncio.timeout(10):
                model = await self.hub.create_token(
                    job.created_by,
                    expires_in=lifetime,
                    scopes=RUN_TOKEN_SCOPES,
                    note=f"workbench job {job.name} run {run.number}",
                )
        except Exception as e:  # the hub is down or refuses: run without a token
            self.log.warning(
                "Could not get a hub token for %s (job %s run %s): %s; running without",
                job.created_by,
                job.name,
                run.number,
                e,
            )
            return None
        if model.get("id"):
            self._tokens[run.id] = (job.created_by, str(model["id"]))
        return model.get("token")

    async def _revoke_token(self, run_id: int) -> None:
        entry = self._tokens.pop(run_id, None)
        if entry is None or self.hub is None:
            return
        try:
            await self.hub.revoke_token(*entry)
        except Exception as e:
            self.log.warning("Could not revoke the token of run %s: %s", run_id, e)

    # ---- next ticks

    async def _update_next_ticks(self, now: datetime) -> None:
        changed, self._changed = self._changed, set()
        async with self.db.session() as s:
            jobs = (
                await s.scalars(
                    select(Job).where(
                        or_(
                            Job.id.in_(changed),
                            (Job.schedule == "cron")
                            & Job.active.is_(True)
                            & Job.next_tick.is_(None),
                            Job.next_tick.is_not(None)
                            & ((Job.schedule != "cron") | Job.active.is_(False)),
                        )
                    )
                )
            ).all()
            dirty = False
            for job in jobs:
                wanted = None
                if job.schedule == "cron" and job.active and job.cron:
                    try:
                        wanted = cron.next_tick(job.cron, job.timezone or "UTC", now)
                    except cron.InvalidCron as e:
                        self.log.error("Job %s: %s; not scheduled", job.name, e)
                if wanted != job.next_tick:
                    job.next_tick = wanted
                    dirty = True
            if dirty:
                await s.commit()

    # ---- reconcile with the runtime

    def _watch(self, run: JobRun) -> None:
        if run.id in self._watchers or not run.workload:
            return

        async def watch(run_id: int, workload: str) -> None:
            try:
                await self.runtime.wait(workload)
            except WorkloadNotFound:
                pass
            finally:
                self._watchers.pop(run_id, None)
                self.wake()

        self._watchers[run.id] = asyncio.create_task(watch(run.id, run.workload))

    async def _running(self) -> list[tuple[JobRun, Job, Project]]:
        async with self.db.session() as s:
            rows = await s.execute(
                select(JobRun, Job, Project)
                .join(Job, Job.id == JobRun.job_id)
                .join(Project, Project.id == JobRun.project_id)
                .where(JobRun.state == "running")
                .order_by(JobRun.id)
            )
            return [tuple(row) for row in rows]

    async def _outcome(self, run: JobRun, status) -> tuple[str, str, int | None]:
        """End state, message and exit code of a finished workload."""
        if status.phase == "succeeded":
            return "succeeded", "exited with code 0", status.exit_code
        if status.phase == "stopped":
            return "stopped", "stopped outside the workbench", status.exit_code
        message = status.message or f"exited with code {status.exit_code}"
        if status.phase == "failed" and status.exit_code is not None:
            tail = b""
            with contextlib.suppress(WorkloadNotFound):
                tail = await self._log_tail(run.workload)
            last = _last_line(tail)
            if last:
                message = f"{message}: {last}"
        return "failed", message, status.exit_code

    async def _log_tail(self, workload: str) -> bytes:
        lines: list[str] = []
        async for line in self.runtime.logs(workload):
            lines.append(line)
            del lines[:-20]
        return "\n".join(lines).encode()

    async def _finish(self, run: JobRun, state: str, message: str, **kwargs) -> bool:
        """End one running run in its own transaction; True if it must still be killed."""
        async with self.db.session() as s:
            stored = await s.get(JobRun, run.id, with_for_update=True)
            if stored is None or stored.state != "running":
                return False
            job, project = await self._job(s, stored.job_id)
            kill = await self._end(s, stored, job, project, state, message, **kwargs)
            await s.commit()
        return kill

    async def _reconcile(self, now: datetime) -> None:
        for run, job, _project in await self._running():
            try:
                await self._reconcile_run(run, job, now)
            except Exception:  # one broken run must not stop the others being watched
                self.log.exception("Could not reconcile job run %s", run.id)

    async def _reconcile_run(self, run: JobRun, job: Job, now: datetime) -> None:
        status = await self.runtime.status(run.workload) if run.workload else None
        if status is None:
            await self._finish(run, "failed", "the run's workload disappeared from the runtime")
            self._spawn(self._after_end(run.id))
            return
        if status.phase in ("pending", "running"):
            self._watch(run)
            deadline = (
                run.started_at + timedelta(seconds=job.timeout_seconds)
                if job.timeout_seconds and run.started_at
                else None
            )
            if deadline is not None and now >= deadline:
                message = f"timed out after {job.timeout_seconds} s"
                if await self._finish(run, "timed_out", message):
                    self._killing[run.id] = run.job_id
                    self._spawn(self._kill_then_after_end(run))
            return
        state, message, code = await self._outcome(run, status)
        if run.output_dir:  # the log is with the outputs once the run shows as ended
            await self._copy_log(run)
        await self._finish(run, state, message, exit_code=code)
        self._spawn(self._after_end(run.id, copy_log=False))

    async def _requeue_unstarted(self, run: JobRun) -> None:
        async with self.db.session() as s:
            stored = await s.get(JobRun, run.id, with_for_update=True)
            stored.state, stored.started_at, stored.workload = "queued", None, None
            stored.queue_reason = RESTART_UNSTARTED
            await s.commit()
        self.log.warning("Job run %s had not started when the control plane died: queued", run.id)

    async def _reconcile_after_restart(self) -> None:
        running = await self._running()
        for run, job, project in running:
            status = await self.runtime.status(run.workload) if run.workload else None
            if status is None:
                # marked running, but the control plane died before the runtime started it:
                # nothing ran, so it is queued again
                await self._requeue_unstarted(run)
            elif status.phase == "lost":
                await self._finish(run, "failed", RESTART_GONE, finished_at=self.now())
                self._spawn(self._after_end(run.id))
            elif status.phase in ("pending", "running"):
                self.log.info(
                    "Adopted job %s/%s run %s (%s)",
                    project.name,
                    job.name,
                    run.number,
                    run.workload,
                )
                self._watch(run)
            else:
                state, message, code = await self._outcome(run, status)
                await self._finish(run, state, message, exit_code=code, finished_at=status.finished)
                self._spawn(self._after_end(run.id))
        # a workload whose run already ended (the control plane died while killing it)
        running_workloads = {run.workload for run, _, _ in running}
        for status in await self.runtime.list({KIND_LABEL: "job-run"}):
            if (
                execution.RUN_LABEL in status.labels
                and status.phase in ("pending", "running")
                and status.name not in running_workloads
            ):
                async with self.db.session() as s:
                    state = await s.scalar(
                        select(JobRun.state).where(JobRun.workload == status.name)
                    )
                if state != "running":
                    self.log.warning("Stopping workload %s of an ended run", status.name)
                    self._spawn(self.runtime.stop(status.name, grace=self.stop_grace))

    # ---- cron

    async def _fire_cron(self, now: datetime) -> None:
        async with self.db.session() as s:
            job_ids = (
                await s.scalars(
                    select(Job.id).where(
                        Job.schedule == "cron", Job.active.is_(True), Job.next_tick <= now
                    )
                )
            ).all()
        for job_id in job_ids:
            try:
                await self._fire_job(job_id, now)
            except Exception:  # one broken job must not stop the others' schedules
                self.log.exception("Could not fire the cron tick of job %s", job_id)

    def _due_ticks(self, job: Job, now: datetime) -> tuple[list[datetime], list[datetime]]:
        """(ticks to run, ticks missed) among those in [next_tick, now]."""
        due = [job.next_tick]
        for instant in cron.ticks(job.cron, job.timezone or "UTC", job.next_tick, now):
            due.append(instant)
            del due[: -max(self.max_missed_runs, 1)]
        if self.missed_ticks == "all":
            return due, []
        latest = due[-1]
        if self.missed_ticks == "skip" and (now - latest).total_seconds() > self.missed_tick_grace:
            return [], due
        return [latest], due[:-1]

    async def _fire_job(self, job_id: int, now: datetime) -> None:
        following = None
        try:
            async with self.db.session() as s:
                job, project = await self._job(s, job_id)
                if job.next_tick is None or job.next_tick > now or not job.active:
                    return
                try:
                    run_ticks, missed = self._due_ticks(job, now)
                    following = cron.next_tick(job.cron, job.timezone or "UTC", now)
                except cron.InvalidCron as e:
                    self.log.error("Job %s: %s; not scheduled", job.name, e)
                    job.next_tick = None
                    await s.commit()
                    return
                if missed:
                    audit.record(
                        s,
                        actor=SYSTEM_ACTOR,
                        action="job.tick.missed",
                        object_type="job",
                        object_id=f"{project.name}/{job.name}",
                        detail={
                            "count": len(missed),
                            "first": missed[0].isoformat(),
                            "last": missed[-1].isoformat(),
                            "policy": self.missed_ticks,
                        },
                    )
                for instant in run_ticks:
                    await self._queue_run(
                        s, job, project, trigger="schedule", scheduled_for=instant
                    )
                job.next_tick = following
                await s.commit()
                return
        except IntegrityError:
            # the tick already has its run: a previous control plane died after running it
            # but before next_tick was advanced (or another one runs on this database)
            self.log.warning("Job %s: tick already has a run; advancing to %s", job_id, following)
        async with self.db.session() as s:
            job = await s.get(Job, job_id)
            if job is not None and following is not None:
                job.next_tick = following
                await s.commit()

    # ---- starting runs

    async def _start_queued(self, now: datetime) -> None:
        async with self.db.session() as s:
            queued = (
                await s.execute(
                    select(JobRun, Job, Project)
                    .join(Job, Job.id == JobRun.job_id)
                    .join(Project, Project.id == JobRun.project_id)
                    .where(
                        JobRun.state == "queued",
                        or_(JobRun.not_before.is_(None), JobRun.not_before <= now),
                    )
                    .order_by(JobRun.queued_at, JobRun.id)
                )
            ).all()
            if not queued:
                return
            running = (
                await s.execute(
                    select(JobRun.job_id, JobRun.project_id, Job.created_by)
                    .join(Job, Job.id == JobRun.job_id)
                    .where(JobRun.state == "running")
                )
            ).all()
        by_job = Counter(row[0] for row in running) + Counter(self._killing.values())
        by_project = Counter(row[1] for row in running)
        by_user = Counter(row[2] for row in running)
        reasons: dict[int, str] = {}
        for run, job, project in queued:
            reason = ""
            if job.concurrency != "allow" and by_job[job.id]:
                reason = f"waiting: another run of job {job.name} is still ending"
            elif self.max_runs_per_user and by_user[job.created_by] >= self.max_runs_per_user:
                reason = (
                    f"waiting: user {job.created_by} has {by_user[job.created_by]} of"
                    f" {self.max_runs_per_user} concurrent runs"
                )
            elif self.max_runs_per_project and by_project[project.id] >= self.max_runs_per_project:
                reason = (
                    f"waiting: project {project.name} has {by_project[project.id]} of"
                    f" {self.max_runs_per_project} concurrent runs"
                )
            if reason:
                if run.queue_reason != reason:
                    reasons[run.id] = reason
                continue
            if await self._start_run(run, job, project, now):
                by_job[job.id] += 1
                by_project[project.id] += 1
                by_user[job.created_by] += 1
        if reasons:  # one commit for every waiting run
            async with self.db.session() as s:
                for run_id, reason in reasons.items():
                    stored = await s.get(JobRun, run_id)
                    if stored is not None and stored.state == "queued":
                        stored.queue_reason = reason
                        stored.message = reason
                await s.commit()

    def _workdir(self, run_id: int) -> Path:
        return Path(self.snapshot_dir, "work", str(run_id))

    def _volumes(self, project: Project, working_dir: str) -> list[VolumeMount]:
        """A run's volumes: its project and, for a rerun, the snapshot it works in."""
        project_dir = str(self._project_dir(project))
        volumes = [VolumeMount(source=project_dir, target=project_dir)]
        if working_dir != project_dir:
            volumes.append(VolumeMount(source=working_dir, target=working_dir))
        return volumes

    def _prepare(self, run: JobRun, job: Job, project: Project) -> tuple[str, str, str] | str:
        """Blocking: (working dir, code hash, output dir) for a run, or why it cannot start."""
        project_dir = self._project_dir(project)
        if not project_dir.is_dir():
            return f"the directory of project {project.name} no longer exists"
        if run.rerun_of_id is not None:
            try:
                files = self.snapshots.files(run.code_hash)
            except SnapshotMissing:
                return "the code snapshot to rerun is gone"
            if job.target not in files:
                return f"target file {job.target} is not in the code snapshot"
            workdir = self._workdir(run.id)
            shutil.rmtree(workdir, ignore_errors=True)
            self.snapshots.materialize(run.code_hash, workdir, project_dir)
            code_hash = run.code_hash
        else:
            target = project_dir / job.target
            if not target.is_file():
                return f"target file {job.target} no longer exists in the project"
            workdir = project_dir
            code_hash = self.snapshots.snapshot(project_dir)
        outputs = Path(project.name, ".workbench", "jobs", job.name, "runs", str(run.number))
        try:  # users can make any of these a link: none is followed
            confine.remove_beneath(self.project_root, outputs)
            confine.make_dirs(self.project_root, outputs)
        except confine.PathEscape as e:
            return f"cannot make the run's output directory: {e}"
        return str(workdir), code_hash, str(Path(self.project_root, outputs))

    def _profile(self, name: str) -> dict | str | None:
        if not self.resource_profiles:
            return None
        for profile in self.resource_profiles:
            if profile["name"] == name:
                return profile
        return f"resource profile {name!r} no longer exists"

    async def _fail_start(self, run: JobRun, message: str) -> None:
        async with self.db.session() as s:
            stored = await s.get(JobRun, run.id, with_for_update=True)
            if stored is None or stored.state != "queued":
                return
            job, project = await self._job(s, stored.job_id)
            await self._end(s, stored, job, project, "failed", message, retry=False)
            await s.commit()
        self._spawn(self._after_end(run.id))

    async def _start_run(self, run: JobRun, job: Job, project: Project, now: datetime) -> bool:
        """Start one queued run; False if it ended instead (its reason recorded)."""
        try:
            prepared = await self._run(self._prepare, run, job, project)
        except OSError as e:
            prepared = f"could not prepare the run: {e}"
        profile = self._profile(job.profile)
        if isinstance(prepared, str) or isinstance(profile, str):
            await self._fail_start(run, prepared if isinstance(prepared, str) else profile)
            return False
        working_dir, code_hash, output_dir = prepared
        name = execution.workload_name(run.id)
        async with self.db.session() as s:
            stored = await s.get(JobRun, run.id, with_for_update=True)
            if stored is None or stored.state != "queued":
                return False
            stored.state = "running"
            stored.started_at = self.now()
            stored.workload = name
            stored.code_hash = code_hash
            stored.output_dir = output_dir
            stored.queue_reason = ""
            stored.message = ""
            self._audit(s, None, "job.run.start", project, job, stored, code_hash=code_hash)
            await s.commit()
        token = await self._mint_token(stored, job)
        env = execution.run_env(
            job.env or {},
            project=project.name,
            job=job.name,
            run_number=run.number,
            output_dir=output_dir,
            api_url=self.api_url,
            token=token,
        )
        try:
            spec = execution.make_run_spec(
                name=name,
                run_id=run.id,
                user=job.created_by,
                project=project.name,
                job=job.name,
                command=execution.run_command(
                    job.target,
                    list(job.arguments or []),
                    dict(job.parameters or {}),
                    output_dir,
                    python=self.python,
                    kernel=self.kernel_name,
                ),
                working_dir=working_dir,
                env=env,
                volumes=self._volumes(project, working_dir),
                resources=execution.profile_resources(profile),
                timeout_seconds=job.timeout_seconds,
            )
            status = await self.runtime.start(spec)
        except ValueError as e:
            await self._finish(stored, "failed", f"could not start: {e}", retry=False)
            self._spawn(self._after_end(run.id))
            return False
        self.log.info(
            "Started job %s/%s run %s as %s (%s)",
            project.name,
            job.name,
            run.number,
            name,
            status.phase,
        )
        self._watch(stored)
        return True
