"""End to end: revoked and expired tokens stop working within 5 s; no secret reaches a log.

One real `workbench up`. A user's token works on the control plane and on their session, then
is revoked (or expires) in the hub and is refused within 5 s by both (the control plane's
`WorkbenchService.auth_cache_seconds`, the sessions' `--HubOAuth.cache_max_age`). Then requests
that fail carry tokens, an access key and a password in query strings, headers and bodies,
through the proxy and straight to the control plane and the hub, and no file under the data
directory (the log of every process, the databases) holds any of them.
"""

import os
import time

import httpx
import pytest

from tests.harness import SERVICE_API, Workbench, wait_for

pytestmark = pytest.mark.e2e

#: the bound the workbench promises; polls add their own round trip on top
REVOCATION_SECONDS = 5.0


@pytest.fixture(scope="module")
def wb():
    wb = Workbench().start()
    yield wb
    wb.stop()


def new_token(wb: Workbench, user: str, **body) -> dict:
    r = wb.hub("POST", f"/users/{user}", json={})
    assert r.status_code in (201, 409), r.text
    r = wb.hub("POST", f"/users/{user}/tokens", json={"note": "tokens test", **body})
    assert r.status_code == 201, r.text
    return r.json()


def refused_after(url: str, token: str, since: float) -> tuple[float, float]:
    """Poll `url` with `token` until refused: when the last accepted and the first refused
    requests were sent, in seconds from `since`."""
    accepted = 0.0
    while (sent := time.monotonic()) < since + REVOCATION_SECONDS + 2:
        r = httpx.get(url, headers={"Authorization": f"token {token}"}, timeout=10)
        if r.status_code != 200:
            assert r.status_code in (302, 401, 403), (r.status_code, r.text)
            return accepted, sent - since
        accepted = sent - since
        time.sleep(0.05)
    raise AssertionError(f"{url} still accepts the token {REVOCATION_SECONDS + 2}s later")


def test_revoked_token_is_refused_by_the_control_plane_within_5s(wb):
    token = new_token(wb, "rita")
    url = f"{wb.api_url}/projects"
    r = httpx.get(url, headers={"Authorization": f"token {token['token']}"}, timeout=30)
    assert r.status_code == 200, r.text
    r = wb.hub("DELETE", f"/users/rita/tokens/{token['id']}")
    assert r.status_code == 204, r.text
    accepted, refused = refused_after(url, token["token"], time.monotonic())
    print(f"control plane: revoked token last accepted {accepted:.2f}s, refused {refused:.2f}s")
    assert accepted < REVOCATION_SECONDS


def test_expired_token_is_refused_by_the_control_plane_within_5s(wb):
    expires = time.monotonic() + 2  # at the latest
    token = new_token(wb, "rita", expires_in=2)
    url = f"{wb.api_url}/projects"
    r = httpx.get(url, headers={"Authorization": f"token {token['token']}"}, timeout=30)
    assert r.status_code == 200, r.text
    accepted, refused = refused_after(url, token["token"], expires)
    print(f"control plane: expired token last accepted {accepted:.2f}s, refused {refused:.2f}s")
    assert accepted < REVOCATION_SECONDS


@pytest.fixture(scope="module")
def session(wb):
    """User sam's running session of project `tokens`: its status URL."""
    token = new_token(wb, "sam")["token"]
    auth = {"Authorization": f"token {token}"}
    r = httpx.post(f"{wb.api_url}/projects", json={"name": "tokens"}, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    r = httpx.post(f"{wb.url}/hub/api/users/sam/servers/tokens", headers=auth, timeout=120)
    assert r.status_code in (201, 202), r.text
    wait_for(
        lambda: wb.hub("GET", "/users/sam").json()["servers"].get("tokens", {}).get("ready"),
        120,
        "sam's session",
    )
    return f"{wb.url}/user/sam/tokens/api/status"


@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_session_refuses_a_revoked_or_expired_token_within_5s(wb, session, how):
    since = time.monotonic() + 2  # the expiry at the latest
    token = new_token(wb, "sam", **({"expires_in": 2} if how == "expired" else {}))
    r = httpx.get(session, headers={"Authorization": f"token {token['token']}"}, timeout=30)
    assert r.status_code == 200, r.text
    if how == "revoked":
        r = wb.hub("DELETE", f"/users/sam/tokens/{token['id']}")
        assert r.status_code == 204, r.text
        since = time.monotonic()
    accepted, refused = refused_after(session, token["token"], since)
    print(f"session: {how} token last accepted {accepted:.2f}s, refused {refused:.2f}s")
    assert accepted < REVOCATION_SECONDS


def test_no_secret_in_any_log_or_file(wb, session):
    valid = new_token(wb, "lea")["token"]
    revoked = new_token(wb, "lea")
    assert wb.hub("DELETE", f"/users/lea/tokens/{revoked['id']}").status_code == 204
    unknown = os.urandom(16).hex()
    access_key = "wbk_" + os.urandom(18).hex()
    password = "pw-" + os.urandom(12).hex()
    secrets = [valid, revoked["token"], unknown, access_key, password]
    control_plane = f"http://127.0.0.1:{wb.service_port}{SERVICE_API}"
    answers = []
    for token in (valid, revoked["token"], unknown):
        for base in (wb.api_url, control_plane):  # through the proxy, and straight
            answers += [
                httpx.get(f"{base}/no-such-route?token={token}"),
                httpx.get(f"{base}/audit?token={token}"),
                httpx.get(f"{base}/projects", headers={"Authorization": f"token {token}"}),
                httpx.get(f"{base}/projects?access_token={token}&accessKey={access_key}"),
            ]
        answers += [
            httpx.get(f"{wb.url}/hub/api/no-such-route?token={token}"),
            httpx.get(f"{wb.url}/hub/api/user", headers={"Authorization": f"Bearer {token}"}),
            httpx.get(f"{wb.url}/user/sam/tokens/api/no-such-route?token={token}"),
            httpx.get(f"{session}?token={token}"),
            httpx.get(f"{wb.url}/no-such-prefix/x?token={token}"),
        ]
    answers += [
        httpx.post(f"{base}/access-keys/resolve", json={"accessKey": access_key})
        for base in (wb.api_url, control_plane)
    ]
    answers += [
        httpx.post(
            f"{wb.url}/models/no-such/model/model",
            json={"accessKey": access_key, "request": {}},
        ),
        httpx.post(
            f"{wb.url}/hub/login?next=/hub/&token={unknown}",
            data={"username": "lea", "password": password},
        ),
    ]
    assert {r.status_code for r in answers} >= {401, 403, 404}
    time.sleep(1)  # the processes' last lines reach up.log
    leaks = []
    for path in sorted(wb.data_dir.rglob("*")):
        if not path.is_file():
            continue
        content = path.read_bytes()
        leaks += [(str(path), s) for s in secrets if s.encode() in content]
    assert not leaks, leaks
    assert "[secret]" in wb.log()  # the lines are there, their secrets are not
