"""Peer for jobs.py: Apache Airflow's trigger-to-start and parent-end-to-child-start, measured.

Runs Airflow (installed in its own virtualenv outside the repository, e.g.
``python3 -m venv /tmp/airflow-venv && /tmp/airflow-venv/bin/pip install apache-airflow``)
locally on this machine: a temporary ``AIRFLOW_HOME``, a SQLite metadata database, the default
executor (``LocalExecutor`` in Airflow 3), and the three long-running Airflow 3 processes
(``api-server``, ``scheduler``, ``dag-processor``), all started and stopped by this script.
The same two quantities as jobs.py, with the same tiny script (its first statement takes
``time.time()``; it is run by a ``BashOperator``, interpreter start included):

* trigger-to-start: N runs of a single-task DAG; latency = the script's time minus the time
  just before the REST call ``POST /api/v2/dags/{dag_id}/dagRuns`` (the API's equivalent of
  ``JobEngine.trigger()``; the ``airflow dags trigger`` CLI would add ~3 s of its own start-up).
* parent-end-to-child-start: M runs of a two-task DAG ``a >> b``; latency = b's time minus a's
  (a's script takes its time as its last statement, b's as its first).

Runs are sequential (each waits for its DAG run to end, as jobs.py does). One untimed warm-up
run of each DAG comes first (Airflow's first task run is several seconds slower, cold imports).

Airflow settings are its defaults (``scheduler_heartbeat_sec`` 5, ``scheduler_idle_sleep_time``
1, ``job_heartbeat_sec`` 5, ``parallelism`` 32, ``dags_are_paused_at_creation`` True: the DAGs
are unpaused through the API) except: ``load_examples`` False, the SQLite path, the API server
on 127.0.0.1 at a free port (and ``execution_api_server_url`` pointing at it),
``simple_auth_manager_all_admins`` True (token without a password), and the scheduler started
with ``--skip-serve-logs`` (its log server would listen on 0.0.0.0:8793; logs stay on disk).
None of these is on the scheduling path. Run from the repository root:

    python benchmarks/airflow_peer.py --airflow-venv /tmp/airflow-venv --runs 10 --pipelines 10

With ``--engine`` it then runs jobs.py with the same counts for the side-by-side table.
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

STAMP = """import sys, time
t = time.time()
with open(sys.argv[1], "a") as f:
    f.write(f"{sys.argv[2]} {sys.argv[3]} {t!r}\\n")
"""

DAG = """import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

CMD = "{python} {stamp} {results} {{label}} {{{{{{{{ run_id }}}}}}}}"
START = pendulum.datetime(2024, 1, 1)
with DAG("bench_single", schedule=None, start_date=START, catchup=False):
    BashOperator(task_id="t", bash_command=CMD.format(label="single"))
with DAG("bench_chain", schedule=None, start_date=START, catchup=False):
    a = BashOperator(task_id="a", bash_command=CMD.format(label="a_end"))
    b = BashOperator(task_id="b", bash_command=CMD.format(label="b_start"))
    a >> b
