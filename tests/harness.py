"""Runs the real `workbench up` in a subprocess on free ports, for API and end-to-end tests."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import psutil

from tests.postgres import free_port

SERVICE_API = "/services/workbench/api/v1"
TEST_ADMIN_SERVICE = "test-admin"

#: Extra hub configuration: a service whose token the tests use to manage hub users.
EXTRA_CONFIG = """
c.JupyterHub.services.append({{"name": "{name}", "api_token": "{token}"}})
c.JupyterHub.load_roles.append(
    {{
        "name": "{name}",
        "scopes": ["admin:users", "admin:groups", "admin:servers", "tokens", "list:users",
                   "read:users", "access:services", "access:servers", "custom:workbench:admin"],
        "services": ["{name}"],
    }}
)
{extra}
"""


def wait_for(check, timeout: float, what: str):
    """Call `check` until it returns a true value (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Workbench:
    """One `workbench up` process and helpers to drive it as users would."""

    def __init__(self, db_url: str | None = None, extra_config: str = "", data_dir=None):
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="workbench-test-"))
        self.port = free_port()
        self.service_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = self.url + SERVICE_API
        self.db_url = db_url
        self.admin_token = os.urandom(16).hex()
        self.config_file = self.data_dir / "test_config.py"
        self.config_file.write_text(
            EXTRA_CONFIG.format(
                name=TEST_ADMIN_SERVICE, token=self.admin_token, extra=textwrap.dedent(extra_config)
            )
        )
        self.proc: subprocess.Popen | None = None
        self.admin_password: str | None = None
        self.log_path = self.data_dir / "up.log"

    def command(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "workbench_hub.cli",
            "up",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--hub-port",
            str(free_port()),
            "--service-port",
            str(self.service_port),
            "--proxy-api-port",
            str(free_port()),
            "--config",
            str(self.config_file),
        ]
        if self.db_url:
            argv += ["--db-url", self.db_url]
        return argv

    def start(self, timeout: float = 120) -> "Workbench":
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.command(), stdout=self.log_file, stderr=subprocess.STDOUT, env=env
        )
        self.wait_ready(timeout)
        first = self.data_dir / "secrets" / "first-admin-password"
        if "First start" in self.log_path.read_text():
            self.admin_password = first.read_text().strip()
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"workbench up exited early:\n{self.log()}")
            try:
                hub = httpx.get(f"{self.url}/hub/api/", timeout=2)
                service = httpx.get(
                    f"{self.api_url}/projects",
                    headers={"Authorization": f"token {self.admin_token}"},
                    timeout=5,
                )
                if hub.status_code == 200 and service.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"workbench did not become ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def control_plane(self) -> psutil.Process:
        """The control plane's process (`python -m workbench_hub`), started by the hub."""
        for proc in self.descendants():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and proc.cmdline()[1:3] == [
                    "-m",
                    "workbench_hub",
                ]:
                    return proc
            except psutil.Error:
                continue
        raise AssertionError("no control plane process")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM `workbench up`, as a service manager would; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log_file.close()

    # ------------------------------------------------------------ hub helpers

    def hub(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Call the hub's REST API with the test admin service's token."""
        return httpx.request(
            method,
            f"{self.url}/hub/api{path}",
            headers={"Authorization": f"token {self.admin_token}"},
            timeout=60,
            **kwargs,
        )

    def add_login(self, name: str, password: str, admin: bool = False) -> None:
        """Give a user a password with the real CLI (`workbench users add`)."""
        argv = [
            sys.executable,
            "-m",
            "workbench_hub.cli",
            "users",
            "add",
            name,
            "--password-stdin",
            "--data-dir",
            str(self.data_dir),
        ]
        if admin:
            argv.append("--admin")
        subprocess.run(argv, input=password + "\n", text=True, check=True, capture_output=True)

    def cli(self, token: str, *argv: str, input: str | None = None) -> subprocess.CompletedProcess:
        """Run the real `workbench` CLI against this workbench as the token's owner."""
        argv = (*argv, "--url", self.api_url, "--token", token)
        result = subprocess.run(
            [sys.executable, "-m", "workbench_hub.cli", *argv],
            capture_output=True,
            text=True,
            input=input,
            timeout=180,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def user_token(self, name: str, groups=()) -> str:
        """Create a hub user (and groups), and return a new API token of theirs."""
        r = self.hub("POST", f"/users/{name}")
        assert r.status_code in (201, 409), r.text
        for group in groups:
            r = self.hub("POST", f"/groups/{group}")
            assert r.status_code in (201, 409), r.text
            r = self.hub("POST", f"/groups/{group}/users", json={"users": [name]})
            assert r.status_code == 200, r.text
        r = self.hub("POST", f"/users/{name}/tokens", json={"note": "tests"})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def login(self, name: str, password: str) -> httpx.Client:
        """Log in through the hub's login form; returns a browser-like client with cookies."""
        client = httpx.Client(base_url=self.url, timeout=60, follow_redirects=True)
        page = client.get("/hub/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        data = {"username": name, "password": password}
        if xsrf:
            data["_xsrf"] = xsrf.group(1)
        r = client.post("/hub/login", data=data)
        assert r.status_code == 200 and "/hub/login" not in str(r.url), r.text[:500]
        return client
