"""Fixtures of the model-server tests: the control-plane double and real replica processes."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.control_plane import CRN, TOKEN, ReplicaControlPlane

REPO = Path(__file__).resolve().parents[2]
KEY = "wbk_test_key_0f3a9c51"
PREFIX = "/models/churn/scorer"

MODEL_SOURCE = '''"""Model functions the replica tests serve."""
import asyncio
import pathlib
import time

import cdsw
import cml.metrics_v1 as metrics
import cml.models_v1 as models
import numpy as np


def predict(args):
    if not isinstance(args, dict):
        return {"echo": args}
    if "marker" in args:
        pathlib.Path(args["marker"]).touch()
    if "sleep" in args:
        time.sleep(args["sleep"])
    if "raise" in args:
        raise ValueError(args["raise"])
    if "numpy" in args:
        return {"values": np.arange(args["numpy"]) * 2, "mean": np.float32(0.5)}
    if "object" in args:
        return {"object": object()}
    if "track" in args:
        cdsw.track_metric("x", 1)
    return {"echo": args}


@cdsw.model_metrics
def scored(args):
    cdsw.track_metric("input", args["x"])
    cdsw.track_metric("detail", {"double": args["x"] * 2, "tags": ["a", 1]})
    return args["x"] * 2


@models.cml_model(metrics=True)
def scored_cml(args):
    metrics.track_metric("input", args["x"])
    return args["x"] * 2


async def apredict(args):
    await asyncio.sleep(args.get("sleep", 0))
    return {"async": args}


def two_args(a, b):
    return a
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """A `python -m workbench_serving` process; its stdout and stderr go to files."""

    def __init__(self, proc: subprocess.Popen, port: int, out: Path, err: Path) -> None:
        self.proc = proc
        self.port = port
        self.out = out
        self.err = err
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def url(self, path: str, prefix: str = PREFIX) -> str:
        return f"http://127.0.0.1:{self.port}{prefix}{path}"

    def call(self, request, key=KEY, path="/model", **kwargs) -> httpx.Response:
        return self.http.post(f"{PREFIX}{path}", json={"accessKey": key, "request": request})

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_ready(self, timeout: float = 30.0) -> "Replica":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"replica exited {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/health").status_code == 200:
                    return self
            time.sleep(0.05)
        raise AssertionError(f"replica not ready after {timeout} s:\n{self.output()}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.http.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.http.close()


def replica_env(port: int) -> dict:
    env = {
        **os.environ,
        "WORKBENCH_PORT_HTTP": str(port),
        "WORKBENCH_DEPLOYMENT_TOKEN": TOKEN,
        "CDSW_MODEL_DEPLOYMENT_CRN": CRN,
    }
    paths = [str(REPO / "serving"), str(REPO / "extensions")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def command(control: ReplicaControlPlane, function: str, *options: str, file="model.py"):
    return [
        sys.executable,
        "-m",
        "workbench_serving",
        "--file",
        file,
        "--function",
        function,
        "--prefix",
        PREFIX,
        "--control-url",
        control.api_url,
        "--deployment-crn",
        CRN,
        "--replica",
        f"mdl-test-{function}",
        *options,
    ]


@pytest.fixture(scope="module")
def control():
    """The control-plane double (one per test module) with the key KEY valid."""
    double = ReplicaControlPlane().start()
    double.add_key(KEY)
    yield double
    double.stop()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A build's source directory holding model.py (MODEL_SOURCE)."""
    path = tmp_path_factory.mktemp("src")
    (path / "model.py").write_text(MODEL_SOURCE)
    return path


@pytest.fixture(scope="module")
def start_replica(control, model_dir, tmp_path_factory):
    """Start a replica serving `function` of model.py; stopped at the end of the module."""
    started: list[Replica] = []

    def start(function: str, *options: str, wait: bool = True, env: dict | None = None):
        port = free_port()
        logs = tmp_path_factory.mktemp(f"replica-{function}")
        out, err = logs / "stdout.txt", logs / "stderr.txt"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            proc = subprocess.Popen(
                command(control, function, *options),
                cwd=model_dir,
                env={**replica_env(port), **(env or {})},
                stdout=stdout,
                stderr=stderr,
            )
        replica = Replica(proc, port, out, err)
        started.append(replica)
        return replica.wait_ready() if wait else replica

    yield start
    for replica in started:
        if replica.proc.poll() is None:
            try:
                replica.terminate(10)
            except subprocess.TimeoutExpired:
                replica.kill()
