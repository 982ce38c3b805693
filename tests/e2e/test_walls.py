"""The attack list against a real `workbench up` with four users (docs/isolation.md).

alice owns the private project ``vault``; bob is its viewer; carol (group ``analysts``) is an
outsider with her project ``carols``; dave is in no group, with ``daves``. From a kernel, a job
run, a model build and a model replica, the attacker's code (tests/e2e/probe.py) tries to read
other projects and every file of the data directory, to write where its user may not, and to
use every token it holds for what only administrators may do. Then: links planted in a project,
in run outputs and in snapshots; revoked and expired tokens after 5 s; bad input; and a grep of
every log for every token, key and password issued. Every attempt is recorded; the test prints
the tally and fails on any breach or 5xx.
"""

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.kernel import run_code
from tests.e2e.probe import parse, probe_source
from tests.harness import Workbench, wait_for

pytestmark = pytest.mark.e2e

ISOLATED = "Each user's code runs as their own unix account"


@dataclass
class Tally:
    attempts: int = 0
    breaches: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)

    def check(self, what: str, breached: bool) -> None:
        self.attempts += 1
        if breached:
            self.breaches.append(what)

    def status(self, what: str, response: httpx.Response, expected: set[int]) -> None:
        """An HTTP attempt: a 5xx is counted as such, any other unexpected code as a breach."""
        self.attempts += 1
        if response.status_code >= 500:
            self.server_errors.append(f"{what}: {response.status_code} {response.text[:200]}")
        elif response.status_code not in expected:
            self.breaches.append(f"{what}: {response.status_code} {response.text[:200]}")
        elif response.status_code >= 400:
            body = response.json()  # users never see a traceback, always a JSON error
            # the workbench's shape, or Cloudera's on model routes (CML-COMPAT.md)
            if not ({"message", "error"} & set(body)) or "Traceback" in response.text:
                self.breaches.append(f"{what}: error without a message: {response.text[:200]}")


@pytest.fixture(scope="module")
def wb():
    if os.geteuid() != 0:
        pytest.skip("the walls need root (useradd, mount namespaces)")
    wb = Workbench().start()
    assert ISOLATED in wb.log_path.read_text(), wb.log()
    yield wb
    wb.stop()


def client(wb: Workbench, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=wb.api_url, headers={"Authorization": f"token {token}"}, timeout=120
    )


def data_files(data_dir: Path) -> list[str]:
    """Every file of the data directory (secrets and databases first), as root sees them."""
    found = sorted(str(p) for p in data_dir.rglob("*") if p.is_file() and not p.is_symlink())
    first = [p for p in found if "/secrets/" in p or p.count("/") == str(data_dir).count("/") + 1]
    return first + [p for p in found if p not in first][:800]


def judge(tally: Tally, who: str, result: dict, own: list[Path], known: dict) -> None:
    """Record every attempt of one probe: only its `own` directories may be read (and the
    directories leading to them listed)."""
    for path, outcome in result["reads"].items():
        if not path.startswith("/"):  # through a link in its own directory: what came out?
            leaked = {known[h] for h in set(outcome.get("words", ())) & set(known)}
            tally.check(f"{who} read a secret through {path}: {leaked}", bool(leaked))
        else:
            allowed = any(Path(path).is_relative_to(o) for o in own)
            tally.check(f"{who} read {path}", outcome["ok"] and not allowed)
    for path, outcome in result["writes"].items():
        tally.check(f"{who} wrote {path}", outcome["ok"])
    skeleton = {part for o in own for part in o.parts}
    for path, outcome in result["lists"].items():
        extra = set(outcome.get("names", ())) - skeleton
        tally.check(f"{who} listed {path}: {sorted(extra)}", bool(extra))
    leaked = set(result["env_and_proc_words"]) & set(known)
    tally.check(
        f"{who} found {[known[h] for h in leaked]} in its environment or /proc", bool(leaked)
    )
    for url, status in result["uses"]:
        tally.check(f"{who} used a token of its own on {url}: {status}", status == 200)
    tally.check(f"{who} ran as root", result["uid"] == 0)


