"""``GET /metrics``: technical metrics of every active deployment, for Prometheus."""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import select

from workbench_hub.handlers.base import APIError, APIHandler
from workbench_hub.models import ACTIVE_DEPLOYMENT_STATES
from workbench_hub.orm import Model, ModelDeployment, Project

_LABELS = ["project", "model", "deployment"]


class _Collector:
    """Metric families built from the supervisor's latest replica counters."""

    def __init__(self, stats, deployments: list[tuple[str, str, ModelDeployment]]) -> None:
        self._stats = stats
        self._deployments = deployments

    def collect(self):
        requests = CounterMetricFamily(
            "workbench_model_requests", "Calls of the model's function", labels=_LABELS
        )
        errors = CounterMetricFamily(
            "workbench_model_errors", "Calls where the function raised", labels=_LABELS
        )
        rejected = CounterMetricFamily(
            "workbench_model_rejected", "Requests answered 429 (queue full)", labels=_LABELS
        )
        rate = GaugeMetricFamily(
            "workbench_model_requests_per_second", "Requests/s over the last minute", labels=_LABELS
        )
        latency = GaugeMetricFamily(
            "workbench_model_latency_milliseconds",
            "Latency percentiles over the last minute",
            labels=[*_LABELS, "quantile"],
        )
        cpu = GaugeMetricFamily(
            "workbench_model_cpu_cores", "CPU used by the replicas (cores)", labels=_LABELS
        )
        memory = GaugeMetricFamily(
            "workbench_model_memory_bytes", "Resident memory of the replicas", labels=_LABELS
        )
        for project, model, deployment in self._deployments:
            labels = [project, model, deployment.crn]
            summary = self._stats.summary(deployment.id)
            requests.add_metric(labels, summary["totals"]["requests"])
            errors.add_metric(labels, summary["totals"]["errors"])
            rejected.add_metric(labels, summary["totals"]["rejected"])
            rate.add_metric(labels, summary["requests_per_second"])
            for quantile, value in summary["latency_ms"].items():
                if value is not None:
                    latency.add_metric([*labels, quantile], value)
            cpu.add_metric(labels, summary["cpu_cores"])
            memory.add_metric(labels, summary["memory_bytes"])
        yield from (requests, errors, rejected, rate, latency, cpu, memory)


class PrometheusHandler(APIHandler):
    service_allowed = True

    async def get(self) -> None:
        if not (self.is_service or self.identity.is_admin):
            raise APIError(403, "the metrics endpoint is for workbench administrators")
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(Project.name, Model.name, ModelDeployment)
                    .join(Model, Model.project_id == Project.id)
                    .join(ModelDeployment, ModelDeployment.model_id == Model.id)
                    .where(ModelDeployment.state.in_(ACTIVE_DEPLOYMENT_STATES))
                )
            ).all()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.settings["models"].stats, [tuple(r) for r in rows]))
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(generate_latest(registry))


handlers = [(r"metrics", PrometheusHandler)]
