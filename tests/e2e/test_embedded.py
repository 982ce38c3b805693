"""End to end: the real `workbench up`, three users logged in through the hub, real sessions."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness import Workbench

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "alice-pass-1", "bob": "bob-pass-12", "carol": "carol-pass-1"}


def xsrf_headers(client: httpx.Client) -> dict:
    return {"X-XSRFToken": client.cookies.get("_xsrf", path="/hub/") or ""}


def token_of(client: httpx.Client, name: str) -> str:
    """Create an API token from a logged-in browser session, as the hub's token page does."""
    r = client.post(
        f"/hub/api/users/{name}/tokens", json={"note": "e2e"}, headers=xsrf_headers(client)
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


def wait_server_ready(wb: Workbench, user: str, server: str, timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = wb.hub("GET", f"/users/{user}").json()
        spawner = model.get("servers", {}).get(server)
        if spawner and spawner.get("ready"):
            return spawner
        time.sleep(0.2)
    raise AssertionError(f"server {user}/{server} not ready:\n{wb.log()}")


@pytest.fixture(scope="module")
def running():
    wb = Workbench().start()
    yield wb
    if wb.proc.poll() is None:
        wb.stop()


def test_three_users_projects_and_sessions(running):
    wb = running
    assert wb.admin_password, "first start must print the admin's password"
    for name, password in PASSWORDS.items():
        wb.add_login(name, password)
    browsers = {name: wb.login(name, pw) for name, pw in PASSWORDS.items()}
    tokens = {name: token_of(browsers[name], name) for name in PASSWORDS}

    def api(user, method, path, **kw):
        return httpx.request(
            method,
            f"{wb.api_url}{path}",
            headers={"Authorization": f"token {tokens[user]}"},
            timeout=120,
            **kw,
        )

    # A creates a project from the built-in template and shares it with B as viewer.
    r = api("alice", "POST", "/projects", json={"name": "churn", "template": "python-starter"})
    assert r.status_code == 201, r.text
    project = r.json()
    assert project["role"] == "admin"
    r = api("alice", "PUT", "/projects/churn/collaborators/bob", json={"role": "viewer"})
    assert r.status_code == 200, r.text

    # In a browser, the service's home page (the hub's Services menu) lists what each user may use.
    for user, sees in (("alice", True), ("bob", True), ("carol", False)):
        page = browsers[user].get("/services/workbench/")
        assert page.status_code == 200, (page.url, page.text[:500])
        assert page.headers["content-type"].startswith("text/html")
        assert ('data-project="churn"' in page.text) is sees, page.text[:300]
        if sees:
            assert f"/hub/spawn/{user}/churn" in page.text

    # A and B start sessions in it (named server = project) and reach them through the proxy.
    for user in ("alice", "bob"):
        r = httpx.post(
            f"{wb.url}/hub/api/users/{user}/servers/churn",
            headers={"Authorization": f"token {tokens[user]}"},
            timeout=120,
        )
        assert r.status_code in (201, 202), r.text
    for user in ("alice", "bob"):
        wait_server_ready(wb, user, "churn")
        r = httpx.get(
            f"{wb.url}/user/{user}/churn/api/status",
            headers={"Authorization": f"token {tokens[user]}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert "started" in r.json()
        # The session's root is the project directory.
        r = httpx.get(
            f"{wb.url}/user/{user}/churn/api/contents/",
            headers={"Authorization": f"token {tokens[user]}"},
            timeout=60,
        )
        assert r.status_code == 200
        assert "README.md" in {item["name"] for item in r.json()["content"]}

    # The session knows its project and the user's role: B (viewer) cannot write files.
    for user, read_only in (("alice", False), ("bob", True)):
        auth = {"Authorization": f"token {tokens[user]}"}
        context = httpx.get(f"{wb.url}/user/{user}/churn/workbench/context", headers=auth)
        assert context.status_code == 200, context.text
        assert context.json()["project"] == "churn"
        assert context.json()["read_only"] is read_only
        put = httpx.put(
            f"{wb.url}/user/{user}/churn/api/contents/notes.txt",
            json={"type": "file", "format": "text", "content": f"by {user}"},
            headers=auth,
        )
        assert put.status_code == (403 if read_only else 201), put.text
    assert (Path(project["path"]) / "notes.txt").read_text() == "by alice"

    # The SDK in a session's environment talks to the control plane as the session's user.
    sdk = subprocess.run(
        [sys.executable, "-c", "import workbench; print(workbench.current_project()['role'])"],
        env={
            **os.environ,
            "WORKBENCH_API_URL": wb.api_url,
            "WORKBENCH_PROJECT": "churn",
            "WORKBENCH_TOKEN": tokens["bob"],
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sdk.stdout.strip() == "viewer", sdk.stderr

    # A runs a second session at the same time, in another project.
    assert api("alice", "POST", "/projects", json={"name": "fraud"}).status_code == 201
    r = httpx.post(
        f"{wb.url}/hub/api/users/alice/servers/fraud",
        headers={"Authorization": f"token {tokens['alice']}"},
        timeout=120,
    )
    assert r.status_code in (201, 202), r.text
    wait_server_ready(wb, "alice", "fraud")
    for project_name in ("churn", "fraud"):
        context = httpx.get(
            f"{wb.url}/user/alice/{project_name}/workbench/context",
            headers={"Authorization": f"token {tokens['alice']}"},
        )
        assert context.json()["project"] == project_name

    sessions = api("alice", "GET", "/projects/churn/sessions").json()["sessions"]
    assert {s["user"] for s in sessions} == {"alice", "bob"}

    # B is a viewer: changing the project is refused.
    r = api("bob", "PATCH", "/projects/churn", json={"description": "mine now"})
    assert r.status_code == 403, r.text
    assert r.json()["message"]
    r = api("bob", "DELETE", "/projects/churn", params={"confirm": "churn"})
    assert r.status_code == 403

    # C sees neither the project nor its sessions.
    assert "churn" not in {p["name"] for p in api("carol", "GET", "/projects").json()["projects"]}
    assert api("carol", "GET", "/projects/churn").status_code == 404
    assert api("carol", "GET", "/projects/churn/sessions").status_code == 404
    r = httpx.get(
        f"{wb.url}/user/alice/churn/api/status",
        headers={"Authorization": f"token {tokens['carol']}"},
        timeout=60,
    )
    assert r.status_code in (403, 404)

    # The audit log saw it all.
    events = httpx.get(
        f"{wb.api_url}/audit",
        headers={"Authorization": f"token {wb.admin_token}"},
        timeout=60,
    ).json()["events"]
    actions = {e["action"] for e in events}
    assert {"project.created", "collaborator.added", "session.started"} <= actions

    # Everything stops cleanly, with no stray processes.
    children = wb.descendants()
    names = " ".join(" ".join(p.cmdline()) for p in children if p.is_running())
    assert re.search(r"jupyterhub-singleuser|singleuser", names), names
    assert wb.stop() == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
