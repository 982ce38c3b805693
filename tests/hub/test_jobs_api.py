"""Jobs and runs through the REST API and the SDK of a real workbench, on SQLite and PostgreSQL."""

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

import workbench
from tests.hub.conftest import Api, unique

SCRIPT = """\
import os, pathlib, sys
print("hello from", os.environ["WORKBENCH_JOB"], *sys.argv[1:])
print("GREETING", os.environ.get("GREETING", ""))
pathlib.Path(os.environ["WORKBENCH_OUTPUT_DIR"], "result.txt").write_text("42")
"""
SLOW = """\
import sys, time
print("start", flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 600)
print("end", flush=True)
"""
NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "id": "params",
            "metadata": {"tags": ["parameters"]},
            "source": "alpha = 1\nbeta: str = 'b'\n",
            "outputs": [],
            "execution_count": None,
        },
        {
            "cell_type": "code",
            "id": "body",
            "metadata": {},
            "source": "print(alpha, beta)",
            "outputs": [],
            "execution_count": None,
        },
    ],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}
FINAL = ("succeeded", "failed", "timed_out", "stopped")


def events(admin: Api, **filters) -> list[dict]:
    return admin("GET", "/audit", 200, params=filters)["events"]


def jobs_url(project: str, *rest) -> str:
    return "/".join([f"/projects/{project}/jobs", *map(str, rest)])


