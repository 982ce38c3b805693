"""Projects: list, create (empty, template or git clone), read, update and delete."""

from sqlalchemy import select, update

from workbench_hub import audit
from workbench_hub.handlers.base import APIError, APIHandler, Field
from workbench_hub.hubapi import HubAPIError
from workbench_hub.names import InvalidName, validate_name
from workbench_hub.orm import Job, Project, utcnow
from workbench_hub.projects import (
    ProjectFilesError,
    check_git_url,
    create_project_dir,
    list_templates,
    redact_url,
    remove_project_dir,
)
from workbench_hub.roles import VISIBILITIES, Role

#: Names being created right now in this process: a second create of one of them is a 409.
_CREATING: set[str] = set()
#: the longest hub user or group name (JupyterHub's own column)
MAX_HUB_NAME = 255


def _visibility(body: dict) -> str:
    visibility = body.get("visibility", "private")
    if visibility not in VISIBILITIES:
        raise APIError(400, f"visibility must be one of {list(VISIBILITIES)}", field="visibility")
    return visibility


class ProjectListHandler(APIHandler):
    async def get(self):
        """Pages of the cached listing: which projects a caller sees is worked out per row
        (team visibility asks the hub for groups), so this list is sliced, not LIMITed."""
        page = self.page()
        projects, _ = await self.project_listing()
        end = page.offset + page.limit + 1
        self.write_page("projects", page.cut(projects[page.offset : end]), page)

    async def post(self):
        body = self.json_body(
            {
                "name": str,
                "description": str,
                "visibility": str,
                "owner": dict,
                "template": Field(str, max_length=63),
                "git_url": Field(str, min_length=1, max_length=2048),
            },
            required=("name",),
        )
        try:
            name = validate_name(body["name"])
        except InvalidName as e:
            raise APIError(400, str(e), field="name") from None
        visibility = _visibility(body)
        owner_kind, owner_name = await self._owner(body.get("owner"), name)
        template, git_url = body.get("template", "empty"), body.get("git_url")
        if git_url is not None and "template" in body:
            raise APIError(400, "give either template or git_url, not both", field="git_url")
        if git_url is None and template not in {"empty"} | {t["name"] for t in list_templates()}:
            raise APIError(400, f"no built-in template {template!r}", field="template")
        if git_url is not None:
            try:
                check_git_url(git_url, self.service.git_url_schemes)
            except ProjectFilesError as e:
                raise APIError(e.status, e.message, field=e.field) from None
        if name in _CREATING:
            raise APIError(409, f"project {name!r} is being created", field="name")
        _CREATING.add(name)
        try:
            await self._create(body, name, visibility, owner_kind, owner_name, template, git_url)
        finally:
            _CREATING.discard(name)

    async def _create(self, body, name, visibility, owner_kind, owner_name, template, git_url):
        async with self.db.session() as session:
            if await session.scalar(select(Project.id).where(Project.name == name)):
                raise APIError(409, f"a project named {name!r} already exists", field="name")
        source = {"git_url": redact_url(git_url)} if git_url else {"template": template}
        try:
            await create_project_dir(
                self.service.project_root,
                name,
                template=template,
                git_url=git_url,
                git_schemes=self.service.git_url_schemes,
                git_timeout=self.service.git_clone_timeout,
            )
        except ProjectFilesError as e:
            await self._audit_failure(name, {**source, "error": e.message})
            raise APIError(e.status, e.message, field=e.field) from None
        try:
            async with self.db.session() as session:
                now = utcnow()
                project = Project(
                    name=name,
                    description=body.get("description", ""),
                    owner_kind=owner_kind,
                    owner_name=owner_name,
                    visibility=visibility,
                    created=now,
                    updated=now,
                )
                session.add(project)
                audit.record(
                    session,
                    actor=self.identity.name,
                    action="project.created",
                    object_type="project",
                    object_id=name,
                    detail={**source, "owner": f"{owner_kind}:{owner_name}"},
                )
                await session.commit()
            self.projects_changed()
        except BaseException:
            await remove_project_dir(self.service.project_root, name)
            raise
        role = await self.role_on_new(project)
        self.set_header("Location", self.request.path.rstrip("/") + "/" + name)
        self.write_json(self.project_json(project, role), status=201)

    async def role_on_new(self, project: Project) -> Role:
        async with self.db.session() as session:
            return await self.role_on(session, project)

    async def _audit_failure(self, name: str, detail: dict) -> None:
        async with self.db.session() as session:
            audit.record(
                session,
                actor=self.identity.name,
                action="project.created",
                object_type="project",
                object_id=name,
                outcome="failure",
                detail=detail,
            )
            await session.commit()

    async def _owner(self, owner: dict | None, project: str) -> tuple[str, str]:
        """Validated (kind, name) of the new project's owner; the caller by default."""
        if owner is None:
            return "user", self.identity.name
        unknown = sorted(set(owner) - {"kind", "name"})
        if unknown:
            raise APIError(400, f"unknown field 'owner.{unknown[0]}'", field="owner")
        kind, name = owner.get("kind"), owner.get("name")
        if kind not in ("user", "team"):
            raise APIError(400, "owner.kind must be 'user' or 'team'", field="owner")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_HUB_NAME:
            raise APIError(
                400, f"owner.name must be a string of 1 to {MAX_HUB_NAME} characters", "owner"
            )
        if kind == "user":
            if name == self.identity.name:
                return kind, name
            if not self.identity.is_admin:
                await self.audit_denied("project.created", "project", project, {"owner": name})
                raise APIError(403, "only admins may create projects for other users", "owner")
            if await self.hub.user_groups(name) is None:
                raise APIError(400, f"no hub user {name!r}", field="owner")
            return kind, name
        if not await self.hub.group_exists(name):
            raise APIError(400, f"no hub group {name!r}", field="owner")
        if not self.identity.is_admin and name not in self.identity.groups:
            await self.audit_denied("project.created", "project", project, {"owner": name})
            raise APIError(403, f"you are not a member of team {name!r}", field="owner")
        return kind, name


