"""Jobs of a project: list, create, read, update, delete, pause and resume (docs/jobs.md)."""

import asyncio
import shutil
from pathlib import Path

from sqlalchemy import delete, func, select

from workbench_hub import audit
from workbench_hub.handlers.base import APIError, APIHandler, Field
from workbench_hub.jobs import cron, validation
from workbench_hub.jobs.validation import JobInvalid
from workbench_hub.orm import Job, JobRun, Project, utcnow
from workbench_hub.profiles import profiles_for
from workbench_hub.roles import Role

ACTIVE_STATES = ("queued", "running")
#: columns the API shows as they are stored
_PLAIN_FIELDS = (
    "name",
    "target",
    "arguments",
    "parameters",
    "env",
    "profile",
    "schedule",
    "cron",
    "timezone",
    "active",
    "timeout_seconds",
    "retry_max",
    "retry_delay_seconds",
    "retry_on",
    "concurrency",
    "notify",
)
#: fields whose change moves the next cron tick
_SCHEDULE_FIELDS = {"schedule", "cron", "timezone", "active"}
_OPTIONAL_TEXT = (str, type(None))
#: the fields of a job's body (`validation.merge` checks their values)
CREATE_FIELDS = {
    "name": str,
    "target": Field(str, min_length=1, max_length=1024),
    "arguments": list,
    "parameters": dict,
    "env": dict,
    "profile": Field(str, max_length=63),
    "schedule": str,
    "cron": Field(_OPTIONAL_TEXT, max_length=255),
    "timezone": Field(_OPTIONAL_TEXT, max_length=64),
    # a job of the project, or `project/job`
    "parent": Field(_OPTIONAL_TEXT, max_length=127),
    "active": bool,
    "timeout_seconds": (int, type(None)),
    "retry_max": int,
    "retry_delay_seconds": int,
    "retry_on": list,
    "concurrency": str,
    "notify": dict,
}
UPDATE_FIELDS = {k: v for k, v in CREATE_FIELDS.items() if k != "name"}


def jobs_dir(project_dir: Path, job: str) -> Path:
    """Where the runs of `job` keep their outputs (docs/jobs.md)."""
    return project_dir / ".workbench" / "jobs" / job


