"""WorkbenchLocalSpawner: authorization, the session's process, audit and state."""

import asyncio
import json
import logging
import os
import resource
import sys

import pytest
from jupyterhub.spawner import SpawnException

from tests.spawner.conftest import SERVICE_TOKEN, GiB

#: Stands in for jupyterhub-singleuser: records what a session sees, then idles.
RECORDER = """
import json, os, resource, sys, time
seen = {
    "argv": sys.argv[2:],
    "env": dict(os.environ),
    "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
    "cpus": sorted(os.sched_getaffinity(0)),
}
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(seen, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(float(os.environ.get("LISTEN_AFTER", "0")))
import socket, urllib.parse
port = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port
server = socket.create_server(("127.0.0.1", port))
time.sleep(60)
"""

EXTENSION_ARG = "--ServerApp.jpserver_extensions=workbench_lab=True"
NO_TERMINALS_ARG = "--ServerApp.terminals_enabled=False"


async def until(check, timeout=10.0):
    """Wait until `check()` is truthy and return its value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := check()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)
    return value


@pytest.fixture
def recording_spawner(make_spawner, tmp_path):
    """`recording_spawner(server, user_options, **traits)` → (spawner, read_seen)."""

    def make(server="demo", user_options=None, **traits):
        seen = tmp_path / f"seen-{server}.json"
        spawner = make_spawner(
            server, user_options, cmd=[sys.executable, "-c", RECORDER, str(seen)], **traits
        )

        async def read_seen():
            await until(seen.exists)
            return json.loads(seen.read_text())

        return spawner, read_seen

    return make


def events(routes, action):
    return [e for e in routes.events if e["action"] == action]


async def test_session_environment_limits_audit_and_state(recording_spawner, routes, tmp_path):
    spawner, read_seen = recording_spawner("demo")
    ip, port = await spawner.start()
    assert ip == "127.0.0.1"
    assert port > 0
    seen = await read_seen()
    env = seen["env"]

    assert env["WORKBENCH_API_URL"] == "http://public.example:8000/services/workbench/api/v1"
    assert env["CDSW_API_URL"] == env["WORKBENCH_API_URL"]
    assert env["WORKBENCH_PROJECT"] == env["CDSW_PROJECT"] == "demo"
    assert env["WORKBENCH_TOKEN"] == env["JUPYTERHUB_API_TOKEN"] == "session-token"
    assert env["WORKBENCH_READ_ONLY"] == "0"
    assert env["JUPYTERHUB_ROOT_DIR"] == str(tmp_path / "demo")
    assert env["JUPYTERHUB_DEFAULT_URL"] == "/lab"
    assert env["MEM_LIMIT"] == str(GiB)
    assert env["CPU_LIMIT"] == "0.5"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["OMP_NUM_THREADS"] == "1"
    assert SERVICE_TOKEN not in json.dumps(seen)
    assert EXTENSION_ARG in seen["argv"]
    assert NO_TERMINALS_ARG not in seen["argv"]

    # profile "small": 1 GiB address space, ceil(0.5) = 1 core of the hub's
    assert seen["rlimit_as"] == GiB
    assert len(seen["cpus"]) == 1
    assert set(seen["cpus"]) <= os.sched_getaffinity(0)

    started = await until(lambda: events(routes, "session.started"))
    assert started == [
        {
            "actor": "ana",
            "action": "session.started",
            "object_type": "session",
            "object_id": "ana/demo",
            "outcome": "success",
            "detail": {"profile": "small"},
        }
    ]
    state = spawner.get_state()
    assert state == {"pid": spawner.pid, "project": "demo", "profile": "small"}

    await spawner.stop()
    assert await spawner.poll() is not None
    assert [e["action"] for e in routes.events] == ["session.started", "session.stopped"]
    assert routes.events[1]["detail"] == {"profile": "small"}
    assert "project" not in spawner.get_state()


async def test_viewer_session_is_read_only_with_the_requested_profile(recording_spawner):
    spawner, read_seen = recording_spawner("docs", {"profile": "large"})
    await spawner.start()
    seen = await read_seen()
    assert seen["env"]["WORKBENCH_READ_ONLY"] == "1"
    assert NO_TERMINALS_ARG in seen["argv"]
    # profile "large": 4 GiB, 64 CPUs capped to what the machine has, 1 GPU not hidden
    assert seen["rlimit_as"] == 4 * GiB
    assert set(seen["cpus"]) == os.sched_getaffinity(0)
    assert "CUDA_VISIBLE_DEVICES" not in seen["env"]
    assert spawner.get_state()["profile"] == "large"
    await spawner.stop()


async def test_start_returns_once_the_server_accepts_connections(recording_spawner):
    spawner, _ = recording_spawner("demo", environment={"LISTEN_AFTER": "0.5"})
    ip, port = await spawner.start()
    try:
        # No backoff left for the hub: the port answers as soon as start() returns.
        _, writer = await asyncio.open_connection(ip or "127.0.0.1", port)
        writer.close()
    finally:
        await spawner.stop(now=True)


async def test_limits_can_be_turned_off(recording_spawner):
    spawner, read_seen = recording_spawner("demo", enforce_limits=False)
    await spawner.start()
    seen = await read_seen()
    assert seen["rlimit_as"] == resource.getrlimit(resource.RLIMIT_AS)[0]
    assert set(seen["cpus"]) == os.sched_getaffinity(0)
    assert "CUDA_VISIBLE_DEVICES" not in seen["env"]
    assert seen["env"]["MEM_LIMIT"] == str(GiB)
    await spawner.stop()


@pytest.mark.parametrize(
    ("server", "user_options", "status", "message"),
    [
        ("", {}, 400, "Sessions run per project: start a named server whose name is"),
        ("secret", {}, 403, "You have no role on project secret"),
        (
            "demo",
            {"profile": "huge"},
            403,
            "Profile 'huge' is not available to you. Choose one of: small, large.",
        ),
        (
            "demo",
            {"project": "docs"},
            400,
            "A session's server name is its project name: server 'demo' cannot run project 'docs'.",
        ),
        ("demo", {"profile": 5}, 400, "profile must be a name, got 5"),
    ],
)
async def test_refused_spawns_say_why(make_spawner, routes, server, user_options, status, message):
    spawner = make_spawner(server, user_options)
    with pytest.raises(SpawnException) as err:
        await spawner.start()
    assert err.value.status_code == status
    assert err.value.message.startswith(message)
    assert spawner.pid == 0
    await spawner.stop()
    assert routes.events == []


async def test_unreachable_or_refusing_control_plane(make_spawner):
    spawner = make_spawner("demo", workbench_api_url="http://127.0.0.1:1/api/v1")
    with pytest.raises(SpawnException) as err:
        await spawner.start()
    assert err.value.status_code == 503
    assert err.value.message == (
        "Cannot read your projects from the workbench: "
        "the workbench control plane is unreachable (ConnectError)"
    )
    spawner = make_spawner("demo", workbench_api_token="wrong")
    with pytest.raises(SpawnException, match="not the workbench service"):
        await spawner.get_options_form()


async def test_audit_failure_never_breaks_a_session(recording_spawner, routes, caplog):
    routes.audit_status = 500
    spawner, read_seen = recording_spawner("demo")
    with caplog.at_level(logging.WARNING):
        await spawner.start()
        await read_seen()
        assert await spawner.poll() is None
        await until(lambda: "Could not record session.started" in caplog.text)
        await spawner.stop()
    assert "Could not record session.stopped" in caplog.text
    assert "audit store down" in caplog.text
    assert SERVICE_TOKEN not in caplog.text
    assert "session-token" not in caplog.text


async def test_hub_restart_stops_the_session_from_saved_state(
    recording_spawner, make_spawner, routes
):
    spawner, read_seen = recording_spawner("demo", {"profile": "large"})
    await spawner.start()
    await read_seen()
    await until(lambda: events(routes, "session.started"))

    restarted = make_spawner("demo")
    restarted.load_state(json.loads(json.dumps(spawner.get_state())))
    assert await restarted.poll() is None
    # the old hub is gone: something else (init, here a thread) reaps the session's process
    reaped = asyncio.create_task(asyncio.to_thread(spawner.proc.wait))
    await restarted.stop()
    assert await reaped == -2  # ended by the SIGINT of a graceful stop
    assert events(routes, "session.stopped")[0]["detail"] == {"profile": "large"}


async def test_spawn_form_from_current_spawn_options(make_spawner, routes, tmp_path):
    form = await make_spawner("docs").get_options_form()
    assert '<option value="docs" selected>docs (viewer, read-only)</option>' in form
    assert '<option value="small" selected>Small — 0.5 CPU · 1 GiB</option>' in form

    form = await make_spawner("secret").get_options_form()
    assert "You have no role on project secret." in form
    assert '<a href="/hub/spawn/ana/demo">demo</a>' in form


def test_form_submission_becomes_user_options(make_spawner):
    spawner = make_spawner("demo")
    submitted = {"project": ["demo"], "profile": ["large"]}
    assert spawner.run_options_from_form(submitted) == {"project": "demo", "profile": "large"}


def test_session_token_can_reach_the_control_plane(make_spawner):
    assert set(make_spawner("demo").server_token_scopes) == {
        "users:activity!user",
        "access:servers!server",
        "read:servers!user",
        "access:services!service=workbench",
        "custom:workbench:use",
    }


async def test_project_path_is_used_literally(recording_spawner, routes, tmp_path):
    odd = tmp_path / "{username}"
    odd.mkdir()
    routes.spawn_options["ana"]["projects"][0]["path"] = str(odd)
    spawner, read_seen = recording_spawner("demo")
    await spawner.start()
    assert (await read_seen())["env"]["JUPYTERHUB_ROOT_DIR"] == str(odd)
    await spawner.stop()
