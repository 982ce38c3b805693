"""Models of a project: list, create, read, change, delete (docs/models.md)."""

import asyncio
import os
import re
from pathlib import Path, PurePosixPath

from sqlalchemy import select

from workbench_hub import audit
from workbench_hub.handlers.base import APIError, APIHandler, Field
from workbench_hub.jobs import validation
from workbench_hub.jobs.validation import JobInvalid
from workbench_hub.models import ACTIVE_DEPLOYMENT_STATES, new_crn
from workbench_hub.models.supervisor import model_prefix
from workbench_hub.names import InvalidName, validate_name
from workbench_hub.orm import Model, ModelBuild, ModelDeployment, Project, utcnow
from workbench_hub.profiles import profiles_for
from workbench_hub.roles import Role

MAX_REPLICAS = 32
#: how many replicas a deployment may run
REPLICAS = Field(int, between=(1, MAX_REPLICAS))
#: the route of one model; the others of a model extend it
MODEL_ROUTE = r"projects/(?P<name>[^/]+)/models/(?P<model>[^/]+)"
_FIELDS = {
    "name": str,
    "file": Field(str, min_length=1, max_length=1024),
    "function": Field(str, min_length=1, max_length=255),
    "description": str,
    "profile": Field(str, max_length=63),
    "replicas": REPLICAS,
    "env": dict,
}
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def model_file(value: str) -> str:
    """The model's file as a normalised relative path ending in .py (400 otherwise)."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value or "\0" in value:
        raise APIError(400, "file must be a .py file inside the project", "file")
    if path.suffix != ".py":
        raise APIError(400, f"file must be a Python file (.py), got {value!r}", "file")
    return PurePosixPath(os.path.normpath(value)).as_posix()


def check_model_file(project_dir: Path, file: str) -> None:
    """400 unless ``file`` is an existing file inside the project. Blocking."""
    base = project_dir.resolve()
    path = (base / file).resolve()
    if not path.is_relative_to(base):
        raise APIError(400, "file must be a .py file inside the project", "file")
    if not path.is_file():
        raise APIError(400, f"file {file!r} does not exist in the project", "file")


def function_name(value: str) -> str:
    if not _FUNCTION_NAME.fullmatch(value):
        raise APIError(400, f"function {value!r} is not a Python function name", "function")
    return value


def build_json(build: ModelBuild) -> dict:
    return {
        "number": build.number,
        "crn": build.crn,
        "state": build.state,
        "file": build.file,
        "function": build.function,
        "message": build.message,
        "created": build.created.isoformat(),
        "created_by": build.created_by,
        "started_at": build.started_at.isoformat() if build.started_at else None,
        "finished_at": build.finished_at.isoformat() if build.finished_at else None,
    }


class ModelsAPIHandler(APIHandler):
    """Lookups and JSON shared by the model, build, deployment and key handlers."""

    async def prepare(self) -> None:
        await super().prepare()
        # routes name their groups (documented paths); methods take them in order
        self.path_args, self.path_kwargs = list(self.path_kwargs.values()), {}

    @property
    def supervisor(self):
        return self.settings["models"]

    @property
    def builder(self):
        return self.settings["builder"]

    def model_url(self, project: str, model: str) -> str:
        return f"{self.service.public_hub_url.rstrip('/')}{model_prefix(project, model)}/model"

    async def model_for(
        self, session, project_name: str, model_name: str, need: Role, action: str
    ) -> tuple[Project, Model, Role]:
        """Project, model and role: 404 if hidden or missing, 403 if the role is too low."""
        return await self.project_item(session, project_name, Model, model_name, need, action)

    async def current_deployment(self, session, model: Model) -> ModelDeployment | None:
        """The newest active deployment, else the newest one."""
        deployments = (
            await session.scalars(
                select(ModelDeployment)
                .where(ModelDeployment.model_id == model.id)
                .order_by(ModelDeployment.number.desc())
            )
        ).all()
        active = [d for d in deployments if d.state in ACTIVE_DEPLOYMENT_STATES]
        return (active or deployments or [None])[0]

    async def deployment_json(self, session, deployment: ModelDeployment) -> dict:
        build = await session.get(ModelBuild, deployment.build_id)
        replicas = await self.supervisor.replicas_of(deployment.id)
        return {
            "number": deployment.number,
            "crn": deployment.crn,
            "build": build.number,
            "build_crn": build.crn,
            "state": deployment.state,
            "replicas": deployment.replicas,
            "ready_replicas": sum(
                1 for r in replicas if r.phase == "running" and self.supervisor.is_ready(r.name)
            ),
            "generation": deployment.generation,
            "message": deployment.message,
            "created": deployment.created.isoformat(),
            "created_by": deployment.created_by,
            "started_at": deployment.started_at.isoformat() if deployment.started_at else None,
            "stopped_at": deployment.stopped_at.isoformat() if deployment.stopped_at else None,
        }

    async def model_json(self, session, project: Project, model: Model) -> dict:
        deployment = await self.current_deployment(session, model)
        return {
            "name": model.name,
            "crn": model.crn,
            "file": model.file,
            "function": model.function,
            "description": model.description,
            "profile": model.profile,
            "replicas": model.replicas,
            "env": model.env,
            "created": model.created.isoformat(),
            "created_by": model.created_by,
            "updated": model.updated.isoformat(),
            "url": self.model_url(project.name, model.name),
            "deployment": (await self.deployment_json(session, deployment) if deployment else None),
        }

    def record(self, session, action: str, project: str, model: str, detail=None) -> None:
        audit.record(
            session,
            actor=self.identity.name,
            action=action,
            object_type="model",
            object_id=f"{project}/{model}",
            detail=detail,
        )

    async def validated(self, body: dict, project: Project) -> dict:
        """The fields of a model body, validated (404-free: the project is known)."""
        values = {}
        if "name" in body:
            try:
                values["name"] = validate_name(body["name"])
            except InvalidName as exc:
                raise APIError(400, f"name: {exc}", "name") from None
        if "file" in body:
            values["file"] = model_file(body["file"])
            await asyncio.to_thread(
                check_model_file, Path(self.service.project_path(project.name)), values["file"]
            )
        if "function" in body:
            values["function"] = function_name(body["function"])
        if "description" in body:
            values["description"] = body["description"]
        if "replicas" in body:
            values["replicas"] = body["replicas"]
        try:
            if "env" in body:
                values["env"] = validation.env(body["env"])
            if "profile" in body or "name" in body:
                values["profile"] = validation.profile(
                    body.get("profile"),
                    profiles_for(self.service.resource_profiles, set(self.identity.groups)),
                )
        except JobInvalid as exc:
            raise APIError(400, exc.message, exc.field) from None
        return values


class ModelListHandler(ModelsAPIHandler):
    async def get(self, project_name: str) -> None:
        async with self.db.session() as session:
            project, _ = await self.project_for(session, project_name, Role.VIEWER, "viewing")
            page = self.page()
            models = await page.scalars(
                session, select(Model).where(Model.project_id == project.id).order_by(Model.name)
            )
            items = [await self.model_json(session, project, m) for m in models]
        self.write_page("models", items, page)

    async def post(self, project_name: str) -> None:
        body = self.json_body(_FIELDS, required=("name", "file", "function"))
        async with self.db.session() as session:
            project, _ = await self.project_for(
                session, project_name, Role.CONTRIBUTOR, "creating a model"
            )
            values = await self.validated(body, project)
            exists = await session.scalar(
                select(Model.id).where(Model.project_id == project.id, Model.name == values["name"])
            )
            if exists is not None:
                raise APIError(
                    409, f"project {project_name!r} already has a model {values['name']!r}", "name"
                )
            model = Model(
                project_id=project.id,
                crn=new_crn("model"),
                created_by=self.identity.name,
                **{"description": "", "replicas": 1, "env": {}, **values},
            )
            session.add(model)
            self.record(session, "model.created", project.name, model.name)
            await session.commit()
            self.write_json(await self.model_json(session, project, model), 201)


class ModelHandler(ModelsAPIHandler):
    async def get(self, project_name: str, model_name: str) -> None:
        async with self.db.session() as session:
            project, model, _ = await self.model_for(
                session, project_name, model_name, Role.VIEWER, "viewing"
            )
            self.write_json(await self.model_json(session, project, model))

    async def patch(self, project_name: str, model_name: str) -> None:
        fields = {k: v for k, v in _FIELDS.items() if k != "name"}
        body = self.json_body(fields)
        async with self.db.session() as session:
            project, model, _ = await self.model_for(
                session, project_name, model_name, Role.CONTRIBUTOR, "changing a model"
            )
            values = await self.validated(body, project)
            for key, value in values.items():
                setattr(model, key, value)
            model.updated = utcnow()
            self.record(
                session, "model.updated", project.name, model.name, {"fields": sorted(values)}
            )
            await session.commit()
            self.write_json(await self.model_json(session, project, model))

    async def delete(self, project_name: str, model_name: str) -> None:
        async with self.db.session() as session:
            project, model, _ = await self.model_for(
                session, project_name, model_name, Role.CONTRIBUTOR, "deleting a model"
            )
            await session.delete(model)
            self.record(session, "model.deleted", project.name, model.name)
            await session.commit()
        self.supervisor.poke()  # its replicas are retired and its route removed
        self.set_status(204)
        self.finish()


handlers = [
    (r"projects/(?P<name>[^/]+)/models", ModelListHandler),
    (MODEL_ROUTE, ModelHandler),
]
