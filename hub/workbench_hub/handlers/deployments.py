"""Deployments of a model: deploy, scale, stop, restart; replica logs and stats (docs/models.md)."""

from sqlalchemy import select

from workbench_hub.handlers.base import APIError, path_number
from workbench_hub.handlers.models import MODEL_ROUTE, REPLICAS, ModelsAPIHandler
from workbench_hub.models import ACTIVE_DEPLOYMENT_STATES, new_crn
from workbench_hub.orm import ModelBuild, ModelDeployment, utcnow
from workbench_hub.roles import Role

#: how many lines of each replica's log the logs route returns
LOG_TAIL_LINES = 2000


class DeploymentListHandler(ModelsAPIHandler):
    async def get(self, project_name: str, model_name: str) -> None:
        async with self.db.session() as session:
            _, model, _ = await self.model_for(
                session, project_name, model_name, Role.VIEWER, "viewing"
            )
            page = self.page()
            deployments = await page.scalars(
                session,
                select(ModelDeployment)
                .where(ModelDeployment.model_id == model.id)
                .order_by(ModelDeployment.number.desc()),
            )
            items = [await self.deployment_json(session, d) for d in deployments]
        self.write_page("deployments", items, page)

    async def post(self, project_name: str, model_name: str) -> None:
        body = self.json_body({"build": int, "replicas": REPLICAS})
        async with self.db.session() as session:
            project, model, _ = await self.model_for(
                session, project_name, model_name, Role.CONTRIBUTOR, "deploying a model"
            )
            build = await self._build(session, model, body.get("build"))
            replicas = body.get("replicas", model.replicas)
            crn = new_crn("deployment")
            deployment = ModelDeployment(
                model_id=model.id,
                build_id=build.id,
                number=model.next_deployment_number,
                crn=crn,
                state="deploying",
                replicas=replicas,
                profile=model.profile,
                env=dict(model.env),
                token_hash=self.supervisor.deployment_token_hash(crn),
                created_by=self.identity.name,
            )
            model.next_deployment_number += 1
            # a deployment that never finished rolling out gives way to this one
            pending = (
                await session.scalars(
                    select(ModelDeployment).where(
                        ModelDeployment.model_id == model.id,
                        ModelDeployment.state == "deploying",
                    )
                )
            ).all()
            for old in pending:
                old.state, old.stopped_at = "superseded", utcnow()
            session.add(deployment)
            self.record(
                session,
                "model.deployed",
                project.name,
                model.name,
                {"build": build.number, "deployment": deployment.number, "replicas": replicas},
            )
            await session.commit()
            self.supervisor.poke()
            self.write_json(await self.deployment_json(session, deployment), 202)

    async def _build(self, session, model, number: int | None) -> ModelBuild:
        if number is None:
            build = await session.scalar(
                select(ModelBuild)
                .where(ModelBuild.model_id == model.id, ModelBuild.state == "succeeded")
                .order_by(ModelBuild.number.desc())
                .limit(1)
            )
            if build is None:
                raise APIError(
                    409,
                    f"model {model.name!r} has no succeeded build to deploy: start a build first",
                    "build",
                )
            return build
        build = await session.scalar(
            select(ModelBuild).where(ModelBuild.model_id == model.id, ModelBuild.number == number)
        )
        if build is None:
            raise APIError(404, f"model {model.name!r} has no build {number}", "build")
        if build.state != "succeeded":
            why = f": {build.message}" if build.message else ""
            raise APIError(
                409,
                f"build {number} is {build.state}{why}; only a succeeded build can be deployed",
                "build",
            )
        return build


