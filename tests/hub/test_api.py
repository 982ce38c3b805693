"""The REST API through a real JupyterHub, on SQLite and on PostgreSQL."""

import os
import re
import time
from pathlib import Path

import pytest

from tests.hub.conftest import Api, documented_template, openapi, unique
from workbench_hub.handlers import api_handlers

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def project_dir(wb, name: str) -> Path:
    return wb.data_dir / "projects" / name


def events(admin: Api, **filters) -> list[dict]:
    return admin("GET", "/audit", 200, params=filters)["events"]


# ---------------------------------------------------------------- authentication


#: route parameters whose pattern "sample" does not match
SAMPLES = {"number": "1", "path": "output.log"}


def _routes() -> list[str]:
    """Every API route of the tornado app, with sample values for its parameters."""
    return [
        re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: SAMPLES.get(m.group(1), "sample"), pattern)
        for pattern, _ in api_handlers("/")
    ]


def test_every_route_needs_authentication(wb):
    anonymous = Api(wb.api_url, token=None)
    for route in _routes():
        for method in METHODS:
            response = anonymous.raw(method, route, content=b"{}")
            assert response.status_code == 401, (method, route, response.status_code)
            assert response.json()["status"] == 401
    bad = Api(wb.api_url, token="not-a-token")
    assert bad.raw("GET", "/projects").status_code == 401


def test_token_without_use_scope_is_forbidden(wb):
    wb.user_token("scopeless")
    r = wb.hub(
        "POST",
        "/users/scopeless/tokens",
        json={"scopes": ["access:services!service=workbench"]},
    )
    assert r.status_code == 201, r.text
    limited = Api(wb.api_url, r.json()["token"])
    message = limited.error("GET", "/projects", 403)
    assert "custom:workbench:use" in message


def test_every_route_is_documented():
    """The tornado routes and methods and openapi.yaml list the same operations."""
    served = set()
    for pattern, handler in api_handlers("/"):
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
        for method in METHODS:
            if method.lower() in vars(handler):
                served.add((method, path))
    documented = {
        (method.upper(), path)
        for path, item in openapi()["paths"].items()
        for method in item
        if method.upper() in METHODS
    }
    assert served == documented


def test_openapi_json_is_served(user):
    alice = user("alice")
    served = alice("GET", "/openapi.json", 200)
    assert served == openapi()


def test_unknown_route_is_json_404(user):
    response = user("alice").raw("GET", "/no-such-thing")
    assert response.status_code == 404
    assert response.json() == {
        "status": 404,
        "message": "no route /services/workbench/api/v1/no-such-thing",
    }


# ---------------------------------------------------------------- projects


def test_create_list_get_update_delete(wb, user, admin):
    alice = user("alice", groups=["eng"])
    name = unique("lifecycle")
    created = alice(
        "POST",
        "/projects",
        201,
        json={"name": name, "description": "first", "template": "python-starter"},
    )
    assert created["owner"] == {"kind": "user", "name": "alice"}
    assert created["role"] == "admin" and created["visibility"] == "private"
    assert Path(created["path"]) == project_dir(wb, name).resolve()
    assert (project_dir(wb, name) / "analysis.ipynb").is_file()
    assert name in [p["name"] for p in alice("GET", "/projects", 200)["projects"]]
    assert alice("GET", f"/projects/{name}", 200)["description"] == "first"

    updated = alice(
        "PATCH", f"/projects/{name}", 200, json={"description": "second", "visibility": "public"}
    )
    assert updated["description"] == "second" and updated["visibility"] == "public"
    assert updated["updated"] > created["updated"]

    alice.error("DELETE", f"/projects/{name}", 400, field="confirm")
    alice.error("DELETE", f"/projects/{name}?confirm=other", 400, field="confirm")
    assert project_dir(wb, name).is_dir()
    alice("DELETE", f"/projects/{name}?confirm={name}", 204)
    assert not project_dir(wb, name).exists()
    alice.error("GET", f"/projects/{name}", 404)
    actions = [e["action"] for e in events(admin, object_id=name)]
    assert actions == ["project.deleted", "project.updated", "project.created"]
    assert all(e["actor"] == "alice" for e in events(admin, object_id=name))


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"name": "Bad_Name"}, "name", 400),
        ({"name": "a" * 64}, "name", 400),
        ({"name": 5}, "name", 400),
        ({}, "name", 400),
        ({"name": "ok", "visibility": "secret"}, "visibility", 400),
        ({"name": "ok", "visibility": True}, "visibility", 400),
        ({"name": "ok", "colour": "red"}, "colour", 400),
        ({"name": "ok", "template": "nope"}, "template", 400),
        ({"name": "ok", "template": "python-starter", "git_url": "https://x/y"}, "git_url", 400),
        ({"name": "ok", "git_url": "ext::sh -c id"}, "git_url", 400),
        ({"name": "ok", "owner": {"kind": "robot", "name": "x"}}, "owner", 400),
        ({"name": "ok", "owner": {"kind": "team", "name": "no-such-group"}}, "owner", 400),
        ({"name": "ok", "owner": {"kind": "team", "name": "ops"}}, "owner", 403),
        ({"name": "ok", "owner": {"kind": "user", "name": "bob"}}, "owner", 403),
    ],
)
def test_create_rejects_bad_input(wb, user, body, field, status):
    wb.user_token("opsie", groups=["ops"])
    alice = user("alice")
    alice.error("POST", "/projects", status, field=field, json=body)
    assert not project_dir(wb, "ok").exists()
    assert "ok" not in [p["name"] for p in alice("GET", "/projects", 200)["projects"]]