"""


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Airflow:
    def __init__(self, venv: Path, home: Path, port: int):
        self.bin = venv / "bin"
        self.home = home
        self.base = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        }
        self.env.pop("VIRTUAL_ENV", None)
        self.procs: list[subprocess.Popen] = []
        self.token = ""

    def run(self, *args: str) -> str:
        out = subprocess.run(
            [str(self.bin / "airflow"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return out.stdout.strip()

    def start(self, *args: str) -> None:
        log = open(self.home / f"{args[0]}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs.append(
            subprocess.Popen(
                [str(self.bin / "airflow"), *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):  # the group: its task runners too
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def api(self, method: str, path: str, body=None):
        request = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1:port
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            return json.loads(response.read() or b"null")

    def wait_ready(self, dag_ids, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[1]} exited {proc.returncode}; see {self.home}")
            try:
                if not self.token:
                    self.token = self.api("GET", "/auth/token")["access_token"]
                health = self.api("GET", "/api/v2/monitor/health")
                ok = all(
                    (health.get(k) or {}).get("status") == "healthy"
                    for k in ("metadatabase", "scheduler", "dag_processor")
                )
                if ok and all(self.api("GET", f"/api/v2/dags/{d}") for d in dag_ids):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Airflow not ready after {timeout} s; logs in {self.home}")

    def trigger(self, dag_id: str) -> tuple[float, str]:
        before = time.time()
        run = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})
        return before, run["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> None:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.api("GET", path)["state"]
            if state == "success":
                return
            if state == "failed":
                raise RuntimeError(f"{dag_id} {run_id} failed; logs in {self.home / 'logs'}")
            time.sleep(0.05)
        raise TimeoutError(f"{dag_id} {run_id} did not end in {timeout} s")


def stamps(results: Path, run_id: str) -> dict[str, float]:
    found = {}
    for line in results.read_text().splitlines():
        label, rid, value = line.split(" ")
        if rid == run_id:
            found[label] = float(value)
    return found


def measure(args) -> tuple[str, list[tuple[str, list[float]]], dict]:
    venv = Path(args.airflow_venv).resolve()
    home = Path(tempfile.mkdtemp(prefix="workbench-bench-airflow-"))
    (home / "dags").mkdir()
    results = home / "results.txt"
    results.touch()
    (home / "stamp.py").write_text(STAMP)
    (home / "dags" / "bench.py").write_text(
        DAG.format(python=sys.executable, stamp=home / "stamp.py", results=results)
    )
    airflow = Airflow(venv, home, args.port or free_port())
    version = airflow.run("version")
    airflow.run("db", "migrate")
    dags = ("bench_single", "bench_chain")
    extra = {}
    try:
        airflow.start("api-server")
        airflow.start("scheduler", "--skip-serve-logs")
        airflow.start("dag-processor")
        airflow.wait_ready(dags, args.timeout)
        for dag_id in dags:
            airflow.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        for dag_id in dags:  # untimed warm-up
            before, run_id = airflow.trigger(dag_id)
            airflow.wait_run(dag_id, run_id, args.timeout)
            got = stamps(results, run_id)
            extra[dag_id] = got.get("single", got.get("b_start", 0.0)) - before
        to_process = []
        for _ in range(args.runs):
            before, run_id = airflow.trigger("bench_single")
            airflow.wait_run("bench_single", run_id, args.timeout)
            to_process.append(stamps(results, run_id)["single"] - before)
        chain = []
        for _ in range(args.pipelines):
            _, run_id = airflow.trigger("bench_chain")
            airflow.wait_run("bench_chain", run_id, args.timeout)
            got = stamps(results, run_id)
            chain.append(got["b_start"] - got["a_end"])
    finally:
        airflow.stop()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    rows = [
        (f"trigger → task process running ({args.runs} runs)", to_process),
        (f"parent end → child process running ({args.pipelines} pipelines)", chain),
    ]
    return version, rows, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--airflow-venv", required=True, help="virtualenv with apache-airflow")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pipelines", type=int, default=10)
    parser.add_argument("--port", type=int, default=0, help="API server port (default: free)")
    parser.add_argument("--timeout", type=float, default=120, help="per wait, seconds")
    parser.add_argument("--keep", action="store_true", help="keep AIRFLOW_HOME (logs)")
    parser.add_argument("--engine", action="store_true", help="also run jobs.py, same counts")
    args = parser.parse_args()
    version, rows, warm = measure(args)
    print(f"\nApache Airflow {version}, LocalExecutor, SQLite, BashOperator (seconds)\n")
    print(f"| {'measure':<58} | {'p50':>6} | {'p95':>6} | {'max':>6} |")
    print(f"|{'-' * 60}|{'-' * 8}|{'-' * 8}|{'-' * 8}|")
    for name, values in rows:
        p50, p95 = statistics.median(values), percentile(values, 95)
        print(f"| {name:<58} | {p50:6.3f} | {p95:6.3f} | {max(values):6.3f} |")
    print(
        f"\nUntimed warm-up: trigger → task running {warm['bench_single']:.3f} s (single),"
        f" trigger → b running {warm['bench_chain']:.3f} s (chain)."
    )
    if args.engine:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import jobs

        ns = argparse.Namespace(runs=args.runs, pipelines=args.pipelines, db_url="")
        asyncio.run(jobs.main(ns))
    else:
        print("Compare with: python benchmarks/jobs.py --runs N --pipelines M (or pass --engine).")


if __name__ == "__main__":
    main()