class DeploymentHandler(ModelsAPIHandler):
    async def deployment_for(self, session, project_name, model_name, number, need, action):
        project, model, _ = await self.model_for(session, project_name, model_name, need, action)
        deployment = await session.scalar(
            select(ModelDeployment).where(
                ModelDeployment.model_id == model.id,
                ModelDeployment.number == path_number(number),
            )
        )
        if deployment is None:
            raise APIError(404, f"model {model_name!r} has no deployment {number}")
        return project, model, deployment

    async def get(self, project_name: str, model_name: str, number: str) -> None:
        async with self.db.session() as session:
            _, _, deployment = await self.deployment_for(
                session, project_name, model_name, number, Role.VIEWER, "viewing"
            )
            self.write_json(await self.deployment_json(session, deployment))

    async def patch(self, project_name: str, model_name: str, number: str) -> None:
        body = self.json_body({"replicas": int, "state": str, "restart": bool})
        if len(body) != 1:
            raise APIError(400, "give exactly one of 'replicas', 'state' or 'restart'")
        async with self.db.session() as session:
            project, model, deployment = await self.deployment_for(
                session,
                project_name,
                model_name,
                number,
                Role.CONTRIBUTOR,
                "changing a deployment",
            )
            action, detail = await self._change(session, model, deployment, body)
            self.record(
                session,
                action,
                project.name,
                model.name,
                {"deployment": deployment.number, **detail},
            )
            await session.commit()
            self.supervisor.poke()
            self.write_json(await self.deployment_json(session, deployment))

    async def _change(self, session, model, deployment, body) -> tuple[str, dict]:
        active = deployment.state in ACTIVE_DEPLOYMENT_STATES
        if "replicas" in body:
            if not active:
                raise APIError(409, f"deployment {deployment.number} is {deployment.state}")
            deployment.replicas = body["replicas"]
            return "model.scaled", {"replicas": deployment.replicas}
        if "restart" in body:
            if not body["restart"]:
                raise APIError(400, "restart must be true", "restart")
            if not active:
                raise APIError(409, f"deployment {deployment.number} is {deployment.state}")
            deployment.generation += 1
            return "model.restarted", {}
        state = body["state"]
        if state == "stopped":
            if active:
                deployment.state, deployment.stopped_at = "stopped", utcnow()
            return "model.stopped", {}
        if state == "running":
            newest = await session.scalar(
                select(ModelDeployment.number)
                .where(ModelDeployment.model_id == model.id)
                .order_by(ModelDeployment.number.desc())
                .limit(1)
            )
            if not active and deployment.number != newest:
                raise APIError(
                    409,
                    f"deployment {deployment.number} is not the newest: deploy its build again",
                    "state",
                )
            if not active:
                deployment.state, deployment.stopped_at = "deploying", None
                deployment.generation += 1
            return "model.started", {}
        raise APIError(400, "state must be 'stopped' or 'running'", "state")


class ModelLogsHandler(ModelsAPIHandler):
    """Replica logs of the current deployment, each under a ``==> replica <==`` header."""

    async def get(self, project_name: str, model_name: str) -> None:
        async with self.db.session() as session:
            _, model, _ = await self.model_for(
                session, project_name, model_name, Role.VIEWER, "viewing"
            )
            deployment = await self.current_deployment(session, model)
        chunks = []
        for workload in await self.supervisor.replicas_of(deployment.id) if deployment else []:
            lines: list[str] = []
            async for line in self.supervisor.runtime.logs(workload.name):
                lines.append(line)
                del lines[:-LOG_TAIL_LINES]
            chunks.append(f"==> {workload.name} ({workload.phase}) <==\n" + "\n".join(lines))
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish("\n".join(chunks) + ("\n" if chunks else ""))


class ModelStatsHandler(ModelsAPIHandler):
    """Technical metrics of the current deployment: rates, latency, errors, CPU, memory."""

    async def get(self, project_name: str, model_name: str) -> None:
        async with self.db.session() as session:
            _, model, _ = await self.model_for(
                session, project_name, model_name, Role.VIEWER, "viewing"
            )
            deployment = await self.current_deployment(session, model)
        if deployment is None:
            raise APIError(404, f"model {model_name!r} has never been deployed")
        stats = self.supervisor.stats
        reported = stats.replicas(deployment.id)
        replicas = []
        for workload in await self.supervisor.replicas_of(deployment.id):
            own = reported.get(workload.name, {})
            replicas.append(
                {
                    "name": workload.name,
                    "phase": workload.phase,
                    "ready": self.supervisor.is_ready(workload.name),
                    "requests": own.get("requests", 0),
                    "errors": own.get("errors", 0),
                    "cpu_seconds": own.get("cpu_seconds", 0.0),
                    "memory_bytes": own.get("memory_bytes", 0),
                }
            )
        self.write_json(
            {
                "deployment": deployment.number,
                "deployment_crn": deployment.crn,
                "state": deployment.state,
                "replicas": replicas,
                **stats.summary(deployment.id),
            }
        )


handlers = [
    (MODEL_ROUTE + r"/deployments", DeploymentListHandler),
    (MODEL_ROUTE + r"/deployments/(?P<number>[0-9]+)", DeploymentHandler),
    (MODEL_ROUTE + r"/logs", ModelLogsHandler),
    (MODEL_ROUTE + r"/stats", ModelStatsHandler),
]