def wait_run(client: Api, project: str, job: str, number: int, states=FINAL, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client("GET", jobs_url(project, job, "runs", number), 200)
        if run["state"] in states:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {number} of {job} not in {states} after {timeout}s: {run}")


@pytest.fixture(scope="module")
def project(wb, user):
    """A project of alice with a script, a slow script, a notebook and a text file."""
    alice = user("alice", groups=["eng"])
    name = unique("jobs")
    path = Path(alice("POST", "/projects", 201, json={"name": name})["path"])
    (path / "script.py").write_text(SCRIPT)
    (path / "slow.py").write_text(SLOW)
    (path / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    (path / "notes.txt").write_text("not runnable\n")
    (path / "sub").mkdir()
    (path / "sub" / "inner.py").write_text("print('inner')\n")
    os.symlink("/etc/hostname", path / "escape.py")
    return name, path


@pytest.fixture(scope="module")
def other_project(user):
    alice = user("alice", groups=["eng"])
    name = unique("other")
    path = Path(alice("POST", "/projects", 201, json={"name": name})["path"])
    (path / "x.py").write_text("print('x')\n")
    alice("POST", jobs_url(name), 201, json={"name": "x", "target": "x.py"})
    return name


# ---------------------------------------------------------------- definitions


def test_create_list_get_update_pause_resume_delete(project, user, admin):
    alice = user("alice", groups=["eng"])
    name, _ = project
    job = unique("life")
    created = alice(
        "POST",
        jobs_url(name),
        201,
        json={
            "name": job,
            "target": "./script.py",
            "arguments": ["--fast", "two words"],
            "env": {"GREETING": "hi"},
            "retry_max": 2,
            "retry_delay_seconds": 5,
            "notify": {"recipients": ["alice@example.org"], "on": ["failed"]},
        },
    )
    assert created["target"] == "script.py" and created["project"] == name
    assert created["arguments"] == ["--fast", "two words"] and created["env"] == {"GREETING": "hi"}
    assert created["schedule"] == "manual" and created["active"] is True
    assert created["profile"] == "small" and created["created_by"] == "alice"
    assert created["concurrency"] == "forbid" and created["retry_on"] == ["failed", "timed_out"]
    assert created["notify"] == {
        "recipients": ["alice@example.org"],
        "on": ["failed"],
        "attach_notebook": False,
        "attach_log": False,
    }
    assert created["next_run"] is None and created["last_run"] is None and created["parent"] is None

    assert job in [j["name"] for j in alice("GET", jobs_url(name), 200)["jobs"]]
    assert alice("GET", jobs_url(name, job), 200) == created

    updated = alice(
        "PATCH",
        jobs_url(name, job),
        200,
        json={"cron": "30 6 * * *", "timezone": "Europe/Paris", "timeout_seconds": 60},
    )
    assert updated["schedule"] == "cron" and updated["timeout_seconds"] == 60
    assert updated["arguments"] == created["arguments"], "fields left out keep their values"
    next_run = datetime.fromisoformat(updated["next_run"])
    assert next_run > datetime.now(UTC)
    local = next_run.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (6, 30)
    assert updated["updated"] > created["updated"]

    paused = alice("POST", jobs_url(name, job, "pause"), 200)
    assert paused["active"] is False and paused["next_run"] is None
    resumed = alice("POST", jobs_url(name, job, "resume"), 200)
    assert resumed["active"] is True and resumed["next_run"] == updated["next_run"]

    back = alice("PATCH", jobs_url(name, job), 200, json={"schedule": "manual"})
    assert (back["cron"], back["timezone"], back["next_run"]) == (None, None, None)
    alice.error("PATCH", jobs_url(name, job), 400, field="name", json={"name": "renamed"})

    alice("DELETE", jobs_url(name, job), 204)
    alice.error("GET", jobs_url(name, job), 404)
    alice.error("DELETE", jobs_url(name, job), 404)
    actions = [e["action"] for e in events(admin, object_id=f"{name}/{job}", object_type="job")]
    assert actions == [
        "job.deleted",
        "job.updated",
        "job.resumed",
        "job.paused",
        "job.updated",
        "job.created",
    ]
    assert {e["actor"] for e in events(admin, object_id=f"{name}/{job}")} == {"alice"}
    assert "hi" not in json.dumps(events(admin, object_id=f"{name}/{job}")), "env values"


def test_notebook_job_with_declared_parameters(project, user):
    alice = user("alice", groups=["eng"])
    name, _ = project
    created = alice(
        "POST",
        jobs_url(name),
        201,
        json={"name": unique("nb"), "target": "nb.ipynb", "parameters": {"alpha": 5, "beta": "x"}},
    )
    assert created["parameters"] == {"alpha": 5, "beta": "x"}


def test_duplicate_name_is_409(project, user):
    alice = user("alice", groups=["eng"])
    name, _ = project
    job = unique("dup")
    alice("POST", jobs_url(name), 201, json={"name": job, "target": "script.py"})
    alice.error("POST", jobs_url(name), 409, field="name", json={"name": job, "target": "slow.py"})
    assert alice("GET", jobs_url(name, job), 200)["target"] == "script.py"


BAD_BODIES = [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "every day"}, "cron"),
    ({"cron": "0 0 30 2 *"}, "cron"),
    ({"cron": "0 6 * * *", "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"cron": "0 6 * * *", "timezone": "../../etc/passwd"}, "timezone"),
    ({"timezone": "Europe/Paris"}, "timezone"),
    ({"target": "nb.ipynb", "parameters": {"gamma": 1}}, "parameters"),
    ({"target": "nb.ipynb", "arguments": ["x"]}, "arguments"),
    ({"parameters": {"alpha": 1}}, "parameters"),
    ({"target": "missing.py"}, "target"),
    ({"target": "notes.txt"}, "target"),
    ({"target": "../outside.py"}, "target"),
    ({"target": "/etc/passwd.py"}, "target"),
    ({"target": "escape.py"}, "target"),
    ({"target": "sub"}, "target"),
    ({"parent": "no-such-job"}, "parent"),
    ({"schedule": "dependent"}, "parent"),
    ({"schedule": "weekly"}, "schedule"),
    ({"timeout_seconds": -5}, "timeout_seconds"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"timeout_seconds": 2**40}, "timeout_seconds"),
    ({"timeout_seconds": "10"}, "timeout_seconds"),
    ({"retry_max": -1}, "retry_max"),
    ({"retry_max": 1.5}, "retry_max"),
    ({"retry_delay_seconds": -1}, "retry_delay_seconds"),
    ({"retry_on": ["succeeded"]}, "retry_on"),
    ({"concurrency": "sometimes"}, "concurrency"),
    ({"arguments": "--fast"}, "arguments"),
    ({"arguments": [1, 2]}, "arguments"),
    ({"env": {"GREETING": 1}}, "env"),
    ({"env": {"1BAD": "x"}}, "env"),
    ({"env": {"WORKBENCH_TOKEN": "x"}}, "env"),
    ({"active": "yes"}, "active"),
    ({"notify": {"recipients": ["not-an-email"]}}, "notify"),
    ({"notify": {"recipients": ["a@example.org"], "on": ["queued"]}}, "notify"),
    ({"notify": {"to": ["a@example.org"]}}, "notify"),
    ({"profile": "gpu"}, "profile"),
    ({"profile": "huge"}, "profile"),
    ({"colour": "red"}, "colour"),
    ({"name": "Bad_Name"}, "name"),
    ({"name": None}, "name"),
]


@pytest.mark.parametrize(("change", "field"), BAD_BODIES)
def test_create_rejects_bad_input(project, user, change, field):
    alice = user("alice", groups=["eng"])
    name, _ = project
    job = unique("bad")
    body = {"name": job, "target": "script.py", **change}
    message = alice.error("POST", jobs_url(name), 400, field=field, json=body)
    assert field in message or field in ("name", "target", "parent", "colour")
    assert job not in [j["name"] for j in alice("GET", jobs_url(name), 200)["jobs"]]


def test_missing_fields_and_malformed_bodies(project, user):
    alice = user("alice", groups=["eng"])
    name, _ = project
    alice.error("POST", jobs_url(name), 400, field="name", json={"target": "script.py"})
    alice.error("POST", jobs_url(name), 400, field="target", json={"name": unique("j")})
    assert "not valid JSON" in alice.error("POST", jobs_url(name), 400, content=b"{nope")
    assert "JSON object" in alice.error("POST", jobs_url(name), 400, content=b"[]")


def test_messages_name_the_problem(project, other_project, user):
    alice = user("alice", groups=["eng"])
    name, _ = project
    job = unique("msg")

    def create(**change):
        body = {"name": job, "target": "script.py", **change}
        return alice("POST", jobs_url(name), 400, json=body)["message"]

    assert "'gamma' is not declared" in create(target="nb.ipynb", parameters={"gamma": 1})
    assert create(target="escape.py") == "target must be a file inside the project"
    assert create(target="../x.py") == "target must be a file inside the project"
    assert "does not exist" in create(target="missing.py")
    assert create(parent=f"{other_project}/x").startswith(f"parent must be a job of project {name}")
    assert create(parent="x").startswith(f"parent must be a job of project {name}")
    assert "IANA" in create(cron="0 6 * * *", timezone="Nowhere/Land")
    assert "> 0" in create(timeout_seconds=-1)


def test_cycles_are_refused(project, user):
    alice = user("alice", groups=["eng"])
    name, _ = project
    a, b, c = unique("a"), unique("b"), unique("c")
    alice("POST", jobs_url(name), 201, json={"name": a, "target": "script.py"})
    child = alice("POST", jobs_url(name), 201, json={"name": b, "target": "script.py", "parent": a})
    assert (child["schedule"], child["parent"]) == ("dependent", a)
    alice("POST", jobs_url(name), 201, json={"name": c, "target": "script.py", "parent": b})

    message = alice.error("PATCH", jobs_url(name, a), 400, field="parent", json={"parent": c})
    assert message == f"this would make a cycle: {a} → {c} → {b} → {a}"
    message = alice.error("PATCH", jobs_url(name, a), 400, field="parent", json={"parent": a})
    assert message == f"this would make a cycle: {a} → {a}"
    assert alice("GET", jobs_url(name, a), 200)["parent"] is None

    # a parent with children cannot be deleted; the leaf first, then the rest
    assert b in alice.error("DELETE", jobs_url(name, a), 409)
    alice("DELETE", jobs_url(name, c), 204)
    alice("DELETE", jobs_url(name, b), 204)
    alice("DELETE", jobs_url(name, a), 204)


def test_failed_update_changes_nothing(project, user):
    alice = user("alice", groups=["eng"])
    name, _ = project
    job = unique("keep")
    before = alice("POST", jobs_url(name), 201, json={"name": job, "target": "script.py"})
    alice.error(
        "PATCH",
        jobs_url(name, job),
        400,
        field="timezone",
        json={"timeout_seconds": 9, "cron": "0 1 * * *", "timezone": "Atlantis/Capital"},
    )
    alice.error("PATCH", jobs_url(name, job), 400, field="target", json={"target": "gone.py"})
    assert alice("GET", jobs_url(name, job), 200) == before


# ---------------------------------------------------------------- roles


def test_roles(project, user, admin):
    alice = user("alice", groups=["eng"])
    viewer, operator, stranger = user("vic"), user("otto"), user("mallory")
    name, _ = project
    alice("PUT", f"/projects/{name}/collaborators/vic", 200, json={"role": "viewer"})
    alice("PUT", f"/projects/{name}/collaborators/otto", 200, json={"role": "operator"})
    job = unique("roles")
    alice("POST", jobs_url(name), 201, json={"name": job, "target": "slow.py", "arguments": ["30"]})

    # strangers: the project does not exist for them
    for method, path in [
        ("GET", jobs_url(name)),
        ("GET", jobs_url(name, job)),
        ("POST", jobs_url(name, job, "runs")),
        ("GET", jobs_url(name, job, "runs")),
        ("DELETE", jobs_url(name, job)),
    ]:
        stranger.error(method, path, 404)

    # viewers read, but neither run nor edit
    assert viewer("GET", jobs_url(name, job), 200)["name"] == job
    assert viewer("GET", jobs_url(name, job, "runs"), 200) == {"runs": [], "next": None}
    assert "operator" in viewer.error("POST", jobs_url(name, job, "runs"), 403)
    viewer.error("POST", jobs_url(name), 403, json={"name": "v", "target": "script.py"})

    # operators run and stop, but do not edit
    run = operator("POST", jobs_url(name, job, "runs"), 201)
    assert (run["number"], run["trigger"], run["triggered_by"]) == (1, "user", "otto")
    viewer.error("POST", jobs_url(name, job, "runs", 1, "stop"), 403)
    for method, path, body in [
        ("PATCH", jobs_url(name, job), {"timeout_seconds": 5}),
        ("POST", jobs_url(name, job, "pause"), None),
        ("POST", jobs_url(name, job, "resume"), None),
        ("DELETE", jobs_url(name, job), None),
        ("POST", jobs_url(name), {"name": "o", "target": "script.py"}),
    ]:
        assert "contributor" in operator.error(method, path, 403, json=body)
    stopped = operator("POST", jobs_url(name, job, "runs", 1, "stop"), 200)
    assert stopped["state"] == "stopped" and stopped["message"] == "stopped by otto"
    assert alice("GET", jobs_url(name, job), 200)["timeout_seconds"] is None

    denied = [e for e in events(admin, actor="otto") if e["outcome"] == "denied"]
    assert len(denied) >= 5
    [triggered] = events(admin, object_id=f"{name}/{job}/1", action="job.run.queue")
    assert (triggered["actor"], triggered["detail"]["trigger"]) == ("otto", "user")
    [stop_event] = events(admin, object_id=f"{name}/{job}/1", action="job.run.stopped")
    assert stop_event["actor"] == "otto"


# ---------------------------------------------------------------- runs


def test_script_run_logs_and_outputs(wb, project, user, admin):
    alice = user("alice", groups=["eng"])
    name, _ = project
    job = unique("script")
    alice(
        "POST",
        jobs_url(name),
        201,
        json={"name": job, "target": "script.py", "arguments": ["a b"], "env": {"GREETING": "hi"}},
    )
    run = alice("POST", jobs_url(name, job, "runs"), 201)
    assert run["state"] in ("queued", "running") and run["number"] == 1
    done = wait_run(alice, name, job, 1)
    assert (done["state"], done["exit_code"]) == ("succeeded", 0), done
    assert done["started_at"] and done["finished_at"] >= done["started_at"]
    assert done["code_hash"]

    logs = alice.raw("GET", jobs_url(name, job, "runs", 1, "logs"))
    assert logs.status_code == 200 and logs.headers["content-type"].startswith("text/plain")
    assert f"hello from {job} a b\nGREETING hi\n" in logs.text
    followed = alice.raw("GET", jobs_url(name, job, "runs", 1, "logs"), params={"follow": "true"})
    assert followed.text == logs.text, "following an ended run prints it and ends"
    alice.error(
        "GET", jobs_url(name, job, "runs", 1, "logs"), 400, field="follow", params={"follow": "x"}
    )

    files = alice("GET", jobs_url(name, job, "runs", 1, "outputs"), 200)["files"]
    assert {"path": "result.txt", "size": 2} in files
    assert "output.log" in [f["path"] for f in files]
    result = alice.raw("GET", jobs_url(name, job, "runs", 1, "outputs", "result.txt"))
    assert result.status_code == 200 and result.text == "42"
    assert result.headers["content-security-policy"] == "sandbox"
    for bad in ["missing.txt", "..%2F..%2F..%2Fscript.py", "%2Fetc%2Fpasswd"]:
        alice.error("GET", jobs_url(name, job, "runs", 1, "outputs", bad), 404)
    alice.error("GET", jobs_url(name, job, "runs", 2), 404)
    alice.error("GET", jobs_url(name, job, "runs", 99999999999), 404)

    second = alice("POST", jobs_url(name, job, "runs"), 201)
    wait_run(alice, name, job, second["number"])
    runs = alice("GET", jobs_url(name, job, "runs"), 200)["runs"]
    assert [r["number"] for r in runs] == [2, 1]
    assert alice("GET", jobs_url(name, job), 200)["last_run"]["number"] == 2

    rerun = alice("POST", jobs_url(name, job, "runs", 1, "rerun"), 201)
    assert (rerun["number"], rerun["trigger"], rerun["triggered_by"]) == (3, "rerun", "alice")
    assert wait_run(alice, name, job, 3)["code_hash"] == done["code_hash"]
    queued = events(admin, object_type="job_run", actor="alice", action="job.run.queue")
    assert {e["detail"]["trigger"] for e in queued} == {"user", "rerun"}
    assert [e["detail"].get("rerun_of") for e in queued if e["detail"]["trigger"] == "rerun"] == [1]


def test_follow_streams_while_the_run_goes(wb, project, user):
    """Each line reaches the client as it comes, through the hub's proxy."""
    alice = user("alice", groups=["eng"])
    name, _ = project
    job = unique("follow")
    alice("POST", jobs_url(name), 201, json={"name": job, "target": "slow.py", "arguments": ["3"]})
    alice("POST", jobs_url(name, job, "runs"), 201)
    url = wb.api_url + jobs_url(name, job, "runs", 1, "logs")
    seen, state_at_first_line = "", None
    with httpx.stream(
        "GET", url, params={"follow": "true"}, headers=alice.headers, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        for text in response.iter_text():
            if not seen and "start" in text:
                state_at_first_line = alice("GET", jobs_url(name, job, "runs", 1), 200)["state"]
            seen += text
    assert seen == "start\nend\n"
    assert state_at_first_line == "running", "the first line arrived while the run went on"
    assert wait_run(alice, name, job, 1, timeout=10)["state"] == "succeeded"


def test_stop_a_running_run_and_forbid_overlaps(project, user):
    alice = user("alice", groups=["eng"])
    name, _ = project
    job = unique("stop")
    alice("POST", jobs_url(name), 201, json={"name": job, "target": "slow.py"})
    alice("POST", jobs_url(name, job, "runs"), 201)
    wait_run(alice, name, job, 1, states=("running",))
    assert "already has run 1" in alice.error("POST", jobs_url(name, job, "runs"), 409)
    alice.error("DELETE", jobs_url(name, job), 409)

    started = time.monotonic()
    stopped = alice("POST", jobs_url(name, job, "runs", 1, "stop"), 200)
    assert stopped["state"] == "stopped" and stopped["message"] == "stopped by alice"
    assert time.monotonic() - started < 30
    assert "already ended" in alice.error("POST", jobs_url(name, job, "runs", 1, "stop"), 409)
    logs = alice.raw("GET", jobs_url(name, job, "runs", 1, "logs")).text
    assert "start" in logs and "end" not in logs
    alice("DELETE", jobs_url(name, job), 204)


def test_deleted_target_fails_the_next_run_clearly(project, user):
    alice = user("alice", groups=["eng"])
    name, path = project
    job = unique("gone")
    (path / f"{job}.py").write_text("print('soon gone')\n")
    alice("POST", jobs_url(name), 201, json={"name": job, "target": f"{job}.py"})
    (path / f"{job}.py").unlink()
    alice("POST", jobs_url(name, job, "runs"), 201)
    run = wait_run(alice, name, job, 1)
    assert run["state"] == "failed" and f"{job}.py" in run["message"], run


# ---------------------------------------------------------------- SDK


def test_sdk_create_run_wait_logs(wb, project):
    name, _ = project
    client = workbench.Client(api_url=wb.api_url, token=wb.user_token("alice"), project=name)
    job_name = unique("sdk")
    with client:
        job = client.jobs.create(job_name, "script.py", arguments=["sdk"], env={"GREETING": "yo"})
        assert (job.name, job.target, job.schedule) == (job_name, "script.py", "manual")
        run = job.run()
        assert run.number == 1 and run.state in ("queued", "running")
        assert run.wait(timeout=90) is run
        assert (run.state, run.exit_code) == ("succeeded", 0), run.message
        assert f"hello from {job_name} sdk" in run.logs()
        assert "GREETING yo" in run.logs()
        assert {"path": "result.txt", "size": 2} in run.outputs()
        assert run.download("result.txt") == b"42"

        assert job_name in [j.name for j in client.jobs.list()]
        assert client.jobs.get(job_name).refresh().last_run["state"] == "succeeded"
        assert job.pause().active is False and job.resume().active is True

        with pytest.raises(workbench.WorkbenchError) as caught:
            client.jobs.create(unique("sdk"), "script.py", cron="not cron")
        assert caught.value.status == 400 and "cron" in caught.value.message
        with pytest.raises(workbench.WorkbenchError) as caught:
            client.jobs.get("no-such-job")
        assert caught.value.status == 404

        slow = client.jobs.create(unique("sdk-slow"), "slow.py")
        running = slow.run()
        with pytest.raises(TimeoutError, match="still"):
            running.wait(timeout=0.5, interval=0.1)
        assert running.stop().state == "stopped"
        assert running.wait(timeout=5).message == "stopped by alice"


def test_sdk_in_a_session_environment(wb, project, monkeypatch):
    name, _ = project
    monkeypatch.setenv("WORKBENCH_API_URL", wb.api_url)
    monkeypatch.setenv("WORKBENCH_TOKEN", wb.user_token("alice"))
    monkeypatch.setenv("WORKBENCH_PROJECT", name)
    job_name = unique("env")
    job = workbench.jobs.create(job_name, "sub/inner.py")
    assert workbench.jobs.get(job_name).target == "sub/inner.py"
    run = job.run().wait(timeout=90)
    assert run.state == "succeeded" and run.logs() == "inner\n"


def test_deleting_a_project_removes_its_pipelines(user):
    alice = user("alice", groups=["eng"])
    name = unique("pipeline")
    path = Path(alice("POST", "/projects", 201, json={"name": name})["path"])
    (path / "step.py").write_text("print('step')\n")
    alice("POST", jobs_url(name), 201, json={"name": "a", "target": "step.py"})
    alice("POST", jobs_url(name), 201, json={"name": "b", "target": "step.py", "parent": "a"})
    alice("POST", jobs_url(name), 201, json={"name": "c", "target": "step.py", "parent": "b"})
    alice("DELETE", f"/projects/{name}?confirm={name}", 204)
    alice.error("GET", jobs_url(name), 404)
    # a new project of the same name starts without jobs
    alice("POST", "/projects", 201, json={"name": name})
    assert alice("GET", jobs_url(name), 200) == {"jobs": [], "next": None}
