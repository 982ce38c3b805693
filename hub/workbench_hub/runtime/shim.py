"""Workload supervisor, started as ``python -m workbench_hub.runtime.shim`` (stdlib only).

The launcher reads one JSON object from stdin (``dir``, ``command``, ``cwd``, ``env``,
``memory``, ``cpus``, ``sandbox``), forks the supervisor into its own session, records the
supervisor's pid and start time in ``<dir>/state.json`` and exits at once, so the supervisor
outlives the control plane. The supervisor:

* runs the command in its own process group with ``cwd``, exactly ``env``, stdin from
  ``/dev/null``, stdout and stderr appended to ``<dir>/output.log``, RLIMIT_AS = ``memory``,
  CPU affinity = ``cpus``, SIGKILL as parent-death signal and, when ``sandbox`` is set, inside
  that sandbox (``workbench_hub.isolation.sandbox``: the user's account, only what it may see);
* forwards SIGTERM, SIGINT and SIGHUP to the command's process group as SIGTERM;
* adopts orphaned descendants (child subreaper) and, once the command ends, kills every
  process it left behind;
* writes ``<dir>/exit.json`` (``exit_code``, ``finished``, ``message``) atomically.

The environment is passed on stdin, never on the command line or on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from workbench_hub.isolation.sandbox import SandboxPolicy, enter
from workbench_hub.runtime.procfs import descendants, read_stat, reap_children

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _write_exit(workdir: Path, code: int | None, message: str) -> None:
    record = {"exit_code": code, "finished": datetime.now(UTC).isoformat(), "message": message}
    _write_json(workdir / "exit.json", record)


def _prepare_child(parent: int, config: dict) -> None:
    """Run in the forked child before exec: limits, death signal, then the sandbox."""
    _limit_child(parent, config["memory"], config["cpus"])
    if config.get("sandbox"):
        try:
            enter(SandboxPolicy.from_dict(config["sandbox"]), cwd=config["cwd"])
        except OSError as exc:
            os.write(2, f"workbench: cannot enter the workload's sandbox: {exc}\n".encode())
            raise


def _limit_child(parent: int, memory: int | None, cpus: list[int] | None) -> None:
    """Apply limits; die with the supervisor."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the supervisor died before the death signal was armed
        os._exit(1)
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if cpus:
        os.sched_setaffinity(0, cpus)


def _kill_leftovers() -> None:
    """SIGKILL every remaining descendant and reap them all."""
    while pids := descendants(os.getpid()):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
        reap_children()
    reap_children()


def _wait(child_pid: int) -> int:
    """Wait for the child, reaping adopted orphans meanwhile; return its exit code."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child_pid:
            return os.waitstatus_to_exitcode(status)


def _supervise(config: dict) -> None:
    workdir = Path(config["dir"])
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    supervisor = os.getpid()
    child: subprocess.Popen | None = None
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        with open(workdir / "output.log", "ab") as log:
            child = subprocess.Popen(
                config["command"],
                cwd=config["cwd"],
                env=config["env"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=lambda: _prepare_child(supervisor, config),
            )
    except (OSError, subprocess.SubprocessError) as exc:
        code = 126 if isinstance(exc, PermissionError) else 127
        _write_exit(workdir, code, f"could not start the command: {exc}")
        return
    if stopping:
        forward(signal.SIGTERM, None)
    code = _wait(child.pid)
    child.returncode = code
    _kill_leftovers()
    message = ""
    if code < 0:
        message = f"killed by signal {signal.Signals(-code).name}"
        code = 128 - code
    _write_exit(workdir, code, message)


def main() -> None:
    """Launch the supervisor for the configuration on stdin, record it, and exit."""
    config = json.load(sys.stdin)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            _supervise(config)
        except Exception as exc:
            _write_exit(Path(config["dir"]), None, f"supervisor failed: {exc}")
        finally:
            os._exit(0)
    stat = read_stat(pid)  # readable even if it already ended: only this process can reap it
    assert stat is not None
    state = {"pid": pid, "starttime": stat.starttime, "started": datetime.now(UTC).isoformat()}
    _write_json(Path(config["dir"]) / "state.json", state)


if __name__ == "__main__":
    main()
