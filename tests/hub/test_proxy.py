"""The workbench's proxy alone on loopback: chunked bodies, the 413 of model routes, its log.

`python -m workbench_hub.proxy` runs with a small ``--model-max-body-bytes``; a stub upstream
answers what it received. A route with ``workbench_targets`` stands for a model.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.harness import wait_for
from tests.postgres import free_port

LIMIT = 4096
TOKEN = "5c0ffee5c0ffee5c0ffee5c0ffee5c0f"
PROXY_TOKEN = "proxy-api-secret"


class Upstream(BaseHTTPRequestHandler):
    """Answers ``{"size", "transfer_encoding"}`` of the request it got."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen = {"size": len(body), "transfer_encoding": self.headers.get("Transfer-Encoding")}
        answer = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{upstream.server_address[1]}"
    port, api_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("proxy") / "proxy.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workbench_hub.proxy",
                f"--port={port}",
                f"--api-port={api_port}",
                f"--model-max-body-bytes={LIMIT}",
            ],
            env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": PROXY_TOKEN},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}/api/routes",
        headers={"Authorization": f"token {PROXY_TOKEN}"},
    )

    def add_route(prefix: str, data: dict) -> bool:
        try:
            return api.post(prefix, json=data).status_code == 201
        except httpx.TransportError:
            return False

    wait_for(
        lambda: add_route("/models/p/m", {"target": target, "workbench_targets": [target]}),
        30,
        "the proxy",
    )
    assert add_route("/plain", {"target": target})
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "log": log_path}
    proc.terminate()
    proc.wait(10)
    upstream.shutdown()


def chunks(total: int, size: int = 1000):
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


def test_chunked_bodies_are_forwarded_with_a_content_length(proxy):
    for path in ("/models/p/m/model", "/plain/x"):
        r = httpx.post(proxy["url"] + path, content=chunks(LIMIT))
        assert r.status_code == 200, r.text
        assert r.json() == {"size": LIMIT, "transfer_encoding": None}
    # the limit is the model routes'; bodies with a Content-Length are the replica's to judge
    r = httpx.post(proxy["url"] + "/plain/x", content=chunks(3 * LIMIT))
    assert r.json()["size"] == 3 * LIMIT
    r = httpx.post(proxy["url"] + "/models/p/m/model", content=b"x" * (3 * LIMIT))
    assert r.json()["size"] == 3 * LIMIT


def test_chunked_body_over_the_limit_of_a_model_route_gets_413(proxy):
    r = httpx.post(proxy["url"] + "/models/p/m/model", content=chunks(LIMIT + 1))
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"success": False, "error": f"the body is larger than {LIMIT} bytes"}


def test_the_413_comes_before_the_body_ends_and_the_connection_stays_usable(proxy):
    with socket.create_connection(("127.0.0.1", proxy["port"]), timeout=10) as sock:
        sock.sendall(
            b"POST /models/p/m/model HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"y" * 1000
        for _ in range(LIMIT // 1000 + 1):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = sock.recv(65536)  # the body has not ended yet
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        assert answer.endswith(f"the body is larger than {LIMIT} bytes".encode() + b'"}')
        for _ in range(5):  # the rest is read and dropped
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        sock.sendall(b"POST /plain/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        deadline = time.monotonic() + 10
        answer = b""
        while b'"size": 2' not in answer and time.monotonic() < deadline:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_no_token_in_the_proxy_log(proxy):
    answers = [
        httpx.get(f"{proxy['url']}/nowhere?token={TOKEN}"),
        httpx.post(f"{proxy['url']}/models/p/m/model?token={TOKEN}", content=chunks(LIMIT + 1)),
        httpx.get(f"{proxy['url']}/nowhere", headers={"Authorization": f"token {TOKEN}"}),
    ]
    assert [r.status_code for r in answers] == [404, 413, 404]
    time.sleep(0.5)
    log = proxy["log"].read_text()
    assert "?token=[secret]" in log
    assert TOKEN not in log and PROXY_TOKEN not in log


def test_the_option_is_in_the_help():
    done = subprocess.run(
        [sys.executable, "-m", "workbench_hub.proxy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--model-max-body-bytes" in done.stdout and "--proxy-timeout" in done.stdout


def test_a_method_the_proxy_does_not_forward_gets_405_with_allow(proxy):
    r = httpx.request("TRACE", proxy["url"] + "/plain/x")
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == {
        "GET",
        "HEAD",
        "POST",
        "DELETE",
        "PATCH",
        "PUT",
        "OPTIONS",
    }
