"""The model metrics store (docs/model-metrics.md)."""

from traitlets import Any
from traitlets.config import LoggingConfigurable


class MetricsStore(LoggingConfigurable):
    """Per-prediction, delayed and aggregate metrics of deployments, in the workbench database."""

    db = Any(help="the workbench Database (workbench_hub.db)")

    async def start(self) -> None:
        """Start background work (retention)."""

    async def stop(self) -> None:
        """Stop background work."""
