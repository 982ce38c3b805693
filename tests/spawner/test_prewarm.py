"""The prewarm server: real forked sessions, and WorkbenchLocalSpawner starting through it."""

import asyncio
import json
import logging
import os
import re
import resource
import signal
import site
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.spawner.conftest import SERVICE_TOKEN, GiB
from workbench_spawner import prewarm
from workbench_spawner.prewarm import PrewarmError, PrewarmServer

#: Stands in for a session module run with ``python -m``: records what it sees into $SEEN, then
#: (when the hub gave it a port) listens on it, else exits with $EXIT_CODE.
PROBE = """
import json, os, random, resource, signal, sys, time
seen = {
    "name": __name__,
    "argv": sys.argv,
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "path0": sys.path[0],
    "path": sys.path,
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "sid": os.getsid(0),
    "pgid": os.getpgid(0),
    "rlimit_as": list(resource.getrlimit(resource.RLIMIT_AS)),
    "cpus": sorted(os.sched_getaffinity(0)),
    "random": random.random(),
    "sigint_default": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    "preloaded": "json" in sys.modules,
    "hub_modules": [m for m in sys.modules if m.startswith(("workbench_spawner", "jupyterhub"))],
}
path = os.environ["SEEN"]
with open(path + ".tmp", "w") as f:
    json.dump(seen, f)
os.rename(path + ".tmp", path)
if "JUPYTERHUB_SERVICE_URL" in os.environ:
    import socket, urllib.parse
    port = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port
    server = socket.create_server(("127.0.0.1", port))
    time.sleep(60)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""

SERVER_ENV = {"PATH": os.environ["PATH"], "ONLY_IN_THE_SERVER": "1"}


async def until(check, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := check()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)
    return value


def gone(pid: int) -> bool:
    """True once `pid` no longer exists; a zombie still exists for ``os.kill(pid, 0)``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def exited(pid: int) -> bool:
    """True once `pid` has ended, whoever is meant to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def home(tmp_path):
    """A session home (created by the child) and a probe module found through ``sys.path``."""
    home = tmp_path / "home" / "ana"
    home.mkdir(parents=True)
    (home / "probe_session.py").write_text(PROBE)
    return home


@pytest.fixture
def read_seen(tmp_path):
    async def read(name="seen"):
        path = tmp_path / f"{name}.json"
        await until(path.exists)
        return json.loads(path.read_text())

    return read


@pytest.fixture
async def server():
    """A prewarm server importing only ``json``, so that it starts in a fraction of a second."""
    server = PrewarmServer(SERVER_ENV, preload=["json"])
    await server.start()
    yield server
    await server.close()


def session_env(tmp_path, home, name="seen", **extra):
    return {
        "SEEN": str(tmp_path / f"{name}.json"),
        "HOME": str(home),
        "JUPYTERHUB_API_TOKEN": "session-token",
        **extra,
    }


async def test_child_is_the_session_it_was_asked_for(server, tmp_path, home, read_seen):
    env = session_env(tmp_path, home)
    cpu = min(os.sched_getaffinity(0))
    pid = await server.spawn("probe_session", ["--a=1", "b"], env, str(home), GiB, {cpu})
    seen = await read_seen()

    assert seen["pid"] == pid
    assert seen["ppid"] == server.pid
    assert seen["name"] == "__main__"
    assert seen["argv"] == [str(home / "probe_session.py"), "--a=1", "b"]
    assert seen["env"] == env  # replaced, not merged: nothing of the server's is left
    assert seen["cwd"] == str(home)
    assert seen["path0"] == str(home)  # as `python -m` in the home directory
    assert seen["sid"] == seen["pgid"] == pid  # its own session, like start_new_session
    assert seen["rlimit_as"] == [GiB, GiB]
    assert seen["cpus"] == [cpu]
    assert seen["sigint_default"]
    assert seen["preloaded"]  # imported by the server, not again
    assert seen["hub_modules"] == []  # nothing of the server's own code


async def test_home_is_created_and_user_site_follows_home(server, tmp_path, read_seen):
    home = tmp_path / "new" / "home"
    env = session_env(tmp_path, home)
    await server.spawn("json.tool", ["--help"], env, str(home))  # any module: this one exits
    await until(home.is_dir)
    # the probe itself, from a home that has a user site-packages directory
    probe_home = tmp_path / "with-site"
    user_site = probe_home / ".local/lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (user_site / "site-packages").mkdir(parents=True)
    (probe_home / "probe_session.py").write_text(PROBE)
    env = session_env(tmp_path, probe_home)
    await server.spawn("probe_session", [], env, str(probe_home))
    seen = await read_seen()
    if site.ENABLE_USER_SITE:
        assert str(user_site / "site-packages") in seen["path"]


async def test_without_limits_the_child_keeps_the_hubs(server, tmp_path, home, read_seen):
    await server.spawn("probe_session", [], session_env(tmp_path, home), str(home))
    seen = await read_seen()
    assert seen["rlimit_as"] == list(resource.getrlimit(resource.RLIMIT_AS))
    assert set(seen["cpus"]) == os.sched_getaffinity(0)


async def test_children_do_not_share_random_state(server, tmp_path, home, read_seen):
    for name in ("one", "two"):
        await server.spawn("probe_session", [], session_env(tmp_path, home, name), str(home))
    assert (await read_seen("one"))["random"] != (await read_seen("two"))["random"]


async def test_exited_children_are_reaped_at_once(server, tmp_path, home, read_seen):
    env = session_env(tmp_path, home, EXIT_CODE="3")
    pids = [await server.spawn("probe_session", [], env, str(home)) for _ in range(3)]
    await read_seen()
    for pid in pids:
        # what LocalProcessSpawner.poll does: a zombie would look alive forever
        await until(lambda pid=pid: gone(pid))
    assert server.proc.poll() is None


async def test_failed_setup_is_reported_and_the_server_carries_on(server, tmp_path, home):
    env = session_env(tmp_path, home)
    with pytest.raises(PrewarmError, match=r"the session could not start: OSError"):
        await server.spawn("probe_session", [], env, str(home), GiB, {10**6})  # no such CPU
    assert await server.spawn("probe_session", [], env, str(home)) > 0


async def test_a_cancelled_request_leaves_the_next_one_its_own_reply(
    server, tmp_path, home, read_seen
):
    first = asyncio.create_task(
        server.spawn("probe_session", [], session_env(tmp_path, home, "one"), str(home))
    )
    await asyncio.sleep(0)
    first.cancel()  # as the hub's start timeout would, after the request was sent
    pid = await server.spawn("probe_session", [], session_env(tmp_path, home, "two"), str(home))
    assert (await read_seen("two"))["pid"] == pid


async def test_session_secrets_never_enter_the_servers_memory(server, tmp_path, home, read_seen):
    secret = "s3cr3t-" + os.urandom(12).hex()
    env = session_env(tmp_path, home, WORKBENCH_TOKEN=secret)
    await server.spawn("probe_session", [], env, str(home))
    assert (await read_seen())["env"]["WORKBENCH_TOKEN"] == secret
    # the forked child read the request itself; the server only ever saw its first byte
    found = []
    with open(f"/proc/{server.pid}/maps") as maps, open(f"/proc/{server.pid}/mem", "rb") as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if "r" not in perms or "[vvar]" in line or "[vsyscall]" in line:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                found.append(secret.encode() in mem.read(end - start))
            except OSError:
                continue
    assert found and not any(found)
    assert secret.encode() not in open(f"/proc/{server.pid}/environ", "rb").read()  # noqa: SIM115


async def test_server_that_cannot_import_or_left_threads_is_refused(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "broken_mod.py").write_text("raise RuntimeError('boom')\n")
    (lib / "threaded_mod.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True)"
        ".start()\n"
    )
    env = {**SERVER_ENV, "PYTHONPATH": str(lib)}
    for module, message in [
        ("broken_mod", "cannot import broken_mod: RuntimeError: boom"),
        ("threaded_mod", "importing left 2 threads"),
    ]:
        server = PrewarmServer(env, preload=[module])
        with pytest.raises(PrewarmError, match=message):
            await server.start()
        assert server.broken
        assert server.proc.returncode is not None
        with pytest.raises(PrewarmError):
            await server.spawn("json.tool", [], {}, str(tmp_path))


async def test_server_ends_when_the_hub_closes_it_or_dies(tmp_path):
    server = PrewarmServer(SERVER_ENV, preload=["json"])
    await server.start()
    await server.close()
    assert server.proc.returncode == 0

    hub = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
                import asyncio, os, time
                from workbench_spawner.prewarm import PrewarmServer
                async def main():
                    server = PrewarmServer({"PATH": os.environ["PATH"]}, preload=["json"])
                    await server.start()
                    print(server.pid, flush=True)
                    await asyncio.sleep(60)
                asyncio.run(main())
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        zygote = int(await asyncio.to_thread(hub.stdout.readline))
        assert psutil.Process(zygote).ppid() == hub.pid  # in the hub's process tree
    finally:
        hub.kill()  # no chance to close anything
        hub.wait()
    await until(lambda: exited(zygote))


async def test_the_full_preload_is_fork_safe():
    """Importing JupyterLab and the rest starts no thread and no event loop (checked in the
    server, which refuses to serve otherwise)."""
    server = PrewarmServer(SERVER_ENV)
    try:
        await server.start()
        modules = open(f"/proc/{server.pid}/cmdline").read()  # noqa: SIM115
        assert "jupyterlab.labapp" in modules
    finally:
        await server.close()


def test_import_env_is_what_python_reads_at_start_up():
    env = {
        "PATH": "/bin",
        "PYTHONPATH": "/x",
        "MALLOC_ARENA_MAX": "2",
        "LC_ALL": "C",
        "JUPYTERHUB_SINGLEUSER_APP": "x",
        "JUPYTERHUB_API_TOKEN": "t",
        "WORKBENCH_TOKEN": "t",
        "HOME": "/h",
        "OMP_NUM_THREADS": "1",
    }
    assert prewarm.import_env(env) == {
        "PATH": "/bin",
        "PYTHONPATH": "/x",
        "MALLOC_ARENA_MAX": "2",
        "LC_ALL": "C",
        "JUPYTERHUB_SINGLEUSER_APP": "x",
    }


async def test_one_shared_server_per_loop_for_one_start_up_environment(fast_preload, monkeypatch):
    env = {"PATH": os.environ["PATH"], "JUPYTERHUB_API_TOKEN": "a"}
    server = prewarm.shared_server(env)
    assert prewarm.shared_server({**env, "JUPYTERHUB_API_TOKEN": "b"}) is server
    assert "JUPYTERHUB_API_TOKEN" not in server.env
    with pytest.raises(PrewarmError, match="start-up environment"):
        prewarm.shared_server({**env, "PYTHONPATH": "/elsewhere"})
    await server.start()
    await server.close()
    with pytest.raises(PrewarmError, match="the prewarm server stopped 0 s ago"):
        prewarm.shared_server(env)
    monkeypatch.setattr(prewarm, "RETRY_AFTER", 0)
    assert prewarm.shared_server(env) is not server


# --- through WorkbenchLocalSpawner ---------------------------------------------------------


@pytest.fixture
async def fast_preload(monkeypatch):
    """The spawner's shared prewarm server, importing only ``json``; stopped after the test."""
    await prewarm.close_shared_server()
    monkeypatch.setattr(prewarm, "PRELOAD", ("json",))
    yield
    await prewarm.close_shared_server()


