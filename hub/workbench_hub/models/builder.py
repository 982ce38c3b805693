"""Model builds: run the build step as a workload and record its outcome (docs/models.md)."""

from traitlets import Any
from traitlets.config import LoggingConfigurable


class ModelBuilder(LoggingConfigurable):
    """Builds models through the runtime."""

    db = Any(help="the workbench Database (workbench_hub.db)")
    runtime = Any(help="the Runtime that runs build workloads")
    project_root = Any(help="directory holding every project's directory")
    data_dir = Any(help="the control plane's data directory (builds live under it)")

    async def start(self) -> None:
        """Adopt or finish builds left by a previous control plane."""

    async def stop(self) -> None:
        """Stop background work."""