def test_malformed_bodies(user):
    alice = user("alice")
    assert "not valid JSON" in alice.error("POST", "/projects", 400, content=b"{nope")
    assert "JSON object" in alice.error("POST", "/projects", 400, content=b"[1]")
    assert "not valid JSON" in alice.error("POST", "/projects", 400, content=b"\xff\xfe")


def test_duplicate_name_is_409_and_keeps_the_first(wb, user):
    alice, bob = user("alice"), user("bob")
    name = unique("dup")
    alice("POST", "/projects", 201, json={"name": name, "template": "python-starter"})
    bob.error("POST", "/projects", 409, field="name", json={"name": name})
    assert (project_dir(wb, name) / "README.md").is_file()
    assert alice("GET", f"/projects/{name}", 200)["owner"]["name"] == "alice"


def test_git_clone_success_and_failure(wb, user, admin, git_repo):
    alice = user("alice")
    name = unique("cloned")
    alice("POST", "/projects", 201, json={"name": name, "git_url": git_repo})
    assert (project_dir(wb, name) / "README.md").read_text() == "# cloned\n"

    broken = unique("broken")
    message = alice.error(
        "POST",
        "/projects",
        400,
        field="git_url",
        json={"name": broken, "git_url": f"file://{wb.data_dir}/missing.git"},
    )
    assert "git clone failed" in message
    assert not project_dir(wb, broken).exists()
    assert not [p for p in os.listdir(wb.data_dir / "projects") if broken in p]
    alice.error("GET", f"/projects/{broken}", 404)
    [failure] = events(admin, object_id=broken)
    assert failure["outcome"] == "failure" and failure["action"] == "project.created"


def test_team_projects(wb, user):
    carol = user("carol", groups=["data"])
    dan = user("dan", groups=["data"])
    erin = user("erin")
    name = unique("team")
    created = carol(
        "POST",
        "/projects",
        201,
        json={"name": name, "owner": {"kind": "team", "name": "data"}, "visibility": "team"},
    )
    assert created["owner"] == {"kind": "team", "name": "data"} and created["role"] == "contributor"
    assert dan("GET", f"/projects/{name}", 200)["role"] == "contributor"
    erin.error("GET", f"/projects/{name}", 404)
    dan.error("PATCH", f"/projects/{name}", 403, json={"description": "x"})


# ---------------------------------------------------------------- roles and collaborators


def listed(client, name: str) -> str | None:
    """The caller's role on project `name` as the project list shows it (None: not listed)."""
    roles = {p["name"]: p["role"] for p in client("GET", "/projects", 200)["projects"]}
    return roles.get(name)


