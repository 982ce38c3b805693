"""Workbench admin rights come from custom:workbench:admin on the token, and hub admins hold it.

One real workbench (the hub's database is SQLite whatever the control plane's, so one is
enough). The first admin's full token is a workbench admin, the same admin's token limited to
using the workbench is not; a user made a hub admin through the hub's API gets the rights (their
existing token too), keeps them across a restart, and loses them when no longer an admin.
"""

import httpx
import pytest

from tests.harness import wait_for
from tests.hub.conftest import Api, unique

pytestmark = pytest.mark.e2e

USE_ONLY = ["access:services!service=workbench", "custom:workbench:use"]


@pytest.fixture(scope="module")
def wb(workbench_factory):
    return workbench_factory()


def token_of(wb, user: str, scopes=None) -> str:
    body = {"note": "admin scope test"} | ({"scopes": scopes} if scopes else {})
    r = wb.hub("POST", f"/users/{user}/tokens", json=body)
    assert r.status_code == 201, r.text
    return r.json()["token"]


def set_hub_admin(wb, admin_token: str, user: str, admin: bool) -> None:
    """`PATCH /hub/api/users/{user}` as a hub admin (only admins may grant admin)."""
    r = httpx.patch(
        f"{wb.url}/hub/api/users/{user}",
        json={"admin": admin},
        headers={"Authorization": f"token {admin_token}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["admin"] is admin


def audit_status(api: Api) -> int:
    return api.raw("GET", "/audit", params={"limit": "1"}).status_code


@pytest.fixture(scope="module")
def private_project(wb) -> str:
    """A private project of alice's."""
    name = unique("private")
    Api(wb.api_url, wb.user_token("alice"))("POST", "/projects", 201, json={"name": name})
    return name


def test_hub_admins_full_token_is_a_workbench_admin(wb, private_project):
    admin = Api(wb.api_url, token_of(wb, "admin"))
    admin("GET", "/audit", 200)
    assert admin("GET", f"/projects/{private_project}", 200)["role"] == "admin"


def test_hub_admins_token_without_the_admin_scope_is_not(wb, private_project):
    limited = Api(wb.api_url, token_of(wb, "admin", scopes=USE_ONLY))
    limited.error("GET", "/audit", 403)
    limited.error("GET", f"/projects/{private_project}", 404)
    listed = [p["name"] for p in limited("GET", "/projects", 200)["projects"]]
    assert private_project not in listed
    limited.error("GET", "/users/alice/spawn-options", 403)


def test_admin_made_through_the_hub_api_gets_and_loses_the_rights(wb, private_project):
    full_admin = token_of(wb, "admin")
    service = Api(wb.api_url, wb.admin_token)
    bob_token = wb.user_token("bob")
    bob = Api(wb.api_url, bob_token)
    bob.error("GET", "/audit", 403)
    bob.error("GET", f"/projects/{private_project}", 404)

    set_hub_admin(wb, full_admin, "bob", True)
    # bob's existing token follows its owner (the control plane trusts the hub's answer 5 s)
    wait_for(lambda: audit_status(bob) == 200, 10, "bob's workbench admin rights")
    assert bob("GET", f"/projects/{private_project}", 200)["role"] == "admin"
    # the spawner's view of bob (looked up through the hub) is an admin's too
    options = service("GET", "/users/bob/spawn-options", 200)["projects"]
    assert {"name": private_project, "role": "admin"}.items() <= next(
        o for o in options if o["name"] == private_project
    ).items()
    # a token of bob limited to using the workbench is not an admin
    Api(wb.api_url, token_of(wb, "bob", scopes=USE_ONLY)).error("GET", "/audit", 403)

    wb.stop()
    wb.start()
    assert audit_status(Api(wb.api_url, bob_token)) == 200, "admin rights lost at restart"
    assert audit_status(Api(wb.api_url, token_of(wb, "admin"))) == 200

    set_hub_admin(wb, token_of(wb, "admin"), "bob", False)
    wait_for(lambda: audit_status(bob) == 403, 10, "bob's admin rights to end")
    assert private_project not in [
        o["name"] for o in service("GET", "/users/bob/spawn-options", 200)["projects"]
    ]
