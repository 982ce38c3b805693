"""Model metrics: ``read_metrics``, ``track_delayed_metrics``, ``track_aggregate_metrics``
and the replicas' ingest of per-prediction metrics (docs/model-metrics.md)."""

import re

import orjson
from sqlalchemy import select

from workbench_hub import audit
from workbench_hub.handlers.base import APIError, APIHandler
from workbench_hub.handlers.replica_base import ReplicaAPIHandler
from workbench_hub.models.metrics_store import (
    MAX_MS,
    DeploymentNotFound,
    MetricsInvalid,
    PredictionNotFound,
    check_delayed,
    check_window,
    now_ms,
)
from workbench_hub.orm import Model, ModelBuild, ModelDeployment, Project
from workbench_hub.roles import Role

#: most records in one call (replica ingest, batch of delayed metrics)
MAX_RECORDS = 50_000
_DIGITS = re.compile(r"[0-9]{1,19}")
#: query parameter → (table, name in messages), most specific first
_CRN_PARAMETERS = {
    "deploymentCrn": (ModelDeployment, "deployment"),
    "buildCrn": (ModelBuild, "build"),
    "modelCrn": (Model, "model"),
}


def _invalid(e: MetricsInvalid) -> APIError:
    return APIError(400, e.message, field=e.field)


class MetricsAPIHandler(APIHandler):
    """Lookups shared by the model metrics handlers."""

    @property
    def store(self):
        return self.settings["model_metrics"]

    async def check_role(
        self, session, project: Project, need: Role, action: str, hidden: str, object_id: str
    ) -> None:
        """404 `hidden` when the caller has no role on `project`, 403 when it is too low."""
        role = await self.role_on(session, project)
        if role is None:
            raise APIError(404, hidden)
        if role < need:
            await self.audit_denied(action, "deployment", object_id, {"role": role.label})
            raise APIError(
                403,
                f"your role on project {project.name!r} is {role.label}; {action} needs"
                f" {need.label}",
            )

    async def deployment_by_crn(
        self, session, crn: str, need: Role, action: str
    ) -> ModelDeployment:
        """The deployment `crn`: 404 if unknown or hidden, 403 if the role is too low."""
        deployment = await session.scalar(select(ModelDeployment).where(ModelDeployment.crn == crn))
        hidden = f"no deployment {crn!r}"
        if deployment is None:
            raise APIError(404, hidden)
        project = await session.scalar(
            select(Project)
            .join(Model, Model.project_id == Project.id)
            .where(Model.id == deployment.model_id)
        )
        await self.check_role(session, project, need, action, hidden, crn)
        return deployment

    def write_bytes(self, body: bytes, status: int = 200) -> None:
        self.set_status(status)
        self.finish(body)


