"""The job engine with real processes: pipelines, timeouts, retries, quotas, concurrency,
stop, rerun, logs and email. Each test runs on SQLite and on PostgreSQL."""

import asyncio
import email
import email.policy
import json
import socket
from datetime import timedelta
from pathlib import Path

import nbformat
import pytest
from aiosmtpd.controller import Controller

from tests.jobs.conftest import gone
from workbench_hub import audit
from workbench_hub.jobs.engine import RunConflict
from workbench_hub.jobs.notify import EmailNotifier

# a script that starts a child, records both pids, then sleeps; the child sleeps too
TREE = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open("pids.txt", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
print("started", flush=True)
time.sleep(600)
"""


async def wait_for(check, timeout=15):
    async with asyncio.timeout(timeout):
        while not (value := await check()):
            await asyncio.sleep(0.05)
        return value


async def read_pids(path: Path) -> list[int]:
    async def check():
        return path.exists() and path.read_text().strip()

    return [int(pid) for pid in (await wait_for(check)).split()]


def output_log(run) -> str:
    return Path(run.output_dir, "output.log").read_text()


async def test_pipeline_runs_in_order_and_stops_at_a_failure(env):
    project = await env.project(
        files={
            "a.py": "print('a')\n",
            "b.py": "import sys\nprint('b')\nsys.exit(int(open('b-exit').read()))\n",
            "b-exit": "0",
            "c.py": "print('c')\n",
        }
    )
    a = await env.job(project, "a", "a.py")
    b = await env.job(project, "b", "b.py", schedule="dependent", parent_id=a)
    c = await env.job(project, "c", "c.py", schedule="dependent", parent_id=b)
    run_a = await env.engine.trigger(a, user="alice")

    async def c_ended():
        runs = await env.runs(c)
        return runs and runs[0].state not in ("queued", "running")

    await env.settle(c_ended)
    [ra], [rb], [rc] = await env.runs(a), await env.runs(b), await env.runs(c)
    assert [r.state for r in (ra, rb, rc)] == ["succeeded"] * 3
    assert (ra.trigger, rb.trigger, rc.trigger) == ("user", "parent", "parent")
    assert (rb.parent_run_id, rc.parent_run_id) == (run_a.id, rb.id)
    assert ra.finished_at <= rb.started_at and rb.finished_at <= rc.started_at
    assert [output_log(r) for r in (ra, rb, rc)] == ["a\n", "b\n", "c\n"]

    env.write("demo", "b-exit", "3")
    second = await env.engine.trigger(a, user="alice")
    await env.ended(second.id)

    async def b_ended():
        runs = await env.runs(b)
        return len(runs) == 2 and runs[1].state not in ("queued", "running")

    await env.settle(b_ended)
    for _ in range(5):  # give the engine every chance to (wrongly) start C
        await env.engine.tick()
    assert (await env.runs(b))[1].state == "failed"
    assert (await env.runs(b))[1].exit_code == 3
    assert len(await env.runs(c)) == 1


async def test_timeout_kills_the_whole_tree(env):
    project = await env.project(files={"forever.py": TREE})
    job = await env.job(project, "forever", "forever.py", timeout_seconds=30, retry_on=[])
    env.clock.set(env.clock())
    run = await env.engine.trigger(job, user="alice")
    await env.engine.tick()
    pids = await read_pids(env.project_root / "demo" / "pids.txt")
    assert not any(gone(pid) for pid in pids)
    env.clock.advance(29)
    await env.engine.tick()
    assert (await env.run(run.id)).state == "running"
    env.clock.advance(1)
    run = await env.ended(run.id)
    assert run.state == "timed_out"
    assert run.message == "timed out after 30 s"
    assert run.exit_code is not None
    assert all(gone(pid) for pid in pids)
    assert "started" in output_log(run)


async def test_retry_runs_after_its_delay(env):
    project = await env.project(files={"fail.py": "import sys\nprint('oops')\nsys.exit(2)\n"})
    job = await env.job(project, "flaky", "fail.py", retry_max=1, retry_delay_seconds=600)
    env.clock.set(env.clock())
    first = await env.engine.trigger(job, user="alice")
    first = await env.ended(first.id)
    assert first.state == "failed" and first.exit_code == 2
    assert "oops" in first.message
    runs = await env.runs(job)
    assert len(runs) == 2
    retry = runs[1]
    assert (retry.trigger, retry.attempt, retry.parent_run_id) == ("retry", 2, first.id)
    assert retry.not_before == first.finished_at + timedelta(seconds=600)
    env.clock.advance(599)
    for _ in range(3):
        await env.engine.tick()
    assert (await env.run(retry.id)).state == "queued"
    env.clock.advance(1)
    retry = await env.ended(retry.id)
    assert retry.state == "failed"
    assert retry.started_at == first.finished_at + timedelta(seconds=600)
    assert len(await env.runs(job)) == 2  # retry_max = 1: no third attempt


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


async def test_failure_email_arrives_with_the_log(make_env, smtp_server):
    port, inbox = smtp_server
    env = make_env()
    env.engine.notifier = EmailNotifier(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        from_address="workbench@example.org",
        max_attachment_bytes=64,
    )
    env.engine.api_url = "https://wb.example.org/services/workbench/api/v1"
    project = await env.project(
        files={"fail.py": "import sys\nprint('x' * 200)\nprint('boom-marker')\nsys.exit(1)\n"}
    )
    job = await env.job(
        project,
        "nightly",
        "fail.py",
        notify={"recipients": ["ops@example.org"], "on": ["failed"], "attach_log": True},
    )
    run = await env.ended((await env.engine.trigger(job, user="alice")).id)
    assert run.state == "failed"
    await wait_for(lambda: asyncio.sleep(0, inbox.messages))
    [envelope] = inbox.messages
    assert envelope.rcpt_tos == ["ops@example.org"]
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert message["Subject"] == "[workbench] demo/nightly run 1 failed"
    body = message.get_body(("plain",)).get_content()
    assert "Job nightly in project demo: run 1 failed." in body
    assert "exited with code 1: boom-marker" in body
    assert "https://wb.example.org/services/workbench/api/v1/projects/demo/jobs/nightly/runs/1" in (
        body
    )
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "output.log"
    content = attachment.get_content()
    content = content.decode() if isinstance(content, bytes) else content
    assert len(content) == 64 and content.endswith("boom-marker\n")  # the tail, cut to the cap


async def test_email_failure_does_not_break_the_engine(make_env):
    env = make_env()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    env.engine.notifier = EmailNotifier(
        smtp_host="127.0.0.1", smtp_port=closed_port, smtp_security="none"
    )
    project = await env.project(files={"ok.py": "print('ok')\n"})
    job = await env.job(
        project, "j", "ok.py", notify={"recipients": ["a@example.org"], "on": ["succeeded"]}
    )
    run = await env.ended((await env.engine.trigger(job, user="alice")).id)
    assert run.state == "succeeded"
    run2 = await env.ended((await env.engine.trigger(job, user="alice")).id)
    assert run2.state == "succeeded"


def notebook(*cells) -> str:
    nb = nbformat.v4.new_notebook()
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Py", "language": "python"}
    return nbformat.writes(nb)


async def test_notebook_with_parameters_and_a_failing_cell(env):
    project = await env.project(
        files={
            "report.ipynb": notebook(
                ("greeting = 'hello'", ["parameters"]),
                ("print(f'value={greeting}')", []),
            ),
            "broken.ipynb": notebook(("x = 1", []), ("print('before'); 1 / 0", [])),
        }
    )
    good = await env.job(project, "report", "report.ipynb", parameters={"greeting": "bonjour-42"})
    bad = await env.job(project, "broken", "broken.ipynb", retry_on=[])
    good_run = await env.engine.trigger(good, user="alice")
    bad_run = await env.engine.trigger(bad, user="alice")
    good_run = await env.ended(good_run.id, timeout=60)
    bad_run = await env.ended(bad_run.id, timeout=60)

    assert good_run.state == "succeeded", output_log(good_run)
    out = Path(good_run.output_dir)
    assert out == env.project_root / "demo/.workbench/jobs/report/runs/1"
    executed = nbformat.read(out / "output.ipynb", as_version=4)
    outputs = [o.get("text", "") for c in executed.cells for o in c.get("outputs", [])]
    assert "value=bonjour-42\n" in outputs
    assert "bonjour-42" in (out / "output.html").read_text()

    assert bad_run.state == "failed"
    assert "ZeroDivisionError" in bad_run.message
    assert "ZeroDivisionError" in output_log(bad_run)
    assert (Path(bad_run.output_dir) / "output.ipynb").exists()


async def test_missing_target_fails_clearly_without_a_process(env):
    project = await env.project(files={"gone.py": "print('hi')\n"})
    job = await env.job(project, "j", "gone.py", retry_max=3)
    (env.project_root / "demo" / "gone.py").unlink()
    run = await env.ended((await env.engine.trigger(job, user="alice")).id)
    assert run.state == "failed"
    assert run.message == "target file gone.py no longer exists in the project"
    assert run.workload is None and run.started_at is None
    assert len(await env.runs(job)) == 1  # nothing to retry
    assert await env.runtime.list() == []


async def test_quota_keeps_a_run_waiting_with_its_reason(make_env):
    env = make_env(max_runs_per_user=1)
    project = await env.project(
        files={"wait.py": "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.1)\n"}
    )
    first_job = await env.job(project, "first", "wait.py")
    second_job = await env.job(project, "second", "wait.py")
    first = await env.engine.trigger(first_job, user="alice")
    second = await env.engine.trigger(second_job, user="alice")
    await env.engine.tick()
    assert (await env.run(first.id)).state == "running"
    waiting = await env.run(second.id)
    assert waiting.state == "queued"
    assert waiting.queue_reason == "waiting: user alice has 1 of 1 concurrent runs"
    assert waiting.message == waiting.queue_reason
    env.write("demo", "go", "")
    first = await env.ended(first.id)
    second = await env.ended(second.id)
    assert second.state == "succeeded" and second.queue_reason == ""
    assert second.started_at >= first.finished_at


async def test_concurrency_forbid_and_replace(env):
    project = await env.project(files={"tree.py": TREE})
    forbid = await env.job(project, "forbid", "tree.py")
    run = await env.engine.trigger(forbid, user="alice")
    with pytest.raises(RunConflict, match="forbid"):
        await env.engine.trigger(forbid, user="alice")
    await env.engine.stop_run(run.id, "alice")

    replace = await env.job(project, "replace", "tree.py", concurrency="replace")
    old = await env.engine.trigger(replace, user="alice")
    await env.engine.tick()
    pids = await read_pids(env.project_root / "demo" / "pids.txt")
    (env.project_root / "demo" / "pids.txt").unlink()
    new = await env.engine.trigger(replace, user="bob")
    old = await env.ended(old.id)
    assert (old.state, old.message) == ("stopped", "replaced by run 2")
    assert all(gone(pid) for pid in pids)

    async def new_running():
        return (await env.run(new.id)).state == "running"

    await env.settle(new_running)
    new_pids = await read_pids(env.project_root / "demo" / "pids.txt")
    stopped = await env.engine.stop_run(new.id, "bob")
    assert (stopped.state, stopped.message) == ("stopped", "stopped by bob")
    assert all(gone(pid) for pid in new_pids)  # stop_run returns once the tree is gone
    async with env.db.session() as s:
        events = await audit.query(s, object_id="demo/replace/2")
    assert [e.actor for e in events if e.action == "job.run.stopped"] == ["bob"]


async def test_rerun_runs_the_old_code(env):
    project = await env.project(files={"v.py": "print('version 1')\n", "lib/data.txt": "d"})
    job = await env.job(project, "v", "v.py")
    first = await env.ended((await env.engine.trigger(job, user="alice")).id)
    assert output_log(first) == "version 1\n"
    env.write("demo", "v.py", "print('version 2')\n")
    again = await env.ended((await env.engine.rerun(first.id, "bob")).id)
    assert (again.trigger, again.triggered_by, again.rerun_of_id) == ("rerun", "bob", first.id)
    assert again.code_hash == first.code_hash
    assert output_log(again) == "version 1\n"
    assert Path(again.output_dir) == env.project_root / "demo/.workbench/jobs/v/runs/2"
    latest = await env.ended((await env.engine.trigger(job, user="alice")).id)
    assert output_log(latest) == "version 2\n"
    assert latest.code_hash != first.code_hash
    shutil_snapshots = Path(env.engine.snapshot_dir)
    for path in (shutil_snapshots / "manifests").iterdir():
        path.unlink()
    with pytest.raises(RunConflict, match="snapshot"):
        await env.engine.rerun(first.id, "bob")


async def test_logs_follow_streams_while_the_run_goes(env):
    project = await env.project(
        files={
            "slow.py": (
                "import os, time\nprint('line 1', flush=True)\n"
                "while not os.path.exists('go'):\n    time.sleep(0.05)\nprint('line 2')\n"
            )
        }
    )
    job = await env.job(project, "slow", "slow.py", env={"GREETING": "hi"})
    run = await env.engine.trigger(job, user="alice")
    lines = env.engine.logs(run, follow=True)
    ticking = asyncio.create_task(env.settle(lambda: asyncio.sleep(0, False), timeout=90))
    try:
        assert await asyncio.wait_for(anext(lines), 10) == "line 1"
        assert (await env.run(run.id)).state == "running"
        env.write("demo", "go", "")
        assert await asyncio.wait_for(anext(lines), 10) == "line 2"
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(lines), 10)
    finally:
        ticking.cancel()
    run = await env.ended(run.id)
    assert [line async for line in env.engine.logs(run)] == ["line 1", "line 2"]


async def test_run_environment(env):
    project = await env.project(
        files={
            "env.py": "import json, os\nprint(json.dumps({k: v for k, v in os.environ.items()"
            " if k.startswith(('WORKBENCH_', 'GREETING'))}))\n"
        }
    )
    job = await env.job(project, "envjob", "env.py", env={"GREETING": "hi"}, arguments=[])
    run = await env.ended((await env.engine.trigger(job, user="alice")).id)
    seen = json.loads(output_log(run))
    assert seen == {
        "GREETING": "hi",
        "WORKBENCH_PROJECT": "demo",
        "WORKBENCH_JOB": "envjob",
        "WORKBENCH_RUN": "1",
        "WORKBENCH_OUTPUT_DIR": run.output_dir,
    }  # no hub in these tests: no WORKBENCH_TOKEN, and no API URL configured