class JobsAPIHandler(APIHandler):
    """Shared lookups and JSON of the job and run handlers."""

    @property
    def engine(self):
        """The job engine, or 503 when the workbench runs without a runtime."""
        engine = self.settings.get("jobs")
        if engine is None:
            raise APIError(503, "jobs are disabled: the workbench has no runtime to run them")
        return engine

    def job_changed(self, job_id: int) -> None:
        engine = self.settings.get("jobs")
        if engine is not None:
            engine.job_changed(job_id)

    async def job_for(
        self, session, project_name: str, job_name: str, need: Role, action: str
    ) -> tuple[Project, Job, Role]:
        """Project, job and the caller's role: 404 if hidden or missing, 403 if too low."""
        return await self.project_item(session, project_name, Job, job_name, need, action)

    async def job_names(self, session, project_id: int) -> dict[int, str]:
        rows = await session.execute(select(Job.id, Job.name).where(Job.project_id == project_id))
        return dict(rows.all())

    async def jobs_json(self, session, project: Project, jobs: list[Job]) -> list[dict]:
        names = await self.job_names(session, project.id)
        latest = (
            select(JobRun.job_id, func.max(JobRun.number).label("number"))
            .where(JobRun.job_id.in_([j.id for j in jobs]))
            .group_by(JobRun.job_id)
            .subquery()
        )
        last_runs = (
            await session.scalars(
                select(JobRun).join(
                    latest,
                    (JobRun.job_id == latest.c.job_id) & (JobRun.number == latest.c.number),
                )
            )
        ).all()
        runs = dict(
            zip(
                [r.job_id for r in last_runs],
                await self.runs_json(session, project, last_runs),
                strict=True,
            )
        )
        return [job_json(job, project.name, names, runs.get(job.id)) for job in jobs]

    async def runs_json(self, session, project: Project, runs) -> list[dict]:
        runs = list(runs)
        names = await self.job_names(session, project.id)
        parent_ids = {r.parent_run_id for r in runs if r.parent_run_id is not None}
        parents = {}
        if parent_ids:
            rows = await session.execute(
                select(JobRun.id, Job.name, JobRun.number)
                .join(Job, Job.id == JobRun.job_id)
                .where(JobRun.id.in_(parent_ids))
            )
            parents = {rid: {"job": job, "number": number} for rid, job, number in rows.all()}
        return [run_json(r, project.name, names, parents.get(r.parent_run_id)) for r in runs]

    def audit_job(self, session, action: str, project: str, job: str, detail=None):
        audit.record(
            session,
            actor=self.identity.name,
            action=action,
            object_type="job",
            object_id=f"{project}/{job}",
            detail=detail,
        )

    async def run_blocking(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    async def _check_files(self, project: str, values: dict, check_parameters: bool) -> None:
        parameters = values["parameters"] if check_parameters else None
        try:
            await self.run_blocking(
                validation.check_files,
                self.service.project_path(project),
                values["target"],
                parameters,
            )
        except JobInvalid as e:
            raise _invalid(e) from None

    @staticmethod
    def _parent_id(values: dict, names: dict[int, str], project: str, parents) -> int | None:
        """The id of the parent job named in `values`; checks it exists (and cycles)."""
        if values["parent"] is None:
            return None
        ids = {n: i for i, n in names.items()}
        if values["parent"] not in ids:
            raise APIError(
                400,
                f"parent must be a job of project {project}; no job {values['parent']!r}",
                field="parent",
            )
        if parents is not None:
            try:
                validation.check_cycle(values["name"], values["parent"], parents)
            except JobInvalid as e:
                raise _invalid(e) from None
        return ids[values["parent"]]


def _iso(value) -> str | None:
    return None if value is None else value.isoformat()


def job_json(job: Job, project: str, names: dict[int, str], last_run: dict | None) -> dict:
    data = {field: getattr(job, field) for field in _PLAIN_FIELDS}
    data.update(
        project=project,
        parent=names.get(job.parent_id) if job.parent_id is not None else None,
        created_by=job.created_by,
        created=job.created.isoformat(),
        updated=job.updated.isoformat(),
        next_run=_iso(job.next_tick) if job.schedule == "cron" and job.active else None,
        last_run=last_run,
    )
    return data


def run_json(run: JobRun, project: str, names: dict[int, str], parent_run: dict | None) -> dict:
    return {
        "job": names.get(run.job_id),
        "project": project,
        "number": run.number,
        "state": run.state,
        "trigger": run.trigger,
        "triggered_by": run.triggered_by,
        "parent_run": parent_run,
        "scheduled_for": _iso(run.scheduled_for),
        "attempt": run.attempt,
        "exit_code": run.exit_code,
        "message": run.message,
        "queue_reason": run.queue_reason,
        "code_hash": run.code_hash,
        "queued_at": _iso(run.queued_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
    }


def _current_values(job: Job, names: dict[int, str]) -> dict:
    values = {field: getattr(job, field) for field in _PLAIN_FIELDS}
    values["parent"] = names.get(job.parent_id) if job.parent_id is not None else None
    return values


def _invalid(e: JobInvalid) -> APIError:
    return APIError(400, e.message, field=e.field)


class JobListHandler(JobsAPIHandler):
    async def get(self, name):
        async with self.db.session() as session:
            project, _ = await self.project_for(session, name, Role.VIEWER, "viewing")
            page = self.page()
            jobs = await page.scalars(
                session, select(Job).where(Job.project_id == project.id).order_by(Job.name)
            )
            result = await self.jobs_json(session, project, jobs)
        self.write_page("jobs", result, page)

    async def post(self, name):
        async with self.db.session() as session:
            project, _ = await self.project_for(session, name, Role.CONTRIBUTOR, "creating jobs")
        body = self.json_body(CREATE_FIELDS, required=("name", "target"))
        try:
            values = validation.merge(body, None, name)
            values["profile"] = validation.profile(
                values["profile"],
                profiles_for(self.service.resource_profiles, set(self.identity.groups)),
            )
        except JobInvalid as e:
            raise _invalid(e) from None
        await self._check_files(name, values, check_parameters=True)
        async with self.db.session() as session:
            project = await session.get(Project, project.id)
            if project is None:
                raise APIError(404, f"no project {name!r}")
            names = await self.job_names(session, project.id)
            if values["name"] in names.values():
                raise APIError(
                    409, f"project {name!r} already has a job {values['name']!r}", field="name"
                )
            parent_id = self._parent_id(values, names, name, parents=None)
            now = utcnow()
            job = Job(
                project_id=project.id,
                **{k: v for k, v in values.items() if k != "parent"},
                parent_id=parent_id,
                created_by=self.identity.name,
                created=now,
                updated=now,
                next_tick=_next_tick(values, now),
            )
            session.add(job)
            self.audit_job(
                session,
                "job.created",
                name,
                values["name"],
                {"target": values["target"], "schedule": values["schedule"]},
            )
            await session.commit()
            [result] = await self.jobs_json(session, project, [job])
        self.job_changed(job.id)
        self.set_header("Location", self.request.path.rstrip("/") + "/" + job.name)
        self.write_json(result, status=201)


def _next_tick(values: dict, now):
    if values["schedule"] != "cron" or not values["active"]:
        return None
    return cron.next_tick(values["cron"], values["timezone"], now)


class JobHandler(JobsAPIHandler):
    async def get(self, name, job):
        async with self.db.session() as session:
            project, found, _ = await self.job_for(session, name, job, Role.VIEWER, "viewing")
            [result] = await self.jobs_json(session, project, [found])
        self.write_json(result)

    async def patch(self, name, job):
        async with self.db.session() as session:
            _, found, _ = await self.job_for(session, name, job, Role.CONTRIBUTOR, "editing jobs")
        body = self.json_body({**UPDATE_FIELDS, "name": str})
        if "name" in body:
            raise APIError(400, "a job cannot be renamed", field="name")
        async with self.db.session() as session:
            project, found, _ = await self.job_for(
                session, name, job, Role.CONTRIBUTOR, "editing jobs"
            )
            names = await self.job_names(session, project.id)
            current = _current_values(found, names)
            try:
                values = validation.merge(body, current, name)
                if "profile" in body:
                    values["profile"] = validation.profile(
                        values["profile"],
                        profiles_for(
                            self.service.resource_profiles, await self._creator_groups(found)
                        ),
                    )
            except JobInvalid as e:
                raise _invalid(e) from None
            if "target" in body or "parameters" in body:
                await self._check_files(name, values, check_parameters=True)
            changed = sorted(k for k in values if values[k] != current[k])
            if "parent" in changed:
                rows = await session.execute(
                    select(Job.id, Job.parent_id).where(Job.project_id == project.id)
                )
                parents = {names[i]: names.get(p) for i, p in rows.all()}
                found.parent_id = self._parent_id(values, names, name, parents)
            for key in changed:
                if key != "parent":
                    setattr(found, key, values[key])
            if changed:
                now = utcnow()
                found.updated = now
                if _SCHEDULE_FIELDS & set(changed):
                    found.next_tick = _next_tick(values, now)
                self.audit_job(session, "job.updated", name, job, {"changed": changed})
            await session.commit()
            [result] = await self.jobs_json(session, project, [found])
        if changed:
            self.job_changed(found.id)
        self.write_json(result)

    async def _creator_groups(self, job: Job) -> set[str]:
        if job.created_by == self.identity.name:
            return set(self.identity.groups)
        return set(await self.hub.user_groups(job.created_by) or ())

    async def delete(self, name, job):
        async with self.db.session() as session:
            project, found, _ = await self.job_for(
                session, name, job, Role.CONTRIBUTOR, "deleting jobs"
            )
            children = (
                await session.scalars(
                    select(Job.name).where(Job.parent_id == found.id).order_by(Job.name)
                )
            ).all()
            if children:
                raise APIError(
                    409,
                    f"job {job!r} is the parent of {', '.join(children)}: delete or change those"
                    " first",
                )
            active = await session.scalar(
                select(func.count(JobRun.id)).where(
                    JobRun.job_id == found.id, JobRun.state.in_(ACTIVE_STATES)
                )
            )
            if active:
                raise APIError(
                    409, f"job {job!r} has {active} queued or running run(s): stop them first"
                )
            await session.execute(delete(Job).where(Job.id == found.id))
            self.audit_job(session, "job.deleted", name, job, {"target": found.target})
            await session.commit()
        self.job_changed(found.id)
        outputs = jobs_dir(self.service.project_path(project.name), job)
        await self.run_blocking(lambda: shutil.rmtree(outputs, ignore_errors=True))
        self.set_status(204)
        self.finish()


class _PauseResumeHandler(JobsAPIHandler):
    async def set_active(self, name: str, job: str, active: bool) -> None:
        self.json_body({})
        action = "resuming" if active else "pausing"
        async with self.db.session() as session:
            project, found, _ = await self.job_for(
                session, name, job, Role.CONTRIBUTOR, f"{action} jobs"
            )
            was_active = found.active
            if was_active != active:
                now = utcnow()
                found.active = active
                found.updated = now
                found.next_tick = _next_tick(_current_values(found, {}), now)
            self.audit_job(
                session,
                "job.resumed" if active else "job.paused",
                name,
                job,
                {"was_active": was_active},
            )
            await session.commit()
            [result] = await self.jobs_json(session, project, [found])
        self.job_changed(found.id)
        self.write_json(result)


class JobPauseHandler(_PauseResumeHandler):
    async def post(self, name, job):
        await self.set_active(name, job, active=False)


class JobResumeHandler(_PauseResumeHandler):
    async def post(self, name, job):
        await self.set_active(name, job, active=True)


JOB = r"projects/(?P<name>[^/]+)/jobs/(?P<job>[^/]+)"
handlers = [
    (r"projects/(?P<name>[^/]+)/jobs", JobListHandler),
    (JOB, JobHandler),
    (JOB + "/pause", JobPauseHandler),
    (JOB + "/resume", JobResumeHandler),
]