class MetricsReadHandler(MetricsAPIHandler):
    """``GET /model-metrics``: Cloudera's ``read_metrics``."""

    async def get(self):
        given = {
            name: self.get_query_argument(name)
            for name in _CRN_PARAMETERS
            if self.get_query_argument(name, "")
        }
        if not given:
            raise APIError(
                400,
                "name what to read: deploymentCrn, modelCrn or buildCrn",
                field="deploymentCrn",
            )
        start = self._ms_argument("startTimeStampMs", 0)
        end = self._ms_argument("endTimeStampMs", None)
        if end is None:
            end = max(now_ms(), start)
        elif start > end:
            raise APIError(
                400,
                f"startTimeStampMs ({start}) is after endTimeStampMs ({end})",
                field="startTimeStampMs",
            )
        async with self.db.session() as session:
            deployment_ids = await self._deployments(session, given)
        if not {"limit", "offset"} & set(self.request.query_arguments):
            # unpaged, as Cloudera answers: every record (scripts flatten result["metrics"])
            records = await self.store.read(deployment_ids, start, end)
            self.write_bytes(orjson.dumps({"metrics": records}))
            return
        page = self.page()
        records = await self.store.read(deployment_ids, start, end, page.limit + 1, page.offset)
        self.write_page("metrics", page.cut(records), page)

    def _ms_argument(self, name: str, default: int | None) -> int | None:
        value = self.get_query_argument(name, "")
        if value == "":
            return default
        if not _DIGITS.fullmatch(value) or int(value) > MAX_MS:
            raise APIError(
                400,
                f"{name} must be an integer ≥ 0 (milliseconds since the epoch), got {value!r}",
                field=name,
            )
        return int(value)

    async def _deployments(self, session, given: dict[str, str]) -> list[int]:
        """Ids of the deployments the given CRNs name (all of them must agree).

        Each CRN is checked on its own, unknown and hidden alike answering 404 naming it, so
        that a caller with no role learns nothing of how objects relate.
        """
        found, projects_by_model = {}, {}
        for parameter, crn in given.items():
            table, noun = _CRN_PARAMETERS[parameter]
            row = await session.scalar(select(table).where(table.crn == crn))
            if row is None:
                raise APIError(404, f"no {noun} {crn!r}")
            model_id = row.id if parameter == "modelCrn" else row.model_id
            if model_id not in projects_by_model:
                projects_by_model[model_id] = await session.scalar(
                    select(Project)
                    .join(Model, Model.project_id == Project.id)
                    .where(Model.id == model_id)
                )
                await self.check_role(
                    session,
                    projects_by_model[model_id],
                    Role.VIEWER,
                    "reading model metrics",
                    f"no {noun} {crn!r}",
                    crn,
                )
            found[parameter] = row
        deployment, build = found.get("deploymentCrn"), found.get("buildCrn")
        if len(projects_by_model) > 1 or (
            deployment is not None and build is not None and deployment.build_id != build.id
        ):
            raise APIError(
                400,
                f"{' and '.join(given)} name objects of different models or builds:"
                f" {', '.join(given.values())}",
                field=next(iter(given)),
            )
        if deployment is not None:
            return [deployment.id]
        column = ModelDeployment.build_id if build is not None else ModelDeployment.model_id
        owner = build if build is not None else found["modelCrn"]
        return list(await session.scalars(select(ModelDeployment.id).where(column == owner.id)))


class DelayedMetricsHandler(MetricsAPIHandler):
    """``POST /model-metrics/delayed``: Cloudera's ``track_delayed_metrics`` (one or many)."""

    async def post(self):
        body = self.json_body(
            {"predictionUuid": str, "metrics": dict, "records": list},
        )
        single = "records" not in body
        if single:
            for key in ("predictionUuid", "metrics"):
                if key not in body:
                    raise APIError(400, f"missing required field {key!r}", field=key)
            records = [(body["predictionUuid"], body["metrics"])]
        else:
            if len(body) > 1:
                raise APIError(
                    400,
                    "send either predictionUuid and metrics, or records, not both",
                    field="records",
                )
            records = self._records(body["records"])
        try:
            # all checks before any write: shapes, then that every prediction exists and the
            # caller may write to each deployment
            check_delayed(records, batch=not single)
            found = await self.store.prediction_deployments([uuid for uuid, _ in records])
            missing = [uuid for uuid, _ in records if uuid not in found]
            if missing:
                raise PredictionNotFound(list(dict.fromkeys(missing)))
            crns = await self._check_deployments(found)
            found = await self.store.add_delayed_many(records, batch=not single)
        except MetricsInvalid as e:
            raise _invalid(e) from None
        except PredictionNotFound as e:
            raise APIError(404, e.message) from None
        answers = [
            {"predictionUuid": uuid, "deploymentCrn": crns[found[uuid]]} for uuid, _ in records
        ]
        self.write_bytes(orjson.dumps(answers[0] if single else {"records": answers}), 201)

    def _records(self, records: list) -> list[tuple]:
        if not records:
            raise APIError(400, "records must not be empty", field="records")
        if len(records) > MAX_RECORDS:
            raise APIError(
                413,
                f"{len(records)} records in one call; send at most {MAX_RECORDS} a call",
                field="records",
            )
        pairs = []
        for i, record in enumerate(records):
            if not isinstance(record, dict) or set(record) != {"predictionUuid", "metrics"}:
                raise APIError(
                    400,
                    f"records[{i}] must be an object with exactly predictionUuid and metrics",
                    field="records",
                )
            pairs.append((record["predictionUuid"], record["metrics"]))
        return pairs

    async def _check_deployments(self, found: dict[str, int]) -> dict[int, str]:
        """Contributor on the project of every deployment in `found`; their CRNs by id."""
        by_deployment = {}
        for uuid, deployment_id in found.items():
            by_deployment.setdefault(deployment_id, uuid)
        crns = {}
        async with self.db.session() as session:
            rows = await session.execute(
                select(ModelDeployment.id, ModelDeployment.crn, Project)
                .join(Model, Model.id == ModelDeployment.model_id)
                .join(Project, Project.id == Model.project_id)
                .where(ModelDeployment.id.in_(list(by_deployment)))
            )
            for deployment_id, crn, project in rows.all():
                await self.check_role(
                    session,
                    project,
                    Role.CONTRIBUTOR,
                    "tracking model metrics",
                    f"no prediction {by_deployment[deployment_id]!r}",
                    crn,
                )
                crns[deployment_id] = crn
        return crns


