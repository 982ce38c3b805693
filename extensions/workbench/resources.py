"""The REST resources a Client exposes, one class each (`client.projects`, `client.jobs`)."""

import time
from urllib.parse import quote

from .errors import NotInSessionError


class Projects:
    """Projects API of a Client."""

    def __init__(self, client):
        self._client = client

    def list(self):
        """Every project the caller may see, each a dict with its `role`."""
        return self._client.list("projects", "projects")

    def get(self, name):
        """One project by name; WorkbenchError(404) if it does not exist for the caller."""
        return self._client.request("GET", f"projects/{quote(name, safe='')}")


FINAL_STATES = ("succeeded", "failed", "timed_out", "stopped")


class _ProjectAPI:
    """Base of a Client's per-project APIs: the client's project unless `project=` is given."""

    def __init__(self, client):
        self._client = client

    def _project(self, project):
        project = project or self._client.project
        if not project:
            raise NotInSessionError("WORKBENCH_PROJECT")
        return project


class Jobs(_ProjectAPI):
    """Jobs API of a Client: the jobs of the client's project (or of `project=`)."""

    def list(self, project=None):
        """Every job of the project, as Job objects, by name."""
        project = self._project(project)
        data = self._client.list(f"{_project_path(project)}/jobs", "jobs")
        return [Job(self._client, job) for job in data]

    def get(self, name, project=None):
        """One job by name; WorkbenchError(404) if the project has no such job."""
        project = self._project(project)
        return Job(self._client, self._client.request("GET", _job_path(project, name)))

    def create(
        self,
        name,
        file,
        *,
        project=None,
        arguments=None,
        parameters=None,
        env=None,
        profile=None,
        schedule=None,
        cron=None,
        timezone=None,
        parent=None,
        active=None,
        timeout_seconds=None,
        retry_max=None,
        retry_delay_seconds=None,
        retry_on=None,
        concurrency=None,
        notify=None,
    ):
        """Create a job running `file` (a .py or .ipynb path relative to the project).

        Options left as None take the workbench's defaults (docs/jobs.md): a manual job, no
        timeout, no retries, `forbid` concurrency. Returns the Job; WorkbenchError(400) names
        the field at fault.
        """
        body = {
            "name": name,
            "target": file,
            "arguments": arguments,
            "parameters": parameters,
            "env": env,
            "profile": profile,
            "schedule": schedule,
            "cron": cron,
            "timezone": timezone,
            "parent": parent,
            "active": active,
            "timeout_seconds": timeout_seconds,
            "retry_max": retry_max,
            "retry_delay_seconds": retry_delay_seconds,
            "retry_on": retry_on,
            "concurrency": concurrency,
            "notify": notify,
        }
        project = self._project(project)
        data = self._client.request(
            "POST",
            f"{_project_path(project)}/jobs",
            json={k: v for k, v in body.items() if v is not None},
        )
        return Job(self._client, data)


class _Resource:
    """A JSON object of the API; its fields read as attributes (`job.schedule`)."""

    def __init__(self, client, data):
        self._client = client
        self.data = data

    def __getattr__(self, attr):
        try:
            return self.__dict__["data"][attr]
        except KeyError:
            raise AttributeError(attr) from None


class Job(_Resource):
    """A job of a project. `refresh()` reloads it; runs are started with `run()`."""

    def __repr__(self):
        return f"<workbench.Job {self.data['project']}/{self.data['name']}>"

    @property
    def _path(self):
        return _job_path(self.data["project"], self.data["name"])

    def refresh(self):
        self.data = self._client.request("GET", self._path)
        return self

    def update(self, **fields):
        """Change fields of the job (the REST field names, e.g. `timeout_seconds=60`)."""
        self.data = self._client.request("PATCH", self._path, json=fields)
        return self

    def pause(self):
        self.data = self._client.request("POST", f"{self._path}/pause")
        return self

    def resume(self):
        self.data = self._client.request("POST", f"{self._path}/resume")
        return self

    def delete(self):
        self._client.request("DELETE", self._path)

    def run(self):
        """Run the job now; the new Run (usually still queued: call `wait()`)."""
        return Run(self._client, self._client.request("POST", f"{self._path}/runs"))

    def runs(self):
        """Every run of the job, newest first."""
        runs = self._client.list(f"{self._path}/runs", "runs")
        return [Run(self._client, run) for run in runs]

    def get_run(self, number):
        return Run(self._client, self._client.request("GET", f"{self._path}/runs/{int(number)}"))


class Run(_Resource):
    """One run of a job: `state`, `exit_code`, `message`, `number`, times, …"""

    def __repr__(self):
        return (
            f"<workbench.Run {self.data['project']}/{self.data['job']} #{self.data['number']}"
            f" {self.data['state']}>"
        )

    @property
    def _path(self):
        return f"{_job_path(self.data['project'], self.data['job'])}/runs/{self.data['number']}"

    @property
    def done(self):
        """Whether the run has ended (succeeded, failed, timed_out or stopped)."""
        return self.data["state"] in FINAL_STATES

    def refresh(self):
        self.data = self._client.request("GET", self._path)
        return self

    def wait(self, timeout=None, interval=1.0):
        """Poll until the run ends and return it; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh().done:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"run {self.data['number']} of job {self.data['job']!r} is still"
                    f" {self.data['state']} after {timeout} s"
                )
            time.sleep(interval if deadline is None else min(interval, deadline - time.monotonic()))
        return self

    def logs(self):
        """The run's output so far, as text."""
        return self._client.request_bytes("GET", f"{self._path}/logs").decode(errors="replace")

    def stop(self):
        self.data = self._client.request("POST", f"{self._path}/stop")
        return self

    def rerun(self):
        """Run the job again on the code this run used; the new Run."""
        return Run(self._client, self._client.request("POST", f"{self._path}/rerun"))

    def outputs(self):
        """The run's output files: dicts with `path` and `size`."""
        return self._client.request("GET", f"{self._path}/outputs")["files"]

    def download(self, path):
        """The content (bytes) of output file `path`."""
        return self._client.request_bytes("GET", f"{self._path}/outputs/{quote(path)}")


def _project_path(project):
    return f"projects/{quote(project, safe='')}"


def _job_path(project, job):
    return f"{_project_path(project)}/jobs/{quote(job, safe='')}"