@pytest.fixture
def probe_spawner(make_spawner, tmp_path, fast_preload):
    """`probe_spawner(server, **traits)`: a spawner running the probe as its session module."""
    started = []

    def make(server="demo", **traits):
        home = tmp_path / "home" / "ana"
        home.mkdir(parents=True, exist_ok=True)
        (home / "probe_session.py").write_text(PROBE)
        spawner = make_spawner(
            server,
            cmd=[sys.executable, "-m", "probe_session"],
            environment={"SEEN": str(tmp_path / "seen.json")},
            **traits,
        )
        started.append(spawner)
        return spawner

    yield make
    for spawner in started:
        if spawner.pid and not gone(spawner.pid):
            os.kill(spawner.pid, signal.SIGKILL)


async def test_spawner_starts_sessions_through_the_prewarm_server(
    probe_spawner, read_seen, routes, caplog
):
    spawner = probe_spawner("demo")
    with caplog.at_level(logging.DEBUG):
        ip, port = await spawner.start()
        seen = await read_seen()
        server = prewarm.shared_server(spawner.get_env())

        assert spawner.proc is None
        assert spawner.pid == seen["pid"]
        assert seen["ppid"] == server.pid
        assert seen["sid"] == spawner.pid
        assert seen["cwd"] == spawner.home_dir
        assert seen["argv"][1:] == spawner.get_args()
        assert seen["env"]["WORKBENCH_TOKEN"] == seen["env"]["JUPYTERHUB_API_TOKEN"]
        assert seen["env"]["WORKBENCH_PROJECT"] == "demo"
        assert seen["env"]["MALLOC_ARENA_MAX"] == "2"
        assert "ONLY_IN_THE_SERVER" not in seen["env"]
        assert seen["rlimit_as"] == [GiB, GiB]  # profile "small"
        assert len(seen["cpus"]) == 1
        # start() returned once the port accepted connections
        _, writer = await asyncio.open_connection(ip, port)
        writer.close()

        assert spawner.get_state() == {"pid": spawner.pid, "project": "demo", "profile": "small"}
        assert await spawner.poll() is None
        await spawner.stop()
        assert await spawner.poll() is not None
        assert gone(seen["pid"])
        await until(lambda: len(routes.events) == 2)
    assert [e["action"] for e in routes.events] == ["session.started", "session.stopped"]
    assert "Spawning (prewarmed)" in caplog.text
    assert "session-token" not in caplog.text
    assert SERVICE_TOKEN not in caplog.text

    # a second session reuses the same server
    again = probe_spawner("docs")
    await again.start()
    assert (await read_seen())["ppid"] == server.pid
    await again.stop(now=True)


