"""Bad input through a real workbench (both DBs): a 4xx JSON error naming what to fix, never a
5xx, and nothing written (docs/architecture.md, "Limits")."""

import json
from pathlib import Path

import httpx
import pytest

from tests.hub.conftest import Api, unique

DEEP = b"[" * 100_000
HUGE = 10**30
RUN_ID = "9" * 5000
TWO_MIB = "x" * (2 * 1024 * 1024)


def error(response: httpx.Response, status: int, field: str | None = None) -> str:
    """The message of `response`, checked to be the JSON error ``{status, message, field?}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    expected = {"status", "message"} | ({"field"} if field else set())
    assert set(body) == expected and body["status"] == status and body["message"], body
    assert body.get("field") == field, body
    return body["message"]


@pytest.fixture(scope="module")
def owner(user) -> Api:
    return user(unique("bad"))


@pytest.fixture(scope="module")
def project(owner) -> str:
    name = owner("POST", "/projects", 201, json={"name": unique("bad")})["name"]
    path = Path(owner("GET", f"/projects/{name}", 200)["path"])
    (path / "script.py").write_text("print('hi')\n")
    (path / "predict.py").write_text("def predict(args):\n    return args\n")
    owner("POST", f"/projects/{name}/jobs", 201, json={"name": "job", "target": "script.py"})
    owner("POST", f"/projects/{name}/jobs/job/runs", 201)
    model = {"name": "echo", "file": "predict.py", "function": "predict"}
    owner("POST", f"/projects/{name}/models", 201, json=model)
    owner("POST", f"/projects/{name}/models/echo/keys", 201, json={"description": "first"})
    return name


def project_names(api: Api) -> list[str]:
    return [p["name"] for p in api("GET", "/projects", 200)["projects"]]


def test_deep_nesting_is_400(owner, project):
    before = project_names(owner)
    message = error(owner.raw("POST", "/projects", content=DEEP), 400)
    assert "nests deeper than 32 levels" in message
    assert project_names(owner) == before

    nested = {
        "name": "deep",
        "target": "script.py",
        "parameters": {"a": json.loads("[" * 40 + "]" * 40)},
    }
    owner.error("POST", f"/projects/{project}/jobs", 400, field="parameters", json=nested)
    jobs = owner("GET", f"/projects/{project}/jobs", 200)["jobs"]
    assert [j["name"] for j in jobs] == ["job"]


def test_deep_nesting_on_resolve_is_400(wb):
    """The access key route answers before any token: deep nesting there too is a 400."""
    anonymous = Api(wb.api_url, token=None)
    assert "nests deeper" in error(anonymous.raw("POST", "/access-keys/resolve", content=DEEP), 400)
    body = b'{"accessKey": "wbk_x", "extra": ' + b"[" * 50 + b"]" * 50 + b"}"
    response = anonymous.raw("POST", "/access-keys/resolve", content=body)
    assert "nests deeper" in error(response, 400, field="extra")


def test_integers_beyond_64_bits_in_bodies_are_400(owner, project):
    model = f"/projects/{project}/models/echo"
    for body, field in (({"build": HUGE}, "build"), ({"replicas": HUGE}, "replicas")):
        owner.error("POST", f"{model}/deployments", 400, field=field, json=body)
    assert owner("GET", f"{model}/deployments", 200)["deployments"] == []
    owner.error("PATCH", model, 400, field="replicas", json={"replicas": HUGE})
    owner.error(
        "PATCH", f"/projects/{project}/jobs/job", 400, field="retry_max", json={"retry_max": HUGE}
    )
    assert owner("GET", model, 200)["replicas"] == 1
    assert owner("GET", f"/projects/{project}/jobs/job", 200)["retry_max"] == 0


def test_integral_numbers_are_integers(owner, project):
    """JSON Schema's integers: 11.0 is 11 (the document allows it), 11.5 is no integer."""
    model = f"/projects/{project}/models/echo"
    assert owner("PATCH", model, 200, json={"replicas": 3.0})["replicas"] == 3
    owner.error("PATCH", model, 400, field="replicas", json={"replicas": 3.5})
    owner.error("PATCH", model, 400, field="replicas", json={"replicas": 33})
    owner("PATCH", model, 200, json={"replicas": 1})


