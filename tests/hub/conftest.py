"""Fixtures of the control plane tests: a real workbench per database, and a checked client."""

import itertools
import re
import subprocess
from functools import cache
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI_FILE = Path(__file__).parents[2] / "hub" / "workbench_hub" / "openapi.yaml"
EXTRA_CONFIG = """
c.WorkbenchService.git_url_schemes = ["https", "file"]
c.WorkbenchService.resource_profiles = [
    {"name": "small", "cpu": 1, "memory": "1G"},
    {"name": "gpu", "display_name": "GPU", "cpu": 4, "memory": "16G", "gpu": 1,
     "groups": ["gpu-users"]},
]
"""
_counter = itertools.count()


def unique(prefix: str = "p") -> str:
    """A name no other test uses."""
    return f"{prefix}-{next(_counter)}"


@cache
def openapi() -> dict:
    return yaml.safe_load(OPENAPI_FILE.read_text())


@cache
def _registry() -> Registry:
    return Registry().with_resource(
        "urn:openapi", Resource(contents=openapi(), specification=DRAFT202012)
    )


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def documented_template(method: str, path: str) -> str:
    """The OpenAPI path template answering `method path` (path relative to api/v1)."""
    for template, item in openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in item:
            return template
    raise AssertionError(f"openapi.yaml documents no {method} {path}")


def check_against_openapi(method: str, path: str, response: httpx.Response) -> None:
    """Fail unless `response` is documented for `method path` and matches its schema."""
    template = documented_template(method, path.split("?")[0])
    status = str(response.status_code)
    responses = openapi()["paths"][template][method.lower()]["responses"]
    assert status in responses, f"{method} {path}: status {status} is not documented"
    pointer = f"/paths/{_escape(template)}/{method.lower()}/responses/{status}"
    documented = responses[status]
    if "$ref" in documented:
        pointer = documented["$ref"][1:]
        documented = openapi()["components"]["responses"][pointer.rsplit("/", 1)[1]]
    if "content" not in documented:
        assert not response.content, f"{method} {path}: {status} should have no body"
        return
    schema = {"$ref": f"urn:openapi#{pointer}/content/application~1json/schema"}
    jsonschema.Draft202012Validator(
        schema, registry=_registry(), format_checker=jsonschema.FormatChecker()
    ).validate(response.json())


class Api:
    """A client of the control plane that checks every answer.

    Every response must be JSON (except 204), errors must be exactly
    ``{"status", "message", "field"?}`` with the HTTP status, and the body must match the
    OpenAPI document for that route and status.
    """

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"token {token}"} if token else {}

    def raw(self, method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(
            method, self.base_url + path, headers=self.headers, timeout=120, **kwargs
        )

    def __call__(self, method: str, path: str, expect: int, **kwargs) -> dict | None:
        response = self.raw(method, path, **kwargs)
        assert response.status_code == expect, (
            f"{method} {path}: expected {expect}, got {response.status_code}: {response.text}"
        )
        if expect == 204:
            assert not response.content
            return None
        assert response.headers["content-type"].startswith("application/json"), response.headers
        body = response.json()
        if expect >= 400:
            assert set(body) in ({"status", "message"}, {"status", "message", "field"}), body
            assert body["status"] == expect and body["message"], body
        check_against_openapi(method, path, response)
        return body

    def error(self, method: str, path: str, expect: int, field: str | None = None, **kw) -> str:
        """Call expecting an error; check the field at fault; return the message."""
        body = self(method, path, expect, **kw)
        assert body.get("field") == field, body
        return body["message"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def wb(request, workbench_factory):
    """A running workbench (real hub, proxy and service) on SQLite, then on PostgreSQL."""
    db_url = request.getfixturevalue("pg_database")() if request.param == "postgresql" else None
    return workbench_factory(db_url=db_url, extra_config=EXTRA_CONFIG)


@pytest.fixture(scope="module")
def admin(wb) -> Api:
    """A client with a token holding custom:workbench:admin."""
    return Api(wb.api_url, wb.admin_token)


@pytest.fixture(scope="module")
def user(wb):
    """Factory: `user(name, groups=())` → an Api client acting as that hub user."""

    def make(name: str, groups=()) -> Api:
        return Api(wb.api_url, wb.user_token(name, groups=groups))

    return make


@pytest.fixture(scope="session")
def git_repo(tmp_path_factory) -> str:
    """A local bare git repository with one commit holding README.md, as a file:// URL."""
    root = tmp_path_factory.mktemp("git")
    work, bare = root / "work", root / "repo.git"
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(work)], check=True)
    (work / "README.md").write_text("# cloned\n")
    subprocess.run([*git, "-C", str(work), "add", "README.md"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "first"], check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return f"file://{bare}"
