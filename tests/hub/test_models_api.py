"""Models, deployments and access keys through the REST API of a real workbench (both DBs).

Building and serving are covered end to end in tests/e2e/test_models.py; here: validation,
roles, keys and the routes replicas call, each answer checked against openapi.yaml.
"""

from pathlib import Path

import httpx
import pytest

from tests.hub.conftest import Api, unique

MODEL_FILE = "def predict(args):\n    return {'echo': args}\n"


@pytest.fixture(scope="module")
def owner(user) -> Api:
    return user(unique("owner"))


@pytest.fixture(scope="module")
def project(owner) -> dict:
    project = owner("POST", "/projects", 201, json={"name": unique("models")})
    Path(project["path"], "predict.py").write_text(MODEL_FILE)
    Path(project["path"], "notes.txt").write_text("not python")
    return project


@pytest.fixture(scope="module")
def model(owner, project) -> dict:
    return owner(
        "POST",
        f"/projects/{project['name']}/models",
        201,
        json={
            "name": "echo",
            "file": "predict.py",
            "function": "predict",
            "description": "echoes",
            "env": {"MODE": "test"},
        },
    )


def test_create_read_list_update(owner, project, model):
    name = project["name"]
    assert model["crn"].startswith("crn:workbench:model:")
    assert model["deployment"] is None
    assert model["url"].endswith(f"/models/{name}/echo/model")
    assert model["profile"] == "small"
    assert owner("GET", f"/projects/{name}/models/echo", 200) == model
    listed = owner("GET", f"/projects/{name}/models", 200)["models"]
    assert [m["name"] for m in listed] == ["echo"]
    changed = owner("PATCH", f"/projects/{name}/models/echo", 200, json={"replicas": 3})
    assert changed["replicas"] == 3
    assert changed["crn"] == model["crn"]


@pytest.mark.parametrize(
    "body, field, fragment",
    [
        ({"name": "Bad_Name", "file": "predict.py", "function": "predict"}, "name", ""),
        ({"name": "m1", "file": "missing.py", "function": "predict"}, "file", "missing.py"),
        ({"name": "m1", "file": "notes.txt", "function": "predict"}, "file", ".py"),
        ({"name": "m1", "file": "../escape.py", "function": "predict"}, "file", "inside"),
        ({"name": "m1", "file": "/etc/passwd.py", "function": "predict"}, "file", "inside"),
        ({"name": "m1", "file": "predict.py", "function": "not a name"}, "function", ""),
        ({"name": "m1", "file": "predict.py", "function": "f", "replicas": 0}, "replicas", ""),
        ({"name": "m1", "file": "predict.py", "function": "f", "profile": "huge"}, "profile", ""),
        ({"name": "m1", "file": "predict.py", "function": "f", "env": {"A": 1}}, "env", ""),
        ({"name": "m1", "file": "predict.py"}, "function", "missing"),
        ({"name": "m1", "file": "predict.py", "function": "f", "extra": 1}, "extra", ""),
    ],
)
def test_bad_models_are_refused(owner, project, body, field, fragment):
    message = owner.error(
        "POST", f"/projects/{project['name']}/models", 400, field=field, json=body
    )
    assert fragment in message
    names = [m["name"] for m in owner("GET", f"/projects/{project['name']}/models", 200)["models"]]
    assert "m1" not in names


def test_duplicate_model_is_409(owner, project, model):
    owner.error(
        "POST",
        f"/projects/{project['name']}/models",
        409,
        field="name",
        json={"name": "echo", "file": "predict.py", "function": "predict"},
    )


def test_deploy_needs_a_succeeded_build(owner, project, model):
    name = project["name"]
    message = owner.error("POST", f"/projects/{name}/models/echo/deployments", 409, field="build")
    assert "no succeeded build" in message
    owner.error(
        "POST", f"/projects/{name}/models/echo/deployments", 404, field="build", json={"build": 9}
    )
    assert owner("GET", f"/projects/{name}/models/echo/deployments", 200) == {
        "deployments": [],
        "next": None,
    }
    owner("GET", f"/projects/{name}/models/echo/builds/1", 404)
    owner("GET", f"/projects/{name}/models/echo/stats", 404)