def test_numbers_in_paths_that_cannot_exist_are_404(owner, project):
    model = f"/projects/{project}/models/echo"
    beyond = "99999999999999999999"
    owner.error("GET", f"{model}/builds/{beyond}", 404)
    owner.error("GET", f"{model}/builds/{beyond}/log", 404)
    owner.error("GET", f"{model}/deployments/{beyond}", 404)
    owner.error("PATCH", f"{model}/deployments/{beyond}", 404, json={"replicas": 2})
    owner.error("DELETE", f"{model}/keys/{beyond}", 404)
    owner.error("POST", f"{model}/keys/{beyond}/rotate", 404)
    assert [k["revoked"] for k in owner("GET", f"{model}/keys", 200)["keys"]] == [False]


def test_a_5000_digit_run_id_is_404(owner, project):
    runs = f"/projects/{project}/jobs/job/runs"
    for suffix in ("", "/logs", "/outputs"):
        owner.error("GET", f"{runs}/{RUN_ID}{suffix}", 404)
    owner.error("POST", f"{runs}/{RUN_ID}/stop", 404)
    owner.error("POST", f"{runs}/{RUN_ID}/rerun", 404)
    assert [r["number"] for r in owner("GET", runs, 200)["runs"]] == [1]
    assert owner("GET", f"{runs}/0001", 200)["number"] == 1


def test_a_2_mib_description_is_400_naming_the_field(owner, project):
    name = unique("big")
    message = owner.error(
        "POST", "/projects", 400, field="description", json={"name": name, "description": TWO_MIB}
    )
    assert message == "field 'description' must be at most 4000 characters long"
    assert name not in project_names(owner)
    owner.error(
        "PATCH", f"/projects/{project}", 400, field="description", json={"description": TWO_MIB}
    )
    assert owner("GET", f"/projects/{project}", 200)["description"] == ""
    model = f"/projects/{project}/models/echo"
    owner.error("PATCH", model, 400, field="description", json={"description": TWO_MIB})
    owner.error("POST", f"{model}/keys", 400, field="description", json={"description": TWO_MIB})
    assert len(owner("GET", f"{model}/keys", 200)["keys"]) == 1
    owner("PATCH", f"/projects/{project}", 200, json={"description": "x" * 4000})
    owner("PATCH", f"/projects/{project}", 200, json={"description": ""})


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        (b'{"name": "p", "description": "a\\u0000b"}', "description", "NUL"),
        (b'{"name": "p", "description": "\\ud800"}', "description", "unpaired surrogate"),
        (b'{"name": "p", "owner": {"kind": "team", "name": NaN}}', "owner", "cannot represent"),
        (b'{"name": "p", "owner": {"kind": "team", "n": 1e400}}', "owner", "cannot represent"),
        (
            b'{"name": "p", "owner": {"kind": "team", "name": "' + b"x" * 300 + b'"}}',
            "owner",
            "255",
        ),
        (b'{"name": "p", "git_url": ""}', "git_url", "1 to 2048"),
        (b'{"name": "p", "description": ' + b"9" * 5000 + b"}", None, "5000 digits"),
    ],
)
def test_text_no_column_can_hold_is_400(owner, body, field, fragment):
    before = project_names(owner)
    response = owner.raw("POST", "/projects", content=body)
    assert fragment in error(response, 400, field=field)
    assert project_names(owner) == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/jobs", {"name": "empty", "target": ""}, "target"),
        ("/jobs/job", {"arguments": ["a\x00b"]}, "arguments"),
        ("/jobs/job", {"env": {"A": "a\x00b"}}, "env"),
        ("/models/echo", {"file": ""}, "file"),
        ("/models/echo", {"function": "prédire"}, "function"),
    ],
)
def test_empty_and_unusable_strings_are_400(owner, project, path, body, field):
    method = "POST" if path == "/jobs" else "PATCH"
    owner.error(method, f"/projects/{project}{path}", 400, field=field, json=body)
    assert owner("GET", f"/projects/{project}/jobs/job", 200)["arguments"] == []
    assert owner("GET", f"/projects/{project}/models/echo", 200)["function"] == "predict"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/projects", "GET, POST"),
        ("DELETE", "/templates", "GET"),
        ("GET", "/projects/{project}/jobs/job/pause", "POST"),
        ("OPTIONS", "/projects/{project}/models/echo/keys/1", "DELETE"),
        ("POST", "/projects/{project}", "GET, DELETE, PATCH"),
    ],
)
def test_405_lists_the_allowed_methods(owner, project, method, path, allowed):
    response = owner.raw(method, path.format(project=project), content=b"{}")
    error(response, 405)
    assert response.headers["Allow"] == allowed


def test_unicode_digits_in_a_query_are_400(admin):
    assert "limit" in admin.error("GET", "/audit?limit=%C2%B2", 400, field="limit")
    assert "limit" in admin.error("GET", "/audit?limit=" + RUN_ID, 400, field="limit")