async def test_hub_restart_stops_a_prewarmed_session_from_state(
    probe_spawner, make_spawner, read_seen
):
    spawner = probe_spawner("demo")
    await spawner.start()
    pid = (await read_seen())["pid"]
    restarted = make_spawner("demo")
    restarted.load_state(json.loads(json.dumps(spawner.get_state())))
    assert await restarted.poll() is None
    await restarted.stop()
    assert gone(pid)


async def test_prewarm_off_starts_sessions_with_popen(probe_spawner, read_seen):
    spawner = probe_spawner("demo", prewarm=False)
    await spawner.start()
    seen = await read_seen()
    assert spawner.proc is not None
    assert seen["ppid"] == os.getpid()
    await spawner.stop(now=True)


async def test_prewarm_failure_falls_back_to_popen(
    probe_spawner, read_seen, monkeypatch, tmp_path, caplog
):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "broken_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.setattr(prewarm, "PRELOAD", ("broken_mod",))
    spawner = probe_spawner("demo")
    monkeypatch.setenv("PYTHONPATH", str(lib))  # the server's import environment comes from here
    with caplog.at_level(logging.WARNING):
        await spawner.start()
    seen = await read_seen()
    assert spawner.proc is not None
    assert seen["ppid"] == os.getpid()
    assert re.search(r"Prewarmed start of .* failed .*broken_mod.*starting normally", caplog.text)
    await spawner.stop(now=True)


def test_prewarm_only_for_python_dash_m(make_spawner):
    assert make_spawner("demo", cmd=[sys.executable, "-c", "pass"])._prewarm_module() is None
    assert make_spawner("demo", cmd=["jupyterhub-singleuser"])._prewarm_module() is None
    spawner = make_spawner("demo", cmd=[sys.executable, "-m", "workbench_lab.singleuser"])
    assert spawner._prewarm_module() == "workbench_lab.singleuser"
    spawner.shell_cmd = ["bash", "-c"]
    assert spawner._prewarm_module() is None
