"""Run workloads as local processes, each under a detached supervisor (see ``shim.py``).

Each workload gets ``<state_dir>/<name>/`` holding ``spec.json`` (the spec without environment
values), ``state.json`` (supervisor pid and start time), ``output.log``, ``exit.json`` (how it
ended) and ``stop.json`` (stop was requested). A new runtime on the same ``state_dir`` finds
every workload again, so the control plane can restart while workloads run.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from traitlets import Instance, List, Unicode, default, validate

from workbench_hub.isolation.accounts import AccountError, own_tree
from workbench_hub.isolation.config import Isolation
from workbench_hub.isolation.sandbox import Bind
from workbench_hub.runtime import procfs
from workbench_hub.runtime.base import (
    ACTIVE_PHASES,
    NAME_RE,
    Runtime,
    WorkloadNotFound,
    WorkloadSpec,
    WorkloadStatus,
    port_env_name,
    validate_name,
)

_HUB_DIR = str(Path(__file__).resolve().parents[2])  # the directory holding workbench_hub
_KILL_WAIT = 5.0  # seconds to wait for the supervisor to record an exit after SIGKILL


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_chunk(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return log.read(65536)
    except FileNotFoundError:
        return b""


class LocalProcessRuntime(Runtime):
    """Workloads as process trees on this host.

    Enforced: ``resources.memory`` as RLIMIT_AS (address space, per process),
    ``resources.cpu`` as CPU affinity to ``ceil(cpu)`` cores, ``resources.gpu == 0`` as an
    empty ``CUDA_VISIBLE_DEVICES``. Volume sources are host directories. With
    ``isolation.enabled`` each workload runs as ``spec.user``'s unix account in a sandbox that
    shows it only its volumes (``read_only`` enforced), that user's home and the software
    (docs/isolation.md); without it, as the control plane's own user, ``read_only`` not
    enforced.
    """

    state_dir = Unicode(
        "workbench-runtime",
        help="""Directory holding one subdirectory per workload (spec, state, logs, exit status).
        Relative paths resolve against the current directory. Must be private to one control
        plane and survive its restarts; created with mode 0700.""",
    ).tag(config=True)

    env_keep = List(
        Unicode(),
        ["PATH", "HOME", "LANG", "LC_ALL", "TZ"],
        help="""Variables copied from the control plane's environment into every workload's
        environment unless the spec sets them. Nothing else of the control plane's
        environment reaches a workload.""",
    ).tag(config=True)

    isolation = Instance(Isolation, help="The walls around each workload (docs/isolation.md).")

    @default("isolation")
    def _default_isolation(self):
        return Isolation(parent=self)

    @validate("state_dir")
    def _absolute_state_dir(self, proposal: dict[str, Any]) -> str:
        return os.path.abspath(proposal["value"])

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._starting: Counter[str] = Counter()  # names being started by this instance

    async def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    def _dir(self, name: str) -> Path:
        return Path(self.state_dir, validate_name(name))

    # ---- start

    def _host_path(self, spec: WorkloadSpec, path: str) -> Path:
        """Map a path as the workload sees it to the host path (through volume targets)."""
        path = os.path.normpath(path)
        for volume in spec.volumes:
            target = volume.target.rstrip("/") or "/"
            if path == target or path.startswith(target.rstrip("/") + "/"):
                relative = os.path.relpath(path, target)
                return Path(volume.source, volume.sub_path, relative).resolve()
        return Path(path)

    def _check_local(self, spec: WorkloadSpec) -> Path:
        """Raise ValueError unless this host can run ``spec``; return the host working dir."""
        for volume in spec.volumes:
            if not Path(volume.source, volume.sub_path).is_dir():
                raise ValueError(f"volume source {volume.source!r} is not a directory on this host")
        cwd = self._host_path(spec, spec.working_dir)
        if not cwd.is_dir():
            raise ValueError(f"working_dir {spec.working_dir!r} is not a directory on this host")
        return cwd

    def _cpus(self, spec: WorkloadSpec) -> list[int] | None:
        available = sorted(os.sched_getaffinity(0))
        wanted = spec.resources.cpu
        if wanted is None or math.ceil(wanted) >= len(available):
            return None
        offset = zlib.crc32(spec.name.encode())  # spread workloads over the cores
        return [available[(offset + i) % len(available)] for i in range(math.ceil(wanted))]

    def _create(self, spec: WorkloadSpec, record: dict[str, Any]) -> bool:
        """Create the workload directory atomically; False if the name exists already."""
        root = Path(self.state_dir)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = root / f".new-{spec.name}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        _write_json(tmp / "spec.json", record)
        os.close(os.open(tmp / "output.log", os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            tmp.rename(root / spec.name)
        except OSError:
            shutil.rmtree(tmp)
            return False
        return True

    async def start(self, spec: WorkloadSpec) -> WorkloadStatus:
        existing = await self.status(spec.name)
        if existing is not None:
            return existing
        cwd = await self._run(self._check_local, spec)
        sandbox = None
        if self.isolation.enabled:
            try:
                sandbox = await self._run(self._sandbox, spec, cwd)
            except (AccountError, OSError) as e:
                raise ValueError(f"cannot build the workload's sandbox: {e}") from None
        ports = {port_name: _free_port() for port_name in spec.ports}
        env = {key: os.environ[key] for key in self.env_keep if key in os.environ}
        if sandbox is not None:
            env["HOME"] = sandbox["home"]
        env.update(spec.env)
        env.update({port_env_name(port_name): str(port) for port_name, port in ports.items()})
        if spec.resources.gpu == 0:
            env["CUDA_VISIBLE_DEVICES"] = ""
        record = asdict(spec)
        record.update(
            env=sorted(spec.env),  # names only: values may hold tokens
            labels=spec.all_labels(),
            ports=ports,
            created=datetime.now(UTC).isoformat(),
        )
        self._starting[spec.name] += 1
        try:
            if not await self._run(self._create, spec, record):
                return await self.status(spec.name)  # a concurrent start won
            await self._launch(spec.name, cwd, env, spec, sandbox and sandbox["policy"])
        finally:
            self._starting[spec.name] -= 1
            if not self._starting[spec.name]:
                del self._starting[spec.name]
        self.log.info("Started %s %s for %s in %s", spec.kind, spec.name, spec.user, spec.project)
        return await self.status(spec.name)

    def _sandbox(self, spec: WorkloadSpec, cwd: Path) -> dict[str, Any]:
        """The workload's sandbox: ``spec.user``'s account, its volumes (a project volume
        through the project's group, any other writable one owned by the account). Blocking."""
        isolation = self.isolation
        if not any(cwd.is_relative_to(Path(v.source, v.sub_path).resolve()) for v in spec.volumes):
            raise ValueError(f"working_dir {spec.working_dir!r} is in none of the volumes")
        account = isolation.accounts.ensure_user(spec.user)
        groups, binds = [], []
        for volume in spec.volumes:
            source = Path(volume.source, volume.sub_path).resolve()
            if isolation.is_project_dir(str(source), spec.project):
                groups.append(isolation.accounts.ensure_project_group(spec.project, source))
            elif not volume.read_only:
                own_tree(source, account.uid, account.gid)
            binds.append(Bind(str(source), volume.read_only))
        policy = isolation.policy(account, groups, binds)
        return {"home": account.home, "policy": policy.to_dict()}

    async def _launch(
        self,
        name: str,
        cwd: Path,
        env: dict[str, str],
        spec: WorkloadSpec,
        sandbox: dict[str, Any] | None,
    ) -> None:
        config = {
            "dir": str(self._dir(name)),
            "command": spec.command,
            "cwd": str(cwd),
            "env": env,
            "memory": spec.resources.memory,
            "cpus": self._cpus(spec),
            "sandbox": sandbox,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "workbench_hub.runtime.shim",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={"PYTHONPATH": _HUB_DIR},
            cwd=self.state_dir,
        )
        _, err = await proc.communicate(json.dumps(config).encode())
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines() or ["no output"]
            message = f"the supervisor failed to start: {lines[-1]}"
            self.log.error("Workload %s: %s", name, message)
            record = {
                "exit_code": None,
                "finished": datetime.now(UTC).isoformat(),
                "message": message,
            }
            await self._run(_write_json, self._dir(name) / "exit.json", record)

    # ---- status

    def _status_sync(self, name: str) -> WorkloadStatus | None:
        workdir = self._dir(name)
        spec = _load(workdir / "spec.json")
        if spec is None:
            return None
        state = _load(workdir / "state.json")
        stop = _load(workdir / "stop.json")
        exit_record = _load(workdir / "exit.json")
        phase, message = "running", ""
        if exit_record is None:
            if state is None:
                if self._starting[name] > 0:
                    phase = "pending"
                else:
                    phase, message = "lost", "the control plane stopped while starting it"
            elif not procfs.is_alive(state["pid"], state["starttime"]):
                exit_record = _load(workdir / "exit.json")  # it may have ended just now
                if exit_record is None and stop is not None:
                    phase, message = "stopped", "stopped on request (supervisor killed)"
                elif exit_record is None:
                    phase = "lost"
                    message = (
                        f"its supervisor (pid {state['pid']}) ended without recording an exit "
                        "status; processes the command started may still be running"
                    )
        if exit_record is not None:
            code = exit_record["exit_code"]
            message = exit_record["message"]
            if stop is not None and _time(exit_record["finished"]) >= _time(stop["requested"]):
                phase, message = "stopped", ", ".join(filter(None, ["stopped on request", message]))
            elif code == 0:
                phase = "succeeded"
            else:
                phase = "failed"
                message = message or f"exited with code {code}"
        return WorkloadStatus(
            name=name,
            kind=spec["kind"],
            user=spec["user"],
            project=spec["project"],
            phase=phase,
            labels=spec["labels"],
            created=datetime.fromisoformat(spec["created"]),
            started=_time(state and state["started"]),
            finished=_time(exit_record and exit_record["finished"]),
            exit_code=exit_record and exit_record["exit_code"],
            message=message,
            endpoints={port_name: f"127.0.0.1:{port}" for port_name, port in spec["ports"].items()},
        )

    async def status(self, name: str) -> WorkloadStatus | None:
        return await self._run(self._status_sync, name)

    def _list_sync(self, selector: dict[str, str]) -> list[WorkloadStatus]:
        try:
            names = sorted(os.listdir(self.state_dir))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if not NAME_RE.match(name):  # skips directories being created or removed
                continue
            status = self._status_sync(name)
            if status is not None and selector.items() <= status.labels.items():
                found.append(status)
        return found

    async def list(self, selector: dict[str, str] | None = None) -> list[WorkloadStatus]:
        return await self._run(self._list_sync, selector or {})

    # ---- stop and remove

    def _signal_supervisor(self, name: str, signum: int) -> None:
        state = _load(self._dir(name) / "state.json")
        if state and procfs.is_alive(state["pid"], state["starttime"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["pid"], signum)

    def _kill_tree(self, name: str) -> None:
        """SIGKILL every process under the supervisor; the supervisor then records the exit."""
        state = _load(self._dir(name) / "state.json")
        if state and procfs.is_alive(state["pid"], state["starttime"]):
            for pid in procfs.descendants(state["pid"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    async def stop(self, name: str, grace: float | None = None) -> WorkloadStatus:
        grace = self.stop_grace if grace is None else grace
        status = await self.status(name)
        while status is not None and status.phase == "pending":
            await asyncio.sleep(self.poll_interval)
            status = await self.status(name)
        if status is None:
            raise WorkloadNotFound(name)
        if status.phase != "running":
            return status
        stop_record = {"requested": datetime.now(UTC).isoformat()}
        await self._run(_write_json, self._dir(name) / "stop.json", stop_record)
        self.log.info("Stopping workload %s (grace %ss)", name, grace)
        await self._run(self._signal_supervisor, name, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                return await self.wait(name)
        self.log.warning("Workload %s still running after %ss: killing it", name, grace)
        await self._run(self._kill_tree, name)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_KILL_WAIT):
                return await self.wait(name)
        self.log.error("Supervisor of workload %s recorded no exit: killing it", name)
        await self._run(self._signal_supervisor, name, signal.SIGKILL)
        async with asyncio.timeout(_KILL_WAIT):
            return await self.wait(name)

    def _delete(self, name: str) -> None:
        trash = Path(self.state_dir, f".removed-{name}-{secrets.token_hex(4)}")
        try:
            self._dir(name).rename(trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash)

    async def remove(self, name: str) -> None:
        status = await self.status(name)
        if status is None:
            return
        if status.phase in ACTIVE_PHASES:
            await self.stop(name)
        await self._run(self._delete, name)
        self.log.info("Removed workload %s", name)

    # ---- logs

    async def logs(self, name: str, follow: bool = False) -> AsyncIterator[str]:
        if await self.status(name) is None:
            raise WorkloadNotFound(name)
        path = self._dir(name) / "output.log"
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        offset, partial = 0, ""
        finishing = not follow
        while True:
            chunk = await self._run(_read_chunk, path, offset)
            if chunk:
                offset += len(chunk)
                *lines, partial = (partial + decoder.decode(chunk)).split("\n")
                for line in lines:
                    yield line
                continue
            if finishing:
                break
            status = await self.status(name)
            if status is None or status.phase not in ACTIVE_PHASES:
                finishing = True  # read once more: output may have arrived meanwhile
            else:
                await asyncio.sleep(self.poll_interval)
        partial += decoder.decode(b"", final=True)
        if partial:
            yield partial
