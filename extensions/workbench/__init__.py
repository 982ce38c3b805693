"""The Jupyter Workbench SDK, for notebooks, scripts and jobs running in a workbench session.

    import workbench
    workbench.current_project()        # the session's project
    workbench.projects.list()          # every project you can see
    workbench.projects.get("churn")
    job = workbench.jobs.create("nightly", "train.py", cron="0 2 * * *", timezone="Europe/Paris")
    run = job.run().wait()             # poll until the run ends
    print(run.state, run.exit_code, run.message)
    print(run.logs())
    model = workbench.models.deploy("churn", "predict.py", "predict")   # docs/models.md
    key = model.create_key()
    workbench.models.call_model(key, {"tenure": 3})["response"]
    workbench.metrics.read_metrics(model_deployment_crn=model.deployment["crn"])

Module-level names use a Client built from the session environment on first use; build a
`workbench.Client(api_url=..., token=...)` to talk to a workbench from elsewhere.
"""

import functools
import os

from . import metrics, models
from .client import Client
from .errors import NotInSessionError, WorkbenchError

__all__ = [
    "Client",
    "NotInSessionError",
    "WorkbenchError",
    "current_project",
    "default_client",
    "jobs",
    "metrics",
    "models",
    "projects",
]


@functools.cache
def _client_for(api_url, token, project):
    return Client(api_url=api_url, token=token, project=project)


def default_client():
    """The Client for the current environment (one per distinct set of variables)."""
    return _client_for(
        os.environ.get("WORKBENCH_API_URL"),
        os.environ.get("WORKBENCH_TOKEN"),
        os.environ.get("WORKBENCH_PROJECT"),
    )


def current_project():
    """The project this session or job runs in, as a dict."""
    return default_client().current_project()


class _DefaultResource:
    """A resource of the default client, looked up on each use (e.g. `workbench.projects`)."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return getattr(getattr(default_client(), self._name), attr)

    def __repr__(self):
        return f"<workbench.{self._name} of the session's default client>"


projects = _DefaultResource("projects")
jobs = _DefaultResource("jobs")
# `workbench.models` and `workbench.metrics` are modules whose functions use the default client
# (`workbench.models.deploy(...)`); `client.models` and `client.metrics` are the same APIs on an
# explicit Client.