def test_roles(wb, user, owner, project, model):
    name = project["name"]
    viewer_name, outsider = unique("viewer"), user(unique("outsider"))
    viewer = user(viewer_name)
    owner("PUT", f"/projects/{name}/collaborators/{viewer_name}", 200, json={"role": "viewer"})
    assert viewer("GET", f"/projects/{name}/models/echo", 200)["name"] == "echo"
    viewer.error("PATCH", f"/projects/{name}/models/echo", 403, json={"replicas": 2})
    viewer.error("POST", f"/projects/{name}/models/echo/keys", 403)
    viewer.error("POST", f"/projects/{name}/models/echo/builds", 403)
    viewer.error("DELETE", f"/projects/{name}/models/echo", 403)
    outsider.error("GET", f"/projects/{name}/models/echo", 404)
    outsider.error("GET", f"/projects/{name}/models", 404)
    outsider.error("GET", f"/projects/{name}/models/echo/keys", 404)


def test_access_keys(wb, owner, admin, project, model):
    name = project["name"]
    base = f"/projects/{name}/models/echo/keys"
    first = owner("POST", base, 201, json={"description": "app"})
    assert first["key"].startswith("wbk_") and first["key"].startswith(first["prefix"])
    assert len(first["key"]) > len(first["prefix"]) + 20
    second = owner("POST", base, 201)
    keys = owner("GET", base, 200)["keys"]
    assert [k["id"] for k in keys] == [first["id"], second["id"]]
    assert all("key" not in k for k in keys)

    # the key resolves to its model for call_model; the key itself is the credential
    anonymous = Api(wb.api_url, token=None)
    resolved = anonymous("POST", "/access-keys/resolve", 200, json={"accessKey": first["key"]})
    assert resolved == {"project": name, "model": "echo", "url": model["url"]}
    anonymous.error("POST", "/access-keys/resolve", 401, json={"accessKey": "wbk_nope"})

    rotated = owner("POST", f"{base}/{first['id']}/rotate", 201)
    assert rotated["description"] == "app" and rotated["key"] != first["key"]
    anonymous.error("POST", "/access-keys/resolve", 401, json={"accessKey": first["key"]})
    owner.error("POST", f"{base}/{first['id']}/rotate", 409)
    owner("DELETE", f"{base}/{second['id']}", 204)
    owner("DELETE", f"{base}/{second['id']}", 204)  # idempotent
    owner.error("DELETE", f"{base}/999999", 404)
    revoked = {k["id"]: k["revoked"] for k in owner("GET", base, 200)["keys"]}
    assert revoked == {first["id"]: True, second["id"]: True, rotated["id"]: False}
    events = admin("GET", f"/audit?object_type=model&object_id={name}/echo", 200)["events"]
    actions = [e["action"] for e in events if e["action"].startswith("model.key.")]
    assert sorted(actions) == sorted(
        ["model.key.created", "model.key.created", "model.key.rotated", "model.key.revoked"]
    )
    # the key is never stored or logged in clear
    assert first["key"] not in wb.log()


def test_replica_routes_need_the_deployment_token(wb):
    for method, path in (
        ("GET", "/deployments/crn:workbench:deployment:x/access-keys"),
        ("POST", "/deployments/crn:workbench:deployment:x/stats"),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "token x"}):
            r = httpx.request(method, wb.api_url + path, headers=headers, content=b"{}")
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["status"] == 401


def test_prometheus_is_for_admins(wb, owner, admin):
    owner.error("GET", "/metrics", 403)
    r = admin.raw("GET", "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "workbench_model_requests" in r.text


def test_delete_model(owner, project):
    name = project["name"]
    owner(
        "POST",
        f"/projects/{name}/models",
        201,
        json={"name": "doomed", "file": "predict.py", "function": "predict"},
    )
    owner("DELETE", f"/projects/{name}/models/doomed", 204)
    owner.error("GET", f"/projects/{name}/models/doomed", 404)
