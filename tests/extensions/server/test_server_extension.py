"""The `/workbench/` API of a session's Jupyter server (the `workbench_lab` extension)."""

import json
import logging

import pytest
from tornado.httpclient import HTTPClientError

from tests.extensions.control_plane import TOKEN, USER


def json_body(response):
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def fetch_error(jp_fetch, *parts, **kwargs):
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch(*parts, **kwargs)
    return caught.value.code, json_body(caught.value.response)


async def test_context_describes_the_session(jp_fetch, control_plane):
    response = await jp_fetch("workbench", "context")
    assert json_body(response) == {
        "project": "churn",
        "read_only": False,
        "api_url": control_plane.api_url,
        "user": USER,
    }


@pytest.mark.parametrize("extra_config", [{"WorkbenchLabApp": {"project": "fraud"}}])
async def test_config_overrides_the_environment(jp_fetch):
    response = await jp_fetch("workbench", "context")
    assert json_body(response)["project"] == "fraud"


async def test_every_route_needs_authentication(jp_fetch, jp_serverapp):
    app = jp_serverapp.extension_manager.extension_points["workbench_lab"].app
    routes = [pattern.strip("/") for pattern, *_ in app.handlers]
    assert routes == [
        "workbench/context",
        "workbench/projects",
        "workbench/api/v1/(.*)",
        "workbench/spark/applications",
        r"workbench/spark/ui/(\d+)/(.*)",
    ]
    # the pattern's groups filled in: a port and a path of the Spark UI, a forwarded path
    urls = [
        route.replace(r"(\d+)/(.*)", "4040/jobs/").replace("(.*)", "projects") for route in routes
    ]
    for url in urls:
        code, _ = await fetch_error(jp_fetch, url, headers={"Authorization": ""})
        assert code == 403, url


async def test_projects_carry_role_session_state_and_current(jp_fetch, control_plane):
    control_plane.hub_servers = {"fraud": {"name": "fraud", "ready": True}}
    projects = json_body(await jp_fetch("workbench", "projects"))["projects"]
    assert [(p["name"], p["role"], p["running"], p["current"]) for p in projects] == [
        ("churn", "contributor", False, True),
        ("fraud", "viewer", True, False),
    ]
    assert control_plane.requests == [
        ("/services/workbench/api/v1/projects", f"token {TOKEN}"),
        ("/hub/api/user", f"token {TOKEN}"),
    ]


async def test_without_hub_server_scope_sessions_come_from_the_control_plane(
    jp_fetch, control_plane
):
    control_plane.sessions = {
        "churn": [{"user": USER, "name": "churn", "ready": True}],
        "fraud": [{"user": "bob", "name": "fraud", "ready": True}],
    }
    projects = json_body(await jp_fetch("workbench", "projects"))["projects"]
    assert {p["name"]: p["running"] for p in projects} == {"churn": True, "fraud": False}


async def test_control_plane_errors_become_502_with_its_message(jp_fetch, control_plane, caplog):
    caplog.set_level(logging.DEBUG)
    control_plane.failure = (500, "database is locked")
    code, body = await fetch_error(jp_fetch, "workbench", "projects")
    assert code == 502
    assert body["message"] == "the workbench control plane answered 500: database is locked"
    assert "database is locked" in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    "extra_config", [{"WorkbenchLabApp": {"api_url": "http://127.0.0.1:9/api/v1"}}]
)
async def test_unreachable_control_plane_is_502(jp_fetch):
    code, body = await fetch_error(jp_fetch, "workbench", "projects")
    assert code == 502
    assert body["message"].startswith(
        "could not reach the workbench control plane at http://127.0.0.1:9/api/v1/projects"
    )


@pytest.mark.parametrize("extra_config", [{"WorkbenchLabApp": {"api_url": ""}}])
async def test_outside_a_session_projects_explains_why(jp_fetch):
    code, body = await fetch_error(jp_fetch, "workbench", "projects")
    assert code == 503
    assert body["message"] == "not inside a workbench session: WORKBENCH_API_URL is not set"


@pytest.fixture
def as_owner(monkeypatch):
    """Requests come from the session's user (as under JupyterHub), not an anonymous one."""
    from jupyter_server.auth.identity import IdentityProvider, User

    monkeypatch.setattr(
        IdentityProvider, "generate_anonymous_user", lambda self, handler: User(username=USER)
    )


async def test_forward_is_for_the_sessions_owner_only(jp_fetch, control_plane):
    code, body = await fetch_error(jp_fetch, "workbench", "api", "v1", "projects")
    assert code == 403
    assert "owner" in body["message"]
    assert control_plane.requests == []


@pytest.mark.usefixtures("as_owner")
async def test_forward_relays_the_control_planes_answer(jp_fetch, control_plane):
    response = await jp_fetch("workbench", "api", "v1", "projects", "churn")
    assert json_body(response)["name"] == "churn"
    assert control_plane.requests == [
        ("/services/workbench/api/v1/projects/churn", f"token {TOKEN}")
    ]
    # an upstream error keeps its status and message (not a 502)
    code, body = await fetch_error(jp_fetch, "workbench", "api", "v1", "projects", "nope")
    assert code == 404
    assert body["message"] == "no project named 'nope'"


@pytest.mark.usefixtures("as_owner")
@pytest.mark.parametrize("path", ["audit", "projects/churn/jobs", "access-keys/resolve"])
async def test_forward_refuses_paths_the_panels_do_not_need(jp_fetch, control_plane, path):
    code, body = await fetch_error(jp_fetch, "workbench", "api", "v1", *path.split("/"))
    assert code == 404
    assert "not forwarded" in body["message"]
    assert control_plane.requests == []