def test_attack_list(wb):
    import hashlib

    tally = Tally()
    data = wb.data_dir.resolve()
    projects_root = data / "projects"
    homes = data / "homes"
    tokens = {
        "alice": wb.user_token("alice"),
        "bob": wb.user_token("bob"),
        "carol": wb.user_token("carol", groups=("analysts",)),
        "dave": wb.user_token("dave"),
    }
    api = {name: client(wb, token) for name, token in tokens.items()}
    for owner, name in (("alice", "vault"), ("carol", "carols"), ("dave", "daves")):
        r = api[owner].post("/projects", json={"name": name})
        assert r.status_code == 201, r.text
    alice_secret = "alice-" + secrets.token_hex(16)
    (projects_root / "vault" / "secret.txt").write_text(alice_secret)
    (projects_root / "daves" / "notes.txt").write_text("dave-" + secrets.token_hex(16))
    r = api["alice"].put("/projects/vault/collaborators/bob", json={"role": "viewer"})
    assert r.status_code == 200, r.text

    secret_values = {
        "service token": (data / "secrets" / "service-token").read_text().strip(),
        "proxy token": (data / "secrets" / "proxy-token").read_text().strip(),
        "admin password": wb.admin_password,
        "test admin token": wb.admin_token,
        "alice's project file": alice_secret,
        **{f"{name}'s API token": token for name, token in tokens.items()},
    }
    known = {hashlib.sha256(v.encode()).hexdigest(): k for k, v in secret_values.items()}
    ports = json.loads(
        re.search(
            r"configure_hub\(c, (\{.*?\})\)", (data / "jupyterhub_config.py").read_text(), re.S
        ).group(1)
    )
    internal = {
        "hub": f"http://127.0.0.1:{ports['hub_port']}/hub/api",
        "control plane": f"http://127.0.0.1:{ports['service_port']}/services/workbench/api/v1",
    }
    admin_urls = [
        f"{wb.url}/hub/api/users/alice",
        f"{wb.url}/hub/api/users/alice/tokens",
        f"{wb.api_url}/audit",
        f"{wb.api_url}/users/alice/spawn-options",
        f"{internal['hub']}/users",
        f"{internal['control plane']}/audit",
        f"http://127.0.0.1:{ports['proxy_api_port']}/api/routes",
    ]

    def config(project: str, writes=()):
        return {
            "read": [*data_files(data), "evil-link/service-token", "evil-file"],
            "write": [
                str(data / "secrets" / "service-token"),
                str(projects_root / "vault" / "secret.txt"),
                *writes,
            ],
            "list": [str(data), str(data / "secrets"), str(projects_root), str(homes)],
            "admin_urls": admin_urls,
        }

    # links a user plants in their own project, pointing at the workbench's secrets
    carols = projects_root / "carols"
    (carols / "evil-link").symlink_to(data / "secrets")
    (carols / "evil-file").symlink_to(data / "secrets" / "service-token")
    (carols / "link-etc").symlink_to("/etc")

    # 1. kernels: carol (outsider) and dave (in no group) in their projects, bob (viewer) in
    # alice's
    sessions = {"carol": "carols", "bob": "vault", "dave": "daves"}
    for user, project in sessions.items():
        r = httpx.post(
            f"{wb.url}/hub/api/users/{user}/servers/{project}",
            headers={"Authorization": f"token {tokens[user]}"},
            timeout=120,
        )
        assert r.status_code in (201, 202), r.text
    for user, project in sessions.items():
        wait_for(
            lambda u=user, p=project: (
                wb.hub("GET", f"/users/{u}").json()["servers"].get(p, {}).get("ready")
            ),
            120,
            f"session {user}/{project}",
        )
        writes = [str(projects_root / project / f"by-{user}.txt")] if user == "bob" else []
        out = run_code(
            f"{wb.url}/user/{user}/{project}", tokens[user], probe_source(config(project, writes))
        )
        own = [projects_root / project, homes / user]
        judge(tally, f"{user}'s kernel", parse(out), own, known)

    # the session's contents API does not follow links out of the project
    session = f"{wb.url}/user/carol/carols/api/contents"
    auth = {"Authorization": f"token {tokens['carol']}"}
    for path in (
        "evil-link",
        "evil-link/service-token",
        "evil-file",
        "link-etc",
        "link-etc/passwd",
    ):
        r = httpx.get(f"{session}/{path}", headers=auth, params={"content": "1"}, timeout=60)
        tally.status(f"contents API GET {path}", r, {400, 403, 404})
    listing = httpx.get(f"{session}/", headers=auth, timeout=60).json()
    for item in listing["content"]:
        tally.check(
            f"contents API lists {item['name']} as a {item['type']}",
            item["name"] in ("evil-link", "link-etc") and item["type"] == "directory",
        )
    r = httpx.put(
        f"{session}/link-etc/wb-attack.txt",
        json={"type": "file", "format": "text", "content": "x"},
        headers=auth,
        timeout=60,
    )
    tally.status("contents API PUT through a link", r, {400, 403, 404})
    tally.check("a file was written through a link", Path("/etc/wb-attack.txt").exists())
    # a viewer's read-only session: links there are refused too
    (projects_root / "vault" / "link-etc").symlink_to("/etc")
    r = httpx.get(
        f"{wb.url}/user/bob/vault/api/contents/link-etc/passwd",
        headers={"Authorization": f"token {tokens['bob']}"},
        timeout=60,
    )
    tally.status("read-only session GET link-etc/passwd", r, {400, 403, 404})

    # 2. a job run of carol's, which also replaces its output directory with a link
    (carols / "probe.py").write_text(
        probe_source(config("carols"))
        + "\nimport shutil\n"
        + "out = os.environ['WORKBENCH_OUTPUT_DIR']\n"
        + "shutil.rmtree(out)\n"
        + f"os.symlink({str(data / 'secrets')!r}, out)\n"
    )
    r = api["carol"].post("/projects/carols/jobs", json={"name": "probe", "target": "probe.py"})
    assert r.status_code == 201, r.text

    def run_to_end(number_path: str) -> dict:
        return wait_for(
            lambda: (
                (run := api["carol"].get(number_path).json())["state"]
                in ("succeeded", "failed", "timed_out", "stopped")
                and run
            ),
            180,
            number_path,
        )

    r = api["carol"].post("/projects/carols/jobs/probe/runs")
    assert r.status_code == 201, r.text
    run = run_to_end(f"/projects/carols/jobs/probe/runs/{r.json()['number']}")
    log = api["carol"].get(f"/projects/carols/jobs/probe/runs/{run['number']}/logs").text
    carol_own = [carols, homes / "carol"]
    judge(tally, "carol's job run", parse(log), carol_own, known)
    outputs = api["carol"].get(f"/projects/carols/jobs/probe/runs/{run['number']}/outputs")
    tally.status("run outputs through a link", outputs, {200, 404})
    if outputs.status_code == 200:
        names = {f["path"] for f in outputs.json()["files"]}
        tally.check(f"run outputs list the secrets {names}", "service-token" in names)
    r = api["carol"].get(f"/projects/carols/jobs/probe/runs/{run['number']}/outputs/service-token")
    tally.status("run output download through a link", r, {400, 404})
    tally.check(
        "the engine wrote through the run's link",
        (data / "secrets" / "output.log").exists(),
    )
    # a rerun works in the code snapshot: links in the project must not have copied secrets
    r = api["carol"].post(f"/projects/carols/jobs/probe/runs/{run['number']}/rerun")
    assert r.status_code == 201, r.text
    rerun = run_to_end(f"/projects/carols/jobs/probe/runs/{r.json()['number']}")
    log = api["carol"].get(f"/projects/carols/jobs/probe/runs/{rerun['number']}/logs").text
    result = parse(log)
    for path in ("evil-link/service-token", "evil-file"):
        tally.check(f"the rerun's snapshot holds {path}", result["reads"][path]["ok"])
    judge(tally, "carol's rerun", result, [*carol_own, Path(result["cwd"])], known)

    # 3. a model build and a replica of carol's (the build imports the file: the probe runs)
    (carols / "probe.py").write_text(probe_source(config("carols")))
    r = api["carol"].post(
        "/projects/carols/models",
        json={"name": "m", "file": "probe.py", "function": "predict", "replicas": 1},
    )
    assert r.status_code == 201, r.text
    r = api["carol"].post("/projects/carols/models/m/builds")
    assert r.status_code == 202, r.text
    build = wait_for(
        lambda: (
            (b := api["carol"].get("/projects/carols/models/m/builds/1").json())["state"]
            in ("succeeded", "failed")
            and b
        ),
        240,
        "build 1",
    )
    log = api["carol"].get("/projects/carols/models/m/builds/1/log").text
    assert build["state"] == "succeeded", log
    built = parse(log)
    r = api["carol"].post("/projects/carols/models/m/deployments", json={"build": 1, "replicas": 1})
    assert r.status_code == 202, r.text
    wait_for(
        lambda: (
            api["carol"].get("/projects/carols/models/m").json()["deployment"]["ready_replicas"]
            == 1
        ),
        120,
        "the replica",
    )
    key = api["carol"].post("/projects/carols/models/m/keys", json={"description": "attack"})
    access_key = key.json()["key"]
    secret_values["access key"] = access_key
    answer = httpx.post(
        f"{wb.url}/models/carols/m/model",
        json={"accessKey": access_key, "request": {}},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    served = answer.json()["response"]
    build_dir = Path(served["cwd"]).parent  # a replica runs in <its build>/src
    judge(tally, "carol's build", built, [*carol_own, build_dir], known)
    judge(tally, "carol's replica", served, [build_dir, homes / "carol"], known)

    # 4. revoked and expired tokens stop working within 5 s
    r = wb.hub("POST", "/users/dave/tokens", json={"note": "to revoke"})
    revoked = r.json()
    r = wb.hub("POST", "/users/dave/tokens", json={"note": "to expire", "expires_in": 2})
    expiring = r.json()
    secret_values.update(revoked=revoked["token"], expiring=expiring["token"])
    for token in (revoked["token"], expiring["token"]):
        assert client(wb, token).get("/projects").status_code == 200
    assert wb.hub("DELETE", f"/users/dave/tokens/{revoked['id']}").status_code == 204
    time.sleep(7)  # 2 s of life, then the 5 s bound
    for what, token in (("revoked", revoked["token"]), ("expired", expiring["token"])):
        tally.status(f"{what} token after 5 s", client(wb, token).get("/projects"), {401, 403})

    # 5. bad input never gives a 5xx
    bad = [
        ("deep nesting", "POST", "/projects", {"content": b"[" * 100_000}),
        (
            "deep nesting, unauthenticated",
            "POST",
            "/access-keys/resolve",
            {"content": b"[" * 100_000},
        ),
        (
            "huge build number",
            "POST",
            "/projects/carols/models/m/deployments",
            {"json": {"build": 10**30}},
        ),
        (
            "huge replicas",
            "POST",
            "/projects/carols/models/m/deployments",
            {"json": {"replicas": 10**30}},
        ),
        ("huge path id", "GET", "/projects/carols/models/m/builds/99999999999999999999", {}),
        ("5,000-digit run id", "GET", "/projects/carols/jobs/probe/runs/" + "9" * 5000, {}),
        (
            "2 MiB description",
            "POST",
            "/projects",
            {"json": {"name": "big", "description": "x" * 2**21}},
        ),
    ]
    for what, method, path, kwargs in bad:
        r = api["carol"].request(method, path, **kwargs)
        tally.status(what, r, {400, 404, 413, 414, 422})
    tally.check(
        "the 2 MiB project was created", api["carol"].get("/projects/big").status_code != 404
    )

    def chunks():
        block = b"[" + b"1," * (2**19)
        for _ in range(50):
            yield block

    r = httpx.post(f"{wb.url}/models/carols/m/model", content=chunks(), timeout=120)
    tally.status("50 MiB chunked body to a model", r, {413})

    # 6. no token, key or password in any log line of any process
    logs = [p for p in data.rglob("*") if p.is_file() and (p.suffix == ".log" or "log" in p.name)]
    logs.append(wb.log_path)
    for path in sorted(set(logs)):
        text = path.read_text(errors="replace")
        for name, value in secret_values.items():
            tally.check(f"{name} in {path}", bool(value) and value in text)

    print(
        f"\nattack list: {tally.attempts} attempts, {len(tally.breaches)} breaches, "
        f"{len(tally.server_errors)} 5xx"
    )
    for line in tally.breaches + tally.server_errors:
        print("  -", line)
    assert not tally.breaches and not tally.server_errors, tally.breaches + tally.server_errors


def test_without_walls_the_same_probe_finds_the_secrets():
    """The control: with isolation off, the probe of the attack list does read another user's
    project and the service token (so the attack test can see a breach)."""
    config = 'c.WorkbenchUp.isolation = "off"\nc.WorkbenchUp.allow_shared_unix_user = True\n'
    wb = Workbench(extra_config=config).start()
    try:
        data = wb.data_dir.resolve()
        tokens = {name: wb.user_token(name) for name in ("alice", "carol")}
        for owner, project in (("alice", "vault"), ("carol", "carols")):
            assert client(wb, tokens[owner]).post("/projects", json={"name": project}).is_success
        (data / "projects" / "vault" / "secret.txt").write_text("alice's")
        r = wb.hub("POST", "/users/carol/servers/carols")
        assert r.status_code in (201, 202), r.text
        wait_for(
            lambda: wb.hub("GET", "/users/carol").json()["servers"].get("carols", {}).get("ready"),
            120,
            "carol's session",
        )
        targets = [
            str(data / "projects" / "vault" / "secret.txt"),
            str(data / "secrets" / "service-token"),
        ]
        source = probe_source({"read": targets, "write": [], "list": [str(data)], "admin_urls": []})
        result = parse(run_code(f"{wb.url}/user/carol/carols", tokens["carol"], source))
        assert all(result["reads"][path]["ok"] for path in targets), result["reads"]
        assert "secrets" in result["lists"][str(data)]["names"]
    finally:
        wb.stop()
