"""Builds of a model: list, start, read, log (docs/models.md)."""

from sqlalchemy import select

from workbench_hub.handlers.base import APIError, path_number
from workbench_hub.handlers.models import MODEL_ROUTE, ModelsAPIHandler, build_json
from workbench_hub.models import new_crn
from workbench_hub.orm import ModelBuild
from workbench_hub.roles import Role


class BuildListHandler(ModelsAPIHandler):
    async def get(self, project_name: str, model_name: str) -> None:
        async with self.db.session() as session:
            _, model, _ = await self.model_for(
                session, project_name, model_name, Role.VIEWER, "viewing"
            )
            page = self.page()
            builds = await page.scalars(
                session,
                select(ModelBuild)
                .where(ModelBuild.model_id == model.id)
                .order_by(ModelBuild.number.desc()),
            )
        self.write_page("builds", [build_json(b) for b in builds], page)

    async def post(self, project_name: str, model_name: str) -> None:
        self.json_body({})
        async with self.db.session() as session:
            project, model, _ = await self.model_for(
                session, project_name, model_name, Role.CONTRIBUTOR, "building a model"
            )
            build = ModelBuild(
                model_id=model.id,
                number=model.next_build_number,
                crn=new_crn("build"),
                state="queued",
                file=model.file,
                function=model.function,
                created_by=self.identity.name,
            )
            model.next_build_number += 1
            session.add(build)
            self.record(
                session, "model.build.started", project.name, model.name, {"build": build.number}
            )
            await session.commit()
            await self.builder.start_build(build.id)
            self.write_json(build_json(build), 202)


class BuildHandler(ModelsAPIHandler):
    async def build_for(self, session, project_name, model_name, number: str) -> ModelBuild:
        _, model, _ = await self.model_for(
            session, project_name, model_name, Role.VIEWER, "viewing"
        )
        build = await session.scalar(
            select(ModelBuild).where(
                ModelBuild.model_id == model.id, ModelBuild.number == path_number(number)
            )
        )
        if build is None:
            raise APIError(404, f"model {model_name!r} has no build {number}")
        return build

    async def get(self, project_name: str, model_name: str, number: str) -> None:
        async with self.db.session() as session:
            build = await self.build_for(session, project_name, model_name, number)
        self.write_json(build_json(build))


class BuildLogHandler(BuildHandler):
    async def get(self, project_name: str, model_name: str, number: str) -> None:
        async with self.db.session() as session:
            build = await self.build_for(session, project_name, model_name, number)
        text = await self.builder.read_log(build)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(text)


handlers = [
    (MODEL_ROUTE + r"/builds", BuildListHandler),
    (MODEL_ROUTE + r"/builds/(?P<number>[0-9]+)", BuildHandler),
    (MODEL_ROUTE + r"/builds/(?P<number>[0-9]+)/log", BuildLogHandler),
]
