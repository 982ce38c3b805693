"""LocalProcessRuntime against real processes: output, exit codes, limits, stop, restart."""

import asyncio
import json
import os
import signal
from dataclasses import replace
from datetime import UTC
from pathlib import Path

import httpx
import pytest

from workbench_hub.runtime import procfs
from workbench_hub.runtime.base import (
    PROJECT_LABEL,
    Resources,
    VolumeMount,
    WorkloadNotFound,
)
from workbench_hub.runtime.local import LocalProcessRuntime

SLEEPER = "import os, time; print(os.getpid(), flush=True); time.sleep(300)"


def gone(pid: int) -> bool:
    """No process ``pid`` runs any more (a zombie counts as gone)."""
    stat = procfs.read_stat(pid)
    return stat is None or stat.state in ("Z", "X")


def supervisor_pid(rt: LocalProcessRuntime, name: str) -> int:
    return json.loads(Path(rt.state_dir, name, "state.json").read_text())["pid"]


async def first_lines(rt, name: str, count: int) -> list[str]:
    """Follow the log until ``count`` lines have appeared."""
    lines: list[str] = []
    async with asyncio.timeout(10):
        async for line in rt.logs(name, follow=True):
            lines.append(line)
            if len(lines) == count:
                break
    return lines


async def test_output_and_success(runtime, spec):
    code = "import sys;"
    code += " print('hello', flush=True); sys.stderr.write('oops\\n'); print('tail', end='')"
    status = await runtime.start(spec("hello", code))
    assert status.phase in ("running", "succeeded")
    status = await runtime.wait("hello")
    assert status.phase == "succeeded"
    assert status.exit_code == 0
    assert status.started.tzinfo is UTC
    assert status.created <= status.started <= status.finished
    assert [line async for line in runtime.logs("hello")] == ["hello", "oops", "tail"]


async def test_nonzero_exit_fails(runtime, spec):
    await runtime.start(spec("boom", "raise SystemExit(3)"))
    status = await runtime.wait("boom")
    assert (status.phase, status.exit_code) == ("failed", 3)
    assert "3" in status.message


async def test_missing_command_fails(runtime, spec):
    await runtime.start(replace(spec("nocmd", "pass"), command=["/nonexistent/tool", "--flag"]))
    status = await runtime.wait("nocmd")
    assert (status.phase, status.exit_code) == ("failed", 127)
    assert "could not start" in status.message
    assert "/nonexistent/tool" in status.message


async def test_env_and_cwd(runtime, spec, tmp_path, monkeypatch):
    monkeypatch.setenv("WB_CONTROL_PLANE_SECRET", "cp-secret")
    workdir = tmp_path / "work"
    workdir.mkdir()
    code = (
        "import os; e = os.environ; print(os.getcwd()); print(e['FOO']);"
        "print('WB_CONTROL_PLANE_SECRET' in e, 'API_TOKEN' in e, bool(e.get('PATH')));"
        "print(repr(e['CUDA_VISIBLE_DEVICES']))"
    )
    env = {"FOO": "bar baz", "API_TOKEN": "tok-123456"}
    await runtime.start(spec("envy", code, working_dir=str(workdir), env=env))
    assert (await runtime.wait("envy")).phase == "succeeded"
    lines = [line async for line in runtime.logs("envy")]
    assert lines == [str(workdir), "bar baz", "False True True", "''"]
    for path in Path(runtime.state_dir).rglob("*"):  # env values never reach the disk
        if path.is_file() and path.name != "output.log":
            assert "tok-123456" not in path.read_text()


async def test_volume_target_maps_to_host_source(runtime, spec, tmp_path):
    source = tmp_path / "project-files"
    (source / "sub").mkdir(parents=True)
    volume = VolumeMount(source=str(source), target="/home/workbench/project")
    status = await runtime.start(
        spec(
            "vol",
            "import os; print(os.getcwd())",
            working_dir="/home/workbench/project/sub",
            volumes=[volume],
        )
    )
    assert (await runtime.wait(status.name)).phase == "succeeded"
    assert [line async for line in runtime.logs("vol")] == [str(source / "sub")]


