"""Job latency: trigger-to-start and parent-end-to-child-start, against the 1 s target.

Runs the real job engine (its loop started, real clock, a poll interval of 5 s so only its
wake-ups count) with a real database and the local process runtime:

* trigger-to-start: N manual runs of a script that prints ``time.time()`` as its first
  statement; latency = that time minus the time just before ``JobEngine.trigger()`` returned
  control to the caller's request (the process is really running, interpreter start included).
  Also reported: trigger to the run's ``started_at`` (state ``running``).
* parent-end-to-child-start: M pipelines A→B; A prints ``time.time()`` as its last statement,
  B as its first; latency = B's time minus A's.

Peer: Apache Airflow, measured the same way by ``benchmarks/airflow_peer.py`` (it runs a real
Airflow in its own virtualenv; ``--engine`` there runs this benchmark beside it). This table
compares with the issue's target of 1 s p50. As root, runs are isolated as `workbench up`
isolates them (their user's unix account, in a sandbox: docs/isolation.md) unless
``--no-isolation``. Run from the repository root:

    python benchmarks/jobs.py --runs 50 --pipelines 20 [--db-url postgresql://...]
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hub"))

from sqlalchemy import select
from traitlets.config import Config

from workbench_hub.db import Database, upgrade
from workbench_hub.jobs.engine import JobEngine
from workbench_hub.orm import Job, JobRun, Project
from workbench_hub.runtime.local import LocalProcessRuntime

TARGET = 1.0
JOB = {
    "arguments": [],
    "parameters": {},
    "env": {},
    "profile": "small",
    "active": True,
    "retry_max": 0,
    "retry_delay_seconds": 0,
    "retry_on": [],
    "concurrency": "allow",
    "notify": {},
    "created_by": "bench",
}


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def wait_ended(db, run_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with db.session() as s:
            run = await s.get(JobRun, run_id)
        if run.state not in ("queued", "running"):
            return run
        await asyncio.sleep(0.02)
    raise TimeoutError(f"run {run_id} did not end")


async def wait_runs(db, job_id, count, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with db.session() as s:
            runs = (
                await s.scalars(select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.id))
            ).all()
        if len(runs) >= count and runs[count - 1].state not in ("queued", "running"):
            return runs[count - 1]
        await asyncio.sleep(0.02)
    raise TimeoutError("child run did not end")


async def stamp(engine, run, which="first") -> float:
    lines = [line async for line in engine.logs(run)]
    return float(lines[0] if which == "first" else lines[-1])


async def main(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="workbench-bench-jobs-"))
    url = args.db_url or f"sqlite:///{tmp / 'workbench.sqlite'}"
    await upgrade(url)
    db = Database(url)
    projects = tmp / "projects"
    (projects / "bench").mkdir(parents=True)
    (projects / "bench" / "now.py").write_text("import time\nprint(time.time(), flush=True)\n")
    (projects / "bench" / "end.py").write_text("import time\nprint(time.time(), flush=True)\n")
    config = Config()
    if args.isolation:
        config.Isolation.enabled = True
        config.Isolation.hidden_paths = [str(tmp)]
        config.Isolation.project_root = str(projects)
        config.UnixAccounts.home_dir_template = str(tmp / "homes" / "{username}")
    engine = JobEngine(
        db=db,
        runtime=LocalProcessRuntime(state_dir=str(tmp / "runtime"), config=config),
        project_root=str(projects),
        snapshot_dir=str(tmp / "snapshots"),
        poll_interval=5.0,
    )
    async with db.session() as s:
        project = Project(name="bench", owner_kind="user", owner_name="bench")
        s.add(project)
        await s.flush()
        trivial = Job(project_id=project.id, name="trivial", target="now.py", **JOB)
        s.add(trivial)
        await s.flush()
        pairs = []
        for i in range(args.pipelines):
            parent = Job(project_id=project.id, name=f"a{i}", target="end.py", **JOB)
            s.add(parent)
            await s.flush()
            child = Job(
                project_id=project.id,
                name=f"b{i}",
                target="now.py",
                schedule="dependent",
                parent_id=parent.id,
                **JOB,
            )
            s.add(child)
            await s.flush()
            pairs.append((parent.id, child.id))
        await s.commit()
        trivial_id = trivial.id

    await engine.start()
    try:
        to_process, to_running = [], []
        for _ in range(args.runs):
            before = time.time()
            run = await engine.trigger(trivial_id, user="bench")
            run = await wait_ended(db, run.id)
            to_process.append(await stamp(engine, run) - before)
            to_running.append(run.started_at.timestamp() - before)
        chain = []
        for parent_id, child_id in pairs:
            run = await engine.trigger(parent_id, user="bench")
            parent_run = await wait_ended(db, run.id)
            child_run = await wait_runs(db, child_id, 1)
            chain.append(await stamp(engine, child_run) - await stamp(engine, parent_run, "last"))
    finally:
        await engine.stop()
        await db.dispose()

    rows = [
        (f"trigger → process running ({args.runs} runs)", to_process),
        (f"trigger → state running ({args.runs} runs)", to_running),
        (f"parent end → child process running ({args.pipelines} pipelines)", chain),
    ]
    backend = url.split(":", 1)[0]
    walls = "isolated" if args.isolation else "not isolated"
    print(
        f"\nJob latency, {backend}, local process runtime, {walls} "
        f"(seconds; target p50 ≤ {TARGET} s)\n"
    )
    print(f"| {'measure':<58} | {'p50':>6} | {'p95':>6} | {'max':>6} | p50 / target |")
    print(f"|{'-' * 60}|{'-' * 8}|{'-' * 8}|{'-' * 8}|--------------|")
    for name, values in rows:
        p50, p95 = statistics.median(values), percentile(values, 95)
        print(
            f"| {name:<58} | {p50:6.3f} | {p95:6.3f} | {max(values):6.3f} | {p50 / TARGET:11.2f}x |"
        )
    print("\nPeer: Apache Airflow, side by side: python benchmarks/airflow_peer.py --engine")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--pipelines", type=int, default=20)
    parser.add_argument("--db-url", default="", help="default: a temporary SQLite file")
    parser.add_argument(
        "--isolation",
        action=argparse.BooleanOptionalAction,
        default=os.geteuid() == 0,
        help="run each job as its user's unix account in a sandbox (default: as root)",
    )
    asyncio.run(main(parser.parse_args()))
