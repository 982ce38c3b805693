"""How a job run becomes a runtime workload: pure builders, unit-tested without processes."""

import json
import secrets
import sys

from workbench_hub.runtime.base import LABEL_PREFIX, Resources, VolumeMount, WorkloadSpec

RUN_LABEL = LABEL_PREFIX + "job-run"
JOB_LABEL = LABEL_PREFIX + "job"


def workload_name(run_id: int) -> str:
    """A runtime name for a run: unique even if a database is reset on the same runtime."""
    return f"run-{run_id}-{secrets.token_hex(3)}"


def run_command(
    target: str,
    arguments: list[str],
    parameters: dict,
    output_dir: str,
    python: str = sys.executable,
    kernel: str = "python3",
) -> list[str]:
    """argv of a run: ``python target args…`` for scripts, the notebook runner for notebooks."""
    if target.endswith(".ipynb"):
        return [
            python,
            "-m",
            "workbench_hub.jobs.notebook",
            target,
            output_dir,
            json.dumps(parameters),
            "--kernel",
            kernel,
        ]
    return [python, target, *arguments]


def run_env(
    job_env: dict[str, str],
    *,
    project: str,
    job: str,
    run_number: int,
    output_dir: str,
    api_url: str = "",
    token: str | None = None,
) -> dict[str, str]:
    """The environment of a run: the job's variables plus the ``WORKBENCH_*`` ones."""
    env = {str(key): str(value) for key, value in job_env.items()}
    env.update(
        WORKBENCH_PROJECT=project,
        WORKBENCH_JOB=job,
        WORKBENCH_RUN=str(run_number),
        WORKBENCH_OUTPUT_DIR=output_dir,
        PYTHONUNBUFFERED="1",
    )
    if api_url:
        env["WORKBENCH_API_URL"] = api_url
    if token:
        env["WORKBENCH_TOKEN"] = token
    return env


def make_run_spec(
    *,
    name: str,
    run_id: int,
    user: str,
    project: str,
    job: str,
    command: list[str],
    working_dir: str,
    env: dict[str, str],
    volumes: list[VolumeMount],
    resources: Resources | None = None,
    timeout_seconds: int | None = None,
) -> WorkloadSpec:
    """The WorkloadSpec of a job run, labelled with its run id and job name. `volumes` are
    every directory it uses: its project's, and a rerun's snapshot working directory."""
    return WorkloadSpec(
        name=name,
        kind="job-run",
        user=user,
        project=project,
        command=command,
        working_dir=working_dir,
        env=env,
        volumes=volumes,
        resources=resources or Resources(),
        labels={RUN_LABEL: str(run_id), JOB_LABEL: job},
        timeout_seconds=timeout_seconds,
    )


def profile_resources(profile: dict | None) -> Resources:
    """Runtime resources of a parsed resource profile (no limits for None)."""
    if profile is None:
        return Resources()
    return Resources(cpu=profile["cpu"], memory=profile["memory"], gpu=profile.get("gpu", 0))
