"""Model serving throughput and latency: one workbench replica beside MLflow's scoring server.

The same scikit-learn model and the same request (one row) on both: ``--model lr`` (default),
a LogisticRegression on ``load_iris`` (4 features); ``--model pipeline``, StandardScaler +
LogisticRegression on ``load_breast_cancer`` (30 features; scikit-learn's input checks run
twice, so the function itself costs about twice as much). Each server is pinned to CPU core 0
with ``taskset``, the load comes from ``wrk`` pinned to core 1 (a C load generator, so the
client is not the bottleneck; with no ``wrk`` an asyncio httpx generator is used and the
table says so). Fixed concurrency (``--connections``), an untimed warm-up, then ``--seconds``
of measurement. The table also gives the function's own time per call, measured in this
process on the same row, which bounds what any server can do.

* ours: ``python -m workbench_serving`` (one replica with its defaults: one worker thread,
  calls that have proved fast made on the event loop's thread; and once with
  ``--no-inline``: every call in the worker thread), against the control-plane
  test double of tests/serving/control_plane.py running in this process (it answers the
  access keys and takes the metrics and stats posts). The function loads the model with
  joblib and returns ``model.predict(np.asarray(rows)).tolist()``. Measured on
  ``/invocations`` (the MLflow-style request, the same body as MLflow's) and ``/model``
  (Cloudera's form), and with ``@model_metrics`` and one ``track_metric`` per call.
* peer: ``mlflow models serve -m <model> --env-manager local -w 1`` on the model saved with
  ``mlflow.sklearn.save_model`` (with a numpy signature, MLflow's cheapest input path), in
  its own virtualenv, outside the repository:

      python3 -m venv /tmp/mlflow-venv && /tmp/mlflow-venv/bin/pip install mlflow scikit-learn

  (the scikit-learn versions of both environments should match: the model is trained here and
  loaded there). Run from the repository root:

      python benchmarks/model_server.py --mlflow-venv /tmp/mlflow-venv --connections 16 --seconds 20
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.serving.control_plane import CRN, TOKEN, ReplicaControlPlane

KEY = "wbk_benchmark_key_5c1f0e"
SERVER_CORE, LOAD_CORE = 0, 1
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}

MODEL_PY = """import joblib
import numpy as np

from workbench.metrics import model_metrics, track_metric

MODEL = joblib.load("model.joblib")


def predict(rows):
    return MODEL.predict(np.asarray(rows, dtype=np.float64)).tolist()


@model_metrics
def predict_tracked(rows):
    labels = MODEL.predict(np.asarray(rows, dtype=np.float64)).tolist()
    track_metric("label", labels[0])
    return labels
"""

SAVE_MLFLOW = """import sys
import joblib
import mlflow.sklearn
import numpy as np
from mlflow.models import infer_signature

model = joblib.load(sys.argv[1])
rows = np.asarray(__import__("json").loads(sys.argv[3]), dtype=np.float64)
mlflow.sklearn.save_model(model, sys.argv[2], signature=infer_signature(rows, model.predict(rows)))
print(mlflow.__version__)
"""

LUA = """wrk.method = "POST"
wrk.body = [=[{body}]=]
wrk.headers["Content-Type"] = "application/json"
{auth}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MODELS = {
    "lr": "LogisticRegression, iris (4 features)",
    "pipeline": "StandardScaler + LogisticRegression, breast cancer (30 features)",
}


def train(workdir: Path, kind: str) -> tuple[list[list[float]], float]:
    """Fit the model, save it with joblib in workdir/src; a request row, the call's us."""
    import joblib
    import numpy as np
    import sklearn
    from sklearn.datasets import load_breast_cancer, load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "lr":
        x, y = load_iris(return_X_y=True)
        model = LogisticRegression(max_iter=1000).fit(x, y)
    else:
        x, y = load_breast_cancer(return_X_y=True)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    src = workdir / "src"
    src.mkdir()
    joblib.dump(model, src / "model.joblib")
    (src / "model.py").write_text(MODEL_PY)
    row = [x[0].tolist()]
    batches = []
    for _ in range(6):  # the best of 6 batches: the machine's other work only adds time
        started = time.perf_counter()
        for _ in range(300):
            model.predict(np.asarray(row, dtype=np.float64)).tolist()
        batches.append((time.perf_counter() - started) / 300 * 1e6)
    call_us = min(batches)
    print(
        f"{MODELS[kind]}, scikit-learn {sklearn.__version__}: accuracy {model.score(x, y):.3f},"
        f" {call_us:.0f} us a call in-process"
    )
    return row, call_us


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s; log {log}")