async def test_follow_streams_lines_as_they_come(runtime, spec):
    code = "import time\nfor i in range(3):\n    print(f'line {i}', flush=True); time.sleep(0.4)"
    await runtime.start(spec("stream", code))
    lines = []
    async with asyncio.timeout(10):
        async for line in runtime.logs("stream", follow=True):
            if not lines:  # the first line arrives while the workload still runs
                assert (await runtime.status("stream")).phase == "running"
            lines.append(line)
    assert lines == ["line 0", "line 1", "line 2"]
    assert (await runtime.status("stream")).phase == "succeeded"


async def test_memory_limit_fails_big_allocation(runtime, spec):
    code = "b = bytearray(1024 ** 3); print('allocated')"
    await runtime.start(spec("big", code, resources=Resources(memory=256 * 1024**2)))
    status = await runtime.wait("big")
    assert status.phase == "failed"
    assert "MemoryError" in "\n".join([line async for line in runtime.logs("big")])
    await runtime.start(spec("big-unlimited", code))  # the same allocation without limit works
    assert (await runtime.wait("big-unlimited")).phase == "succeeded"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
async def test_cpu_limit_pins_cores(runtime, spec):
    code = "import os; print(len(os.sched_getaffinity(0)))"
    await runtime.start(spec("onecpu", code, resources=Resources(cpu=0.5)))
    await runtime.wait("onecpu")
    assert [line async for line in runtime.logs("onecpu")] == ["1"]


async def test_ports_endpoint_reaches_the_workload(runtime, spec, tmp_path):
    (tmp_path / "hello.txt").write_text("served")
    code = (
        "import os, http.server as h\n"
        "port = int(os.environ['WORKBENCH_PORT_HTTP'])\n"
        "h.HTTPServer(('127.0.0.1', port), h.SimpleHTTPRequestHandler).serve_forever()"
    )
    status = await runtime.start(spec("server", code, kind="model-replica", ports={"http": 8080}))
    url = f"http://{status.endpoints['http']}/hello.txt"
    async with httpx.AsyncClient() as client, asyncio.timeout(10):
        while True:
            try:
                response = await client.get(url)
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
    assert response.text == "served"


async def test_stop_sigterm_is_forwarded(runtime, spec):
    code = (
        "import signal, sys, time\n"
        "def bye(*a):\n    print('bye', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye); print('ready', flush=True); time.sleep(300)"
    )
    await runtime.start(spec("polite", code))
    await first_lines(runtime, "polite", 1)
    async with asyncio.timeout(5):  # well before the 30 s grace
        status = await runtime.stop("polite", grace=30)
    assert status.phase == "stopped"
    assert status.exit_code == 0
    assert [line async for line in runtime.logs("polite")] == ["ready", "bye"]


