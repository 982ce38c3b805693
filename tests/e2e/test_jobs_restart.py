"""End to end: SIGKILL the real control plane during a job run; the hub restarts it.

The run ends in its real state, the cron tick that fired before the kill has exactly one run,
and no run is lost.
"""

import signal

import httpx
import psutil
import pytest

from tests.harness import Workbench, wait_for

pytestmark = pytest.mark.e2e

SCRIPT = """\
import time
print("started", flush=True)
time.sleep(6)
print("finished", flush=True)
"""


def _dead(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigkill_during_a_run():
    wb = Workbench().start()
    try:
        token = wb.user_token("ivy")
        api = httpx.Client(
            base_url=wb.api_url, headers={"Authorization": f"token {token}"}, timeout=60
        )

        def get(path):
            try:
                return api.get(path)
            except httpx.HTTPError:
                return None

        project = api.post("/projects", json={"name": "etl"}).json()
        with open(f"{project['path']}/slow.py", "w") as f:
            f.write(SCRIPT)
        r = api.post("/projects/etl/jobs", json={"name": "slow", "target": "slow.py"})
        assert r.status_code == 201, r.text
        r = api.post(
            "/projects/etl/jobs",
            json={
                "name": "minutely",
                "target": "slow.py",
                "cron": "* * * * *",
                "schedule": "cron",
                "timezone": "UTC",
            },
        )
        assert r.status_code == 201, r.text

        run = api.post("/projects/etl/jobs/slow/runs").json()
        number = run["number"]
        wait_for(
            lambda: (
                (r := get(f"/projects/etl/jobs/slow/runs/{number}")) is not None
                and r.json()["state"] == "running"
            ),
            30,
            "the run to start",
        )

        killed = wb.control_plane()
        killed.send_signal(signal.SIGKILL)
        wait_for(lambda: _dead(killed), 10, "the control plane to die")
        # JupyterHub restarts a managed service that exits.
        wait_for(
            lambda: (r := get("/projects")) is not None and r.status_code == 200,
            90,
            "the hub to restart the control plane",
        )
        assert wb.control_plane().pid != killed.pid

        final = wait_for(
            lambda: (
                (r := get(f"/projects/etl/jobs/slow/runs/{number}")) is not None
                and r.json()["state"] not in ("queued", "running")
                and r.json()
            ),
            60,
            "the run to end",
        )
        assert final["state"] == "succeeded", final["message"]
        assert final["exit_code"] == 0
        logs = api.get(f"/projects/etl/jobs/slow/runs/{number}/logs").text
        assert "started" in logs and "finished" in logs

        runs = api.get("/projects/etl/jobs/slow/runs").json()["runs"]
        assert [r["number"] for r in runs] == [number], "no run lost, none added"
        ticks = [
            r["scheduled_for"] for r in api.get("/projects/etl/jobs/minutely/runs").json()["runs"]
        ]
        assert len(ticks) == len(set(ticks)), f"a tick ran twice: {ticks}"
    finally:
        wb.stop()