class AggregateMetricsHandler(MetricsAPIHandler):
    """``POST /model-metrics/aggregate``: Cloudera's ``track_aggregate_metrics``."""

    async def post(self):
        body = self.json_body(
            {"deploymentCrn": str, "startTimeStampMs": int, "endTimeStampMs": int, "metrics": dict},
            required=("deploymentCrn", "startTimeStampMs", "endTimeStampMs", "metrics"),
        )
        start, end = body["startTimeStampMs"], body["endTimeStampMs"]
        try:
            check_window(start, end)
        except MetricsInvalid as e:
            raise _invalid(e) from None
        crn = body["deploymentCrn"]
        async with self.db.session() as session:
            deployment = await self.deployment_by_crn(
                session, crn, Role.CONTRIBUTOR, "tracking model metrics"
            )
        try:
            await self.store.add_aggregate(deployment.id, start, end, body["metrics"])
        except MetricsInvalid as e:
            raise _invalid(e) from None
        except DeploymentNotFound:
            raise APIError(404, f"no deployment {crn!r}") from None
        async with self.db.session() as session:
            audit.record(
                session,
                actor=self.identity.name,
                action="model.metrics.aggregate",
                object_type="deployment",
                object_id=crn,
                detail={"start": start, "end": end, "keys": sorted(body["metrics"])[:20]},
            )
            await session.commit()
        self.write_bytes(
            orjson.dumps(
                {
                    "deploymentCrn": crn,
                    "startTimeStampMs": start,
                    "endTimeStampMs": end,
                    "metrics": body["metrics"],
                }
            ),
            201,
        )


class PredictionsIngestHandler(ReplicaAPIHandler):
    """``POST /deployments/{crn}/predictions``: a replica's batch of tracked metrics."""

    async def post(self, crn):
        try:
            body = orjson.loads(self.request.body or b"")
        except orjson.JSONDecodeError:
            raise APIError(400, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "body must be a JSON object")
        unknown = set(body) - {"records"}
        if unknown:
            field = sorted(unknown)[0]
            raise APIError(400, f"unknown field {field!r}", field=field)
        records = body.get("records")
        if not isinstance(records, list):
            raise APIError(400, "field 'records' must be a list", field="records")
        if len(records) > MAX_RECORDS:
            raise APIError(
                413,
                f"{len(records)} records in one call; send at most {MAX_RECORDS} a call",
                field="records",
            )
        try:
            await self.settings["model_metrics"].add_predictions(
                self.deployment.id, records, crn=self.deployment.crn
            )
        except MetricsInvalid as e:
            raise _invalid(e) from None
        except DeploymentNotFound:
            raise APIError(401, "invalid deployment token: the deployment was deleted") from None
        self.set_status(204)
        self.finish()


handlers = [
    (r"model-metrics", MetricsReadHandler),
    (r"model-metrics/delayed", DelayedMetricsHandler),
    (r"model-metrics/aggregate", AggregateMetricsHandler),
    (r"deployments/(?P<crn>[^/]+)/predictions", PredictionsIngestHandler),
]
