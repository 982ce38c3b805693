"""Keeps each deployment's replicas running and routed (docs/models.md)."""

from traitlets import Any
from traitlets.config import LoggingConfigurable


class ModelSupervisor(LoggingConfigurable):
    """Reconciles deployments with replica workloads and the proxy's routes."""

    db = Any(help="the workbench Database (workbench_hub.db)")
    runtime = Any(help="the Runtime that runs replicas")
    builder = Any(help="the ModelBuilder")

    async def start(self) -> None:
        """Start the reconcile loop."""

    async def stop(self) -> None:
        """Stop the reconcile loop (replicas keep running)."""
