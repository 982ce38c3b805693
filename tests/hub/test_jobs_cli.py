"""`workbench jobs …` against a real workbench: tables, --json, streaming logs, clear errors."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hub.conftest import EXTRA_CONFIG, unique

SCRIPT = """\
import os, sys
print("args", *sys.argv[1:])
print("env", os.environ.get("COLOUR", ""))
"""
SLOW = "import time\nprint('waiting', flush=True)\ntime.sleep(600)\n"
NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "id": "p",
            "metadata": {"tags": ["parameters"]},
            "source": "rate = 0.1\nlabel = 'x'\n",
            "outputs": [],
            "execution_count": None,
        }
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture(scope="module")
def running(workbench_factory):
    return workbench_factory(extra_config=EXTRA_CONFIG)


@pytest.fixture(scope="module")
def cli(running):
    token = running.user_token("cli-jobs")

    def run(*argv, token=token):
        return running.cli(token, *argv)

    run.url, run.token = running.api_url, token
    return run


@pytest.fixture(scope="module")
def project(cli):
    name = unique("clijobs")
    created = cli("projects", "create", name, "--json")
    assert created.returncode == 0, created.stderr
    path = Path(json.loads(created.stdout)["path"])
    (path / "script.py").write_text(SCRIPT)
    (path / "slow.py").write_text(SLOW)
    (path / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    return name


def ok(result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_create_list_show_pause_resume(cli, project):
    job = unique("nightly")
    created = json.loads(
        ok(
            cli(
                "jobs",
                "create",
                project,
                job,
                "--file",
                "script.py",
                "--arg",
                "one",
                "--arg",
                "two words",
                "--env",
                "COLOUR=blue",
                "--cron",
                "0 2 * * *",
                "--timezone",
                "Europe/Paris",
                "--timeout",
                "120",
                "--retries",
                "2",
                "--retry-delay",
                "30",
                "--concurrency",
                "replace",
                "--notify",
                "ops@example.org",
                "--notify-on",
                "failed,timed_out",
                "--json",
            )
        )
    )
    assert created["arguments"] == ["one", "two words"] and created["env"] == {"COLOUR": "blue"}
    assert (created["schedule"], created["cron"], created["timezone"]) == (
        "cron",
        "0 2 * * *",
        "Europe/Paris",
    )
    assert (created["timeout_seconds"], created["retry_max"], created["retry_delay_seconds"]) == (
        120,
        2,
        30,
    )
    assert created["concurrency"] == "replace" and created["next_run"]
    assert created["notify"]["recipients"] == ["ops@example.org"]
    assert created["notify"]["on"] == ["failed", "timed_out"]

    header, *rows = ok(cli("jobs", "list", project)).splitlines()
    assert header.split() == ["name", "target", "schedule", "active", "last_run", "next_run"]
    [row] = [r for r in rows if r.startswith(job)]
    assert "cron 0 2 * * * Europe/Paris" in row and " yes " in row

    shown = ok(cli("jobs", "show", project, job))
    assert "Europe/Paris" in shown and "one two words" in shown and "COLOUR" in shown
    assert "blue" not in shown, "environment values are not printed in tables"

    paused = ok(cli("jobs", "pause", project, job))
    assert "paused" in paused
    assert json.loads(ok(cli("jobs", "show", project, job, "--json")))["active"] is False
    ok(cli("jobs", "resume", project, job))
    assert json.loads(ok(cli("jobs", "show", project, job, "--json")))["active"] is True


def test_notebook_params_are_parsed_as_json(cli, project):
    job = unique("nb")
    created = cli(
        "jobs",
        "create",
        project,
        job,
        "--file",
        "nb.ipynb",
        "--param",
        "rate=0.5",
        "--param",
        "label=plain text",
        "--json",
    )
    assert json.loads(ok(created))["parameters"] == {"rate": 0.5, "label": "plain text"}
    bad = cli("jobs", "create", project, unique("nb"), "--file", "nb.ipynb", "--param", "nope=1")
    assert bad.returncode == 1
    assert bad.stderr.startswith("workbench: 400:") and "'nope' is not declared" in bad.stderr


def test_run_wait_logs_and_runs(cli, project):
    job = unique("run")
    ok(
        cli(
            "jobs",
            "create",
            project,
            job,
            "--file",
            "script.py",
            "--arg",
            "x",
            "--env",
            "COLOUR=red",
        )
    )
    run = json.loads(ok(cli("jobs", "run", project, job, "--wait", "--json")))
    assert (run["number"], run["state"], run["exit_code"]) == (1, "succeeded", 0)
    assert ok(cli("jobs", "logs", project, job)) == "args x\nenv red\n"
    assert ok(cli("jobs", "logs", project, job, "1", "--follow")) == "args x\nenv red\n"

    ok(cli("jobs", "run", project, job, "--wait"))
    header, _rule, *rows = ok(cli("jobs", "runs", project, job)).splitlines()
    assert header.split()[:4] == ["number", "state", "trigger", "by"]
    assert [r.split()[:4] for r in rows] == [
        ["2", "succeeded", "user", "cli-jobs"],
        ["1", "succeeded", "user", "cli-jobs"],
    ]


def test_follow_and_stop(cli, project):
    job = unique("slow")
    ok(cli("jobs", "create", project, job, "--file", "slow.py", "--timeout", "300"))
    run = json.loads(ok(cli("jobs", "run", project, job, "--json")))
    deadline = time.monotonic() + 60
    while "waiting" not in ok(cli("jobs", "logs", project, job)):
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.3)
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workbench_hub.cli",
            "jobs",
            "logs",
            project,
            job,
            str(run["number"]),
            "--follow",
            "--url",
            cli.url,
            "--token",
            cli.token,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stopper = cli("jobs", "stop", project, job, str(run["number"]))
        out, err = follow.communicate(timeout=120)

    finally:
        follow.kill()
    assert stopper.returncode == 0, stopper.stderr
    assert "stopped" in stopper.stdout and "stopped by cli-jobs" in stopper.stdout
    assert follow.returncode == 0, err
    assert out.startswith("waiting\n"), "follow printed the output and ended with the run"
    again = cli("jobs", "stop", project, job, str(run["number"]))
    assert again.returncode == 1 and again.stderr.startswith("workbench: 409:")


def test_errors_are_one_clear_line(cli, project):
    bad_cron = cli(
        "jobs", "create", project, unique("bad"), "--file", "script.py", "--cron", "nope"
    )
    assert bad_cron.returncode == 1
    assert bad_cron.stderr.startswith("workbench: 400: cron must have 5 fields")
    bad_tz = cli(
        "jobs",
        "create",
        project,
        unique("bad"),
        "--file",
        "script.py",
        "--cron",
        "0 1 * * *",
        "--timezone",
        "Moon/Base",
    )
    assert bad_tz.returncode == 1 and "IANA" in bad_tz.stderr
    bad_env = cli("jobs", "create", project, unique("bad"), "--file", "script.py", "--env", "X")
    assert bad_env.returncode == 1 and "KEY=VALUE" in bad_env.stderr
    missing = cli("jobs", "show", project, "never-made")
    assert missing.returncode == 1 and missing.stderr.startswith("workbench: 404:")
    no_runs = cli("jobs", "create", project, (job := unique("idle")), "--file", "script.py")
    assert no_runs.returncode == 0
    assert "has no runs yet" in cli("jobs", "logs", project, job).stderr