def start(cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            ["taskset", "-c", str(SERVER_CORE), *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 2**20
    except psutil.NoSuchProcess:
        return float("nan")


def wrk(url: str, body: str, auth: str | None, connections: int, seconds: int, tmp: Path) -> dict:
    """Run wrk on the load core; requests/s, p50/p99 in ms, non-2xx count."""
    script = tmp / "post.lua"
    header = f'wrk.headers["Authorization"] = "{auth}"' if auth else ""
    script.write_text(LUA.format(body=body, auth=header))
    cmd = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    out = subprocess.run(
        [*cmd, "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(pct: str) -> float:
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        assert found, out
        value, unit = found.groups()
        return float(value) * UNITS[unit]

    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "count": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "non2xx": int(errors.group(1)) if errors else 0,
    }


def httpx_load(url: str, body: str, auth: str | None, connections: int, seconds: int, tmp) -> dict:
    """Fallback without wrk: `connections` asyncio clients in this process (slower client)."""
    os.sched_setaffinity(0, {LOAD_CORE})
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    data = body.encode()
    latencies: list[float] = []
    non2xx = 0

    async def client(http: httpx.AsyncClient, until: float) -> None:
        nonlocal non2xx
        while time.monotonic() < until:
            t0 = time.perf_counter()
            response = await http.post(url, content=data, headers=headers)
            latencies.append((time.perf_counter() - t0) * 1000)
            non2xx += response.status_code >= 300

    async def run() -> float:
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=60) as http:
            t0 = time.monotonic()
            until = t0 + seconds
            await asyncio.gather(*(client(http, until) for _ in range(connections)))
            return time.monotonic() - t0

    elapsed = asyncio.run(run())
    ordered = sorted(latencies)
    return {
        "count": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "non2xx": non2xx,
    }


def measure(load, name, url, body, auth, args, tmp, pid) -> dict:
    warm = load(url, body, auth, args.connections, args.warmup, tmp)  # untimed warm-up
    runs = []
    for _ in range(args.runs):
        runs.append(load(url, body, auth, args.connections, args.seconds, tmp))
        r = runs[-1]
        print(
            f"  {name}: {r['rps']:.0f} req/s, p50 {r['p50']:.2f} ms,"
            f" p99 {r['p99']:.2f} ms, {r['non2xx']} non-2xx",
            flush=True,
        )
    result = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]  # the median run
    result["rss"] = rss_mb(pid)
    result["answered"] = warm["count"] + sum(r["count"] for r in runs)
    result["non2xx"] = sum(r["non2xx"] for r in runs)
    return result


def run_mlflow(args, workdir: Path, row, load) -> tuple[str, dict]:
    venv = Path(args.mlflow_venv)
    python = venv / "bin" / "python"
    if not (venv / "bin" / "mlflow").exists():
        sys.exit(
            f"no MLflow in {venv}; create it with:\n"
            f"  python3 -m venv {venv} && {venv}/bin/pip install mlflow scikit-learn"
        )
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    model_dir = workdir / "mlflow-model"
    saved = subprocess.run(
        [python, "-c", SAVE_MLFLOW, workdir / "src" / "model.joblib", model_dir, json.dumps(row)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    version = saved.stdout.strip().splitlines()[-1]
    port = free_port()
    log = workdir / "mlflow.log"
    cmd = [str(venv / "bin" / "mlflow"), "models", "serve", "-m", str(model_dir)]
    cmd += ["--env-manager", "local", "-w", "1", "-p", str(port), "-h", "127.0.0.1"]
    proc = start(cmd, log, env=env, cwd=workdir)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, 120, log)
        body = json.dumps({"inputs": row})
        check = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        check.raise_for_status()
        print(f"MLflow {version}: {check.text.strip()}", flush=True)
        url = f"http://127.0.0.1:{port}/invocations"
        result = measure(load, "MLflow /invocations", url, body, None, args, workdir, proc.pid)
    finally:
        stop(proc)
    return version, result


#: replicas measured: function, extra command-line options, routes, label suffix
OURS = [
    ("predict", [], ("/invocations", "/model"), ""),
    ("predict", ["--no-inline"], ("/invocations",), ", worker thread only"),
    ("predict_tracked", [], ("/model",), " + metrics"),
]


def run_ours(args, workdir: Path, row, load, control: ReplicaControlPlane) -> dict:
    results = {}
    bodies = {
        "/invocations": (json.dumps({"inputs": row}), f"Bearer {KEY}"),
        "/model": (json.dumps({"accessKey": KEY, "request": row}), None),
    }
    for n, (function, options, routes, suffix) in enumerate(OURS):
        port = free_port()
        log = workdir / f"workbench-{n}.log"
        env = {**os.environ, "WORKBENCH_PORT_HTTP": str(port), "WORKBENCH_DEPLOYMENT_TOKEN": TOKEN}
        cmd = [sys.executable, "-m", "workbench_serving", "--file", "model.py"]
        cmd += ["--function", function, "--prefix", "/models/bench/cancer"]
        cmd += ["--control-url", control.api_url, "--deployment-crn", CRN]
        cmd += ["--replica", f"bench-{n}", *options]
        records_before = len(control.records)
        proc = start(cmd, log, env=env, cwd=workdir / "src")
        base = f"http://127.0.0.1:{port}/models/bench/cancer"
        try:
            wait_http(f"{base}/health", proc, 60, log)
            check = httpx.post(f"{base}/model", content=bodies["/model"][0], timeout=30)
            assert check.status_code == 200, check.text
            print(f"workbench {function}{suffix}: {check.text.strip()}", flush=True)
            answered = 1
            for route in routes:
                name = f"workbench {route}{suffix}"
                body, auth = bodies[route]
                url = base + route
                results[name] = measure(load, name, url, body, auth, args, workdir, proc.pid)
                answered += results[name]["answered"]
        finally:
            stop(proc)
        assert proc.returncode == 0, f"replica exited {proc.returncode}; log {log}"
        if function == "predict_tracked":
            print(
                f"prediction records received by the control plane:"
                f" {len(control.records) - records_before} (answers counted by wrk: {answered},"
                " plus those in flight when it stopped)",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mlflow-venv",
        default="/tmp/mlflow-venv",  # noqa: S108 - where the instructions above create it
        help="virtualenv with mlflow and scikit-learn",
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="lr", help="see above")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=20, help="measured seconds per server")
    parser.add_argument("--warmup", type=int, default=5, help="untimed seconds before each")
    parser.add_argument("--runs", type=int, default=1, help="measured runs; the median is shown")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--skip-mlflow", action="store_true", help="measure the workbench only")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("this benchmark needs 2 CPU cores (server on core 0, load on core 1)")
    if not shutil.which("taskset"):
        sys.exit("this benchmark needs taskset (util-linux)")
    load = wrk if shutil.which("wrk") else httpx_load
    os.sched_setaffinity(0, {LOAD_CORE})  # this process (and the control-plane double)
    workdir = Path(tempfile.mkdtemp(prefix="workbench-bench-models-"))
    control = ReplicaControlPlane().start()
    control.add_key(KEY)
    try:
        row, call_us = train(workdir, args.model)
        results = {}
        version = "not run"
        if not args.skip_mlflow:
            version, results["MLflow /invocations (peer)"] = run_mlflow(args, workdir, row, load)
        results.update(run_ours(args, workdir, row, load, control))
    finally:
        control.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs in {workdir}")
    client = "wrk -t1" if load is wrk else "asyncio httpx (no wrk: client-bound)"
    print(
        f"\n{MODELS[args.model]}, one row per request (the function alone: {call_us:.0f} us);"
        f" {args.connections} connections, {args.warmup} s warm-up, then {args.seconds} s"
        f" (median of {args.runs} runs);"
        f" server on core {SERVER_CORE}, load ({client}) on core {LOAD_CORE}; MLflow {version}\n"
    )
    peer = results.get("MLflow /invocations (peer)")
    print(
        f"| {'server':42} | req/s | p50 ms | p99 ms | RSS MiB | req/s vs MLflow | p99 vs MLflow |"
    )
    print(f"|{'-' * 44}|-------|--------|--------|---------|-----------------|---------------|")
    for name, r in results.items():
        ratio = f"{r['rps'] / peer['rps']:.2f}x" if peer else "-"
        p99 = f"{r['p99'] / peer['p99']:.2f}x" if peer else "-"
        print(
            f"| {name:42} | {r['rps']:5.0f} | {r['p50']:6.2f} | {r['p99']:6.2f} |"
            f" {r['rss']:7.0f} | {ratio:>15} | {p99:>13} |"
        )
    failed = {name: r["non2xx"] for name, r in results.items() if r["non2xx"]}
    if failed:
        print(f"\nnon-2xx answers: {failed}")
    print("\ntarget: >= 3x MLflow's requests/s and a lower p99")


if __name__ == "__main__":
    main()
