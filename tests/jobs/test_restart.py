"""SIGKILL the control plane (a real engine process) during runs, then start it again."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from workbench_hub.jobs.engine import RESTART_GONE
from workbench_hub.orm import Job, JobRun

ROOT = Path(__file__).resolve().parents[2]


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


class EngineProcess:
    """tests/jobs/engine_process.py on the test's database, runtime state and projects."""

    def __init__(self, env, clock_file: Path, log: Path) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "tests.jobs.engine_process",
            env.url,
            env.runtime.state_dir,
            str(env.project_root),
            env.engine.snapshot_dir,
            str(clock_file),
        ]
        self.log = log
        self.proc = None

    async def start(self) -> None:
        environ = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "hub"), str(ROOT)])}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=log
            )
        line = await asyncio.to_thread(self.proc.stdout.readline)
        assert line == b"ready\n", self.log.read_text()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


async def until(check, timeout=20):
    async with asyncio.timeout(timeout):
        while not (value := await check()):
            await asyncio.sleep(0.05)
        return value


async def test_sigkill_during_runs_then_restart(env, tmp_path):
    project = await env.project(
        files={
            "short.py": "import time\ntime.sleep(1)\nprint('short done')\n",
            "long.py": "import time\ntime.sleep(5)\nprint('long done')\n",
            "doomed.py": "import time\ntime.sleep(120)\n",
            "tick.py": "print('tick')\n",
        }
    )
    short = await env.job(project, "short", "short.py")
    long = await env.job(project, "long", "long.py")
    doomed = await env.job(project, "doomed", "doomed.py")
    minutely = await env.job(
        project, "minutely", "tick.py", schedule="cron", cron="* * * * *", timezone="UTC"
    )
    clock_file = tmp_path / "clock"
    clock_file.write_text(utc(2026, 1, 1, 12, 0, 30).isoformat())
    first = EngineProcess(env, clock_file, tmp_path / "engine.log")
    second = EngineProcess(env, clock_file, tmp_path / "engine.log")
    try:
        await first.start()

        async def next_tick_is(instant):
            return (await env.get_job(minutely)).next_tick == instant

        await until(lambda: next_tick_is(utc(2026, 1, 1, 12, 1)))
        clock_file.write_text(utc(2026, 1, 1, 12, 1, 10).isoformat())
        await until(lambda: next_tick_is(utc(2026, 1, 1, 12, 2)))
        [tick_run] = await env.runs(minutely)
        assert tick_run.scheduled_for == utc(2026, 1, 1, 12, 1)

        # the API's side of a trigger: a queued run in the database (this engine never ticks)
        runs = [await env.engine.trigger(job, user="alice") for job in (short, long, doomed)]

        async def all_running():
            current = [await env.run(run.id) for run in runs]
            if any(run.state != "running" for run in current):
                return None
            statuses = [await env.runtime.status(run.workload) for run in current]
            return current if all(s and s.phase == "running" for s in statuses) else None

        runs = await until(all_running)
        first.kill()

        # as if the control plane had died between running a tick and advancing next_tick
        async with env.db.session() as s:
            await s.execute(
                update(Job).where(Job.id == minutely).values(next_tick=utc(2026, 1, 1, 12, 1))
            )
            await s.commit()
        # while it is down: `doomed` loses its supervisor, `short` ends, `long` goes on
        doomed_dir = Path(env.runtime.state_dir, runs[2].workload)
        supervisor = json.loads((doomed_dir / "state.json").read_text())["pid"]
        os.kill(supervisor, signal.SIGKILL)

        async def phase(run, wanted):
            status = await env.runtime.status(run.workload)
            return status.phase == wanted and status

        await until(lambda: phase(runs[2], "lost"))
        short_status = await until(lambda: phase(runs[0], "succeeded"))
        assert await phase(runs[1], "running")

        await second.start()

        async def ended(run):
            current = await env.run(run.id)
            return current.state not in ("queued", "running") and current

        short_run, long_run, doomed_run = [await until(lambda r=r: ended(r)) for r in runs]
    finally:
        first.kill()
        second.kill()

    assert (short_run.state, short_run.exit_code) == ("succeeded", 0)
    assert short_run.finished_at == short_status.finished  # its real end, not the restart
    assert (long_run.state, long_run.exit_code) == ("succeeded", 0)  # adopted and watched
    assert (long_run.workload, long_run.started_at) == (runs[1].workload, runs[1].started_at)
    assert (doomed_run.state, doomed_run.message) == ("failed", RESTART_GONE)
    # no tick ran twice, no run was lost or duplicated
    assert [run.scheduled_for for run in await env.runs(minutely)] == [utc(2026, 1, 1, 12, 1)]
    assert (await env.get_job(minutely)).next_tick == utc(2026, 1, 1, 12, 2)
    for job in (short, long, doomed):
        assert len(await env.runs(job)) == 1
    assert "long done" in Path(long_run.output_dir, "output.log").read_text()
    assert long_run.finished_at - long_run.started_at >= timedelta(0)


async def test_run_marked_running_but_never_started_is_queued_again(make_env):
    """The control plane died between recording `running` and starting the process."""
    first = make_env()
    project = await first.project(files={"once.py": "print('ran once')\n"})
    job = await first.job(project, "once", "once.py")
    run = await first.engine.trigger(job, user="alice")
    async with first.db.session() as s:  # what the dead control plane had committed
        await s.execute(
            update(JobRun)
            .where(JobRun.id == run.id)
            .values(state="running", workload=f"run-{run.id}", started_at=first.clock())
        )
        await s.commit()
    await first.db.dispose()

    second = make_env()
    await second.engine.start()
    ended = await second.ended(run.id)
    assert ended.state == "succeeded", ended.message
    assert ended.exit_code == 0
    log = Path(ended.output_dir, "output.log").read_text()
    assert log == "ran once\n"