async def test_stop_kills_the_whole_tree(runtime, spec):
    code = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # forces the SIGKILL path
        "a = subprocess.Popen(['sleep', '300'])\n"
        "b = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "c = subprocess.Popen([sys.executable, '-c', "
        "\"import subprocess; print(subprocess.Popen(['sleep', '300']).pid)\"], "
        "stdout=subprocess.PIPE, text=True)\n"
        "orphan = c.stdout.readline().strip(); c.wait()\n"
        "print(os.getpid(), a.pid, b.pid, orphan, flush=True); time.sleep(300)"
    )
    await runtime.start(spec("tree", code))
    pids = [int(pid) for pid in (await first_lines(runtime, "tree", 1))[0].split()]
    pids.append(supervisor_pid(runtime, "tree"))
    assert not any(gone(pid) for pid in pids)
    status = await runtime.stop("tree", grace=0.3)
    assert status.phase == "stopped"
    assert status.exit_code == 128 + signal.SIGKILL
    await asyncio.sleep(0.2)
    assert all(gone(pid) for pid in pids)
    assert await runtime.stop("tree") == status  # idempotent


async def test_restart_finds_running_and_finished_workloads(runtime, spec):
    await runtime.start(spec("done", "raise SystemExit(4)"))
    await runtime.start(spec("sleeper", SLEEPER, labels={"team": "a"}))
    child = int((await first_lines(runtime, "sleeper", 1))[0])
    await runtime.wait("done")
    state_dir = runtime.state_dir
    del runtime

    fresh = LocalProcessRuntime(state_dir=state_dir, poll_interval=0.05)
    assert (await fresh.status("sleeper")).phase == "running"
    done = await fresh.status("done")
    assert (done.phase, done.exit_code) == ("failed", 4)
    found = await fresh.list({"team": "a"})
    assert [status.name for status in found] == ["sleeper"]
    assert (await fresh.stop("sleeper", grace=2)).phase == "stopped"
    assert gone(child)


async def test_killed_supervisor_means_lost(runtime, spec):
    await runtime.start(spec("orphaned", SLEEPER))
    child = int((await first_lines(runtime, "orphaned", 1))[0])
    os.kill(supervisor_pid(runtime, "orphaned"), signal.SIGKILL)
    async with asyncio.timeout(5):
        status = await runtime.wait("orphaned")
    assert status.phase == "lost"
    assert "supervisor" in status.message
    assert status.exit_code is None
    await asyncio.sleep(0.1)
    assert gone(child)  # the command dies with its supervisor


async def test_start_is_idempotent(runtime, spec):
    first = spec("once", "import time; print('started', flush=True); time.sleep(300)")
    other = spec("once", "print('second spec')")
    statuses = await asyncio.gather(runtime.start(first), runtime.start(first))
    again = await runtime.start(other)
    await first_lines(runtime, "once", 1)
    assert {status.created for status in [*statuses, again]} == {again.created}
    assert again.phase == "running"
    assert [line async for line in runtime.logs("once")] == ["started"]
    assert len(await runtime.list()) == 1


async def test_list_by_label_selector(runtime, spec):
    await runtime.start(spec("a1", "pass", labels={"job": "etl"}))
    await runtime.start(spec("a2", "pass", labels={"job": "etl"}, project="other"))
    await runtime.start(spec("b1", "pass", kind="model-replica", labels={"job": "train"}))

    async def names(selector):
        return [status.name for status in await runtime.list(selector)]

    assert await names({}) == ["a1", "a2", "b1"]
    assert await names({"job": "etl"}) == ["a1", "a2"]
    assert await names({"job": "etl", PROJECT_LABEL: "demo"}) == ["a1"]
    assert await names({"workbench.jupyter.org/kind": "model-replica"}) == ["b1"]
    assert await names({"job": "none"}) == []


async def test_remove_forgets_and_stops(runtime, spec):
    await runtime.start(spec("finished", "print('x')"))
    await runtime.wait("finished")
    await runtime.start(spec("active", SLEEPER))
    child = int((await first_lines(runtime, "active", 1))[0])
    runtime.stop_grace = 1
    await runtime.remove("finished")
    await runtime.remove("active")
    await runtime.remove("active")  # idempotent
    assert await runtime.list() == []
    assert os.listdir(runtime.state_dir) == []
    assert gone(child)
    with pytest.raises(WorkloadNotFound):
        await anext(runtime.logs("finished"))
    with pytest.raises(WorkloadNotFound):
        await runtime.stop("finished")


async def test_unrunnable_spec_raises_and_writes_nothing(runtime, spec, tmp_path):
    with pytest.raises(ValueError, match="working_dir"):
        await runtime.start(spec("nowhere", "pass", working_dir=str(tmp_path / "missing")))
    volume = VolumeMount(source=str(tmp_path / "missing"), target="/data")
    with pytest.raises(ValueError, match="volume source"):
        await runtime.start(spec("novol", "pass", volumes=[volume]))
    assert await runtime.list() == []
    with pytest.raises(ValueError, match="invalid"):
        await runtime.status("../etc")