class ProjectHandler(APIHandler):
    async def get(self, name):
        async with self.db.session() as session:
            project, role = await self.project_for(session, name, Role.VIEWER, "viewing")
        self.write_json(self.project_json(project, role))

    async def patch(self, name):
        body = self.json_body({"description": str, "visibility": str})
        async with self.db.session() as session:
            project, role = await self.project_for(session, name, Role.ADMIN, "changing settings")
            changes = {}
            if "visibility" in body:
                changes["visibility"] = _visibility(body)
            if "description" in body:
                changes["description"] = body["description"]
            for key, value in changes.items():
                setattr(project, key, value)
            if changes:
                project.updated = utcnow()
                audit.record(
                    session,
                    actor=self.identity.name,
                    action="project.updated",
                    object_type="project",
                    object_id=name,
                    detail={"changed": sorted(changes), **changes},
                )
            await session.commit()
        self.projects_changed()
        self.write_json(self.project_json(project, role))

    async def delete(self, name):
        async with self.db.session() as session:
            project, _ = await self.project_for(session, name, Role.ADMIN, "deleting")
        if self.get_query_argument("confirm", None) != name:
            raise APIError(
                400, f"to delete project {name!r}, add ?confirm={name} to the URL", "confirm"
            )
        stopped = await self._remove_sessions(name)
        await self.revoke_project_access(name)
        await remove_project_dir(self.service.project_root, name)
        async with self.db.session() as session:
            project = await session.get(Project, project.id)
            if project is not None:
                # jobs.parent_id is ON DELETE RESTRICT, which SQLite checks row by row during
                # the cascade: unlink pipelines before the project's jobs go with it
                await session.execute(
                    update(Job).where(Job.project_id == project.id).values(parent_id=None)
                )
                await session.delete(project)
            audit.record(
                session,
                actor=self.identity.name,
                action="project.deleted",
                object_type="project",
                object_id=name,
                detail={"removed_sessions": stopped},
            )
            await session.commit()
        self.projects_changed()
        self.set_status(204)
        self.finish()

    async def _remove_sessions(self, name: str) -> list[str]:
        """Stop and delete every named server `<user>/<name>`; their full names."""
        removed = []
        try:
            for user in await self.hub.list_users(include_stopped=True):
                if name in (user.get("servers") or {}):
                    await self.hub.delete_server(user["name"], name)
                    removed.append(f"{user['name']}/{name}")
        except HubAPIError as e:
            raise APIError(
                502,
                f"could not stop the project's sessions; its files and settings are untouched: {e}",
            ) from None
        return removed


handlers = [
    (r"projects", ProjectListHandler),
    (r"projects/(?P<name>[^/]+)", ProjectHandler),
]