def test_roles_visibility_and_collaborators(wb, user, admin):
    alice, bob, mallory = (
        user("alice", groups=["eng"]),
        user("bob"),
        user("mallory", groups=["eng"]),
    )
    name = unique("shared")
    alice("POST", "/projects", 201, json={"name": name})

    # private: hidden from others (404, identical to a project that does not exist)
    missing = bob.error("GET", f"/projects/{name}", 404)
    assert missing == bob.error("GET", "/projects/never-created", 404).replace(
        "never-created", name
    )
    bob.error("GET", f"/projects/{name}/collaborators", 404)
    bob.error("GET", f"/projects/{name}/sessions", 404)
    assert name not in [p["name"] for p in bob("GET", "/projects", 200)["projects"]]

    # team visibility: a shared group makes a viewer
    assert listed(mallory, name) is None
    alice("PATCH", f"/projects/{name}", 200, json={"visibility": "team"})
    assert mallory("GET", f"/projects/{name}", 200)["role"] == "viewer"
    assert listed(mallory, name) == "viewer"
    bob.error("GET", f"/projects/{name}", 404)

    # collaborators
    alice.error(
        "PUT", f"/projects/{name}/collaborators/bob", 400, field="role", json={"role": "owner"}
    )
    alice.error(
        "PUT", f"/projects/{name}/collaborators/bob", 400, field="colour", json={"colour": 1}
    )
    alice.error("PUT", f"/projects/{name}/collaborators/bob", 400, field="role", json={"role": 3})
    alice.error(
        "PUT", f"/projects/{name}/collaborators/Nobody", 400, field="user", json={"role": "viewer"}
    )
    assert alice("PUT", f"/projects/{name}/collaborators/bob", 200, json={"role": "viewer"}) == {
        "user": "bob",
        "role": "viewer",
    }
    assert bob("GET", f"/projects/{name}", 200)["role"] == "viewer"
    assert listed(bob, name) == "viewer", "the (cached) list follows a new collaborator at once"
    assert bob("GET", f"/projects/{name}/collaborators", 200) == {
        "collaborators": [{"user": "bob", "role": "viewer"}]
    }
    # too low a role: 403, and the attempt is audited as denied
    bob.error("PATCH", f"/projects/{name}", 403, json={"description": "mine now"})
    bob.error("PUT", f"/projects/{name}/collaborators/bob", 403, json={"role": "admin"})
    bob.error("DELETE", f"/projects/{name}?confirm={name}", 403)
    assert alice("GET", f"/projects/{name}", 200)["description"] == ""
    denied = [e for e in events(admin, object_id=name, actor="bob") if e["outcome"] == "denied"]
    assert len(denied) == 3

    alice("PUT", f"/projects/{name}/collaborators/bob", 200, json={"role": "admin"})
    assert listed(bob, name) == "admin"
    bob("PATCH", f"/projects/{name}", 200, json={"description": "co-admin"})
    alice("DELETE", f"/projects/{name}/collaborators/bob", 204)
    alice.error("DELETE", f"/projects/{name}/collaborators/bob", 404, field="user")
    bob.error("GET", f"/projects/{name}", 404)
    assert listed(bob, name) is None
    actions = [
        e["action"] for e in events(admin, object_id=name, actor="alice", object_type="project")
    ]
    assert actions[:3] == ["collaborator.removed", "collaborator.changed", "collaborator.added"]


def test_workbench_admin_sees_everything(wb, user, admin):
    alice = user("alice")
    name = unique("private")
    alice("POST", "/projects", 201, json={"name": name})
    assert admin("GET", f"/projects/{name}", 200)["role"] == "admin"
    assert name in [p["name"] for p in admin("GET", "/projects", 200)["projects"]]
    alice.error("GET", "/audit", 403)


# ---------------------------------------------------------------- sessions, spawn options, profiles


def test_sessions_lists_named_servers(wb, user):
    alice = user("alice")
    name = unique("sess")
    alice("POST", "/projects", 201, json={"name": name})
    assert alice("GET", f"/projects/{name}/sessions", 200) == {"sessions": []}


def test_spawn_options(wb, user, admin):
    alice, bob = user("alice", groups=["gpu-users"]), user("bob")
    own, shared = unique("own"), unique("viewed")
    alice("POST", "/projects", 201, json={"name": own})
    alice("POST", "/projects", 201, json={"name": shared})
    alice("PUT", f"/projects/{shared}/collaborators/bob", 200, json={"role": "operator"})

    options = bob("GET", "/users/bob/spawn-options", 200)
    [entry] = [p for p in options["projects"] if p["name"] == shared]
    assert entry["role"] == "operator" and entry["read_only"] is True
    assert Path(entry["path"]) == project_dir(wb, shared).resolve()
    assert own not in [p["name"] for p in options["projects"]]
    assert [p["name"] for p in options["profiles"]] == ["small"]

    mine = alice("GET", "/users/alice/spawn-options", 200)
    assert {p["name"]: p["read_only"] for p in mine["projects"]}[own] is False
    assert [p["name"] for p in mine["profiles"]] == ["small", "gpu"]
    assert mine["profiles"][1]["memory"] == 16 * 1024**3

    bob.error("GET", "/users/alice/spawn-options", 403)
    admin("GET", "/users/alice/spawn-options", 200)
    admin.error("GET", "/users/nobody-at-all/spawn-options", 404, field="user")

    assert [p["name"] for p in bob("GET", "/profiles", 200)["profiles"]] == ["small"]
    assert "python-starter" in [t["name"] for t in bob("GET", "/templates", 200)["templates"]]


# ---------------------------------------------------------------- audit


def test_audit_post_is_for_the_service_only(user, admin):
    alice = user("alice")
    event = {
        "actor": "alice",
        "action": "session.start",
        "object_type": "session",
        "object_id": "alice/x",
        "outcome": "success",
    }
    alice.error("POST", "/audit", 403, json=event)
    admin.error("POST", "/audit", 403, json=event)


def test_audit_query_validation(admin):
    admin.error("GET", "/audit", 400, field="limit", params={"limit": "0"})
    admin.error("GET", "/audit", 400, field="limit", params={"limit": "many"})
    admin.error("GET", "/audit", 400, field="since", params={"since": "yesterday"})
    admin.error("GET", "/audit", 400, field="since", params={"since": "2024-01-01T00:00:00"})
    assert admin("GET", "/audit", 200, params={"since": "2999-01-01T00:00:00+00:00"}) == {
        "events": [],
        "next": None,
    }
    assert len(events(admin, limit="1")) <= 1


def test_audit_post_with_service_token(wb, admin):
    token = (wb.data_dir / "secrets" / "service-token").read_text().strip()
    service = Api(wb.api_url, token)
    event = {
        "actor": "alice",
        "action": "session.start",
        "object_type": "session",
        "object_id": "alice/p",
        "outcome": "success",
        "detail": {"profile": "small"},
    }
    recorded = service("POST", "/audit", 201, json=event)
    assert recorded["detail"] == {"profile": "small"}
    service.error("POST", "/audit", 400, field="outcome", json={**event, "outcome": "meh"})
    service.error("POST", "/audit", 400, field="when", json={**event, "when": "now"})
    service.error("GET", "/projects", 403)
    service("GET", "/users/alice/spawn-options", 200)
    [found] = events(admin, object_id="alice/p", action="session.start")
    assert found["id"] == recorded["id"]


def test_documented_template_matches_only_documented_routes():
    assert documented_template("GET", "/projects/x/sessions") == "/projects/{name}/sessions"
    with pytest.raises(AssertionError):
        documented_template("PATCH", "/templates")


def _wait_for_server(wb, user_name: str, server: str, ready: bool, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = wb.hub("GET", f"/users/{user_name}", params={"include_stopped_servers": 1}).json()
        found = model.get("servers", {}).get(server)
        if (found or {}).get("ready", False) == ready and (ready or found is None):
            return found
        time.sleep(0.5)
    raise AssertionError(f"server {user_name}/{server} did not become ready={ready}:\n{wb.log()}")


def test_sessions_are_listed_and_removed_with_the_project(wb, user, admin):
    alice, bob = user("alice"), user("bob")
    name = unique("live")
    alice("POST", "/projects", 201, json={"name": name, "visibility": "public"})
    r = wb.hub("POST", f"/users/alice/servers/{name}", json={"project": name, "profile": "small"})
    assert r.status_code in (201, 202), r.text
    _wait_for_server(wb, "alice", name, ready=True)

    [session] = bob("GET", f"/projects/{name}/sessions", 200)["sessions"]
    assert session["user"] == "alice" and session["name"] == name
    assert session["ready"] is True and session["url"] == f"/user/alice/{name}/"

    alice("DELETE", f"/projects/{name}?confirm={name}", 204)
    _wait_for_server(wb, "alice", name, ready=False)
    assert (
        name
        not in wb.hub("GET", "/users/alice", params={"include_stopped_servers": 1}).json()[
            "servers"
        ]
    )
    [deleted] = events(admin, object_id=name, action="project.deleted")
    assert deleted["detail"] == {"removed_sessions": [f"alice/{name}"]}
