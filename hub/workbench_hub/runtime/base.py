"""The runtime interface: how the control plane starts, watches, stops and finds workloads.

A *workload* is one process tree with a unique name: a job run, a model replica, later an app.
Implementations: :class:`workbench_hub.runtime.local.LocalProcessRuntime` (host processes) and,
later, a Kubernetes runtime (Jobs and Deployments). See ``docs/runtime.md``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from traitlets import Float
from traitlets.config import LoggingConfigurable

from workbench_hub import names

Kind = Literal["job-run", "model-build", "model-replica", "app"]
Phase = Literal["pending", "running", "succeeded", "failed", "stopped", "lost"]

KINDS: frozenset[str] = frozenset({"job-run", "model-build", "model-replica", "app"})
ACTIVE_PHASES: frozenset[str] = frozenset({"pending", "running"})
FINISHED_PHASES: frozenset[str] = frozenset({"succeeded", "failed", "stopped", "lost"})

LABEL_PREFIX = "workbench.jupyter.org/"
KIND_LABEL = LABEL_PREFIX + "kind"
PROJECT_LABEL = LABEL_PREFIX + "project"

NAME_RE = re.compile(names.NAME_PATTERN)
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class WorkloadNotFound(LookupError):
    """No workload with this name exists in the runtime."""


def validate_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is a DNS-1123 label (1-63 chars), else raise ValueError."""
    try:
        return names.validate_name(name)
    except names.InvalidName as exc:
        raise ValueError(f"{what} {name!r} is invalid: {exc}") from None


def _check_label(key: object, value: object) -> None:
    if not isinstance(key, str) or not isinstance(value, str):
        raise ValueError(f"label {key!r}: keys and values must be strings")
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        raise ValueError(f"label key {key!r}: prefix must be a DNS subdomain")
    if len(name) > 63 or not _LABEL_NAME_RE.match(name):
        raise ValueError(f"label key {key!r}: name must be 1-63 of [A-Za-z0-9-_.]")
    if value and (len(value) > 63 or not _LABEL_NAME_RE.match(value)):
        raise ValueError(f"label {key}={value!r}: value must be empty or 1-63 of [A-Za-z0-9-_.]")


@dataclass(frozen=True)
class Resources:
    """Resource limits of a workload (Kubernetes sets requests equal to these limits).

    ``cpu`` in cores (``None``: unlimited), ``memory`` in bytes (``None``: unlimited),
    ``gpu`` a number of whole GPUs.
    """

    cpu: float | None = None
    memory: int | None = None
    gpu: int = 0

    def __post_init__(self) -> None:
        if self.cpu is not None and not (isinstance(self.cpu, int | float) and self.cpu > 0):
            raise ValueError(f"resources.cpu must be a positive number or None, not {self.cpu!r}")
        if self.memory is not None and not (isinstance(self.memory, int) and self.memory > 0):
            raise ValueError(f"resources.memory must be bytes > 0 or None, not {self.memory!r}")
        if not isinstance(self.gpu, int) or self.gpu < 0:
            raise ValueError(f"resources.gpu must be a non-negative integer, not {self.gpu!r}")


@dataclass(frozen=True)
class VolumeMount:
    """Storage made visible to the workload at ``target`` (an absolute path).

    ``source`` names the storage in the runtime's terms: a host directory for the local
    runtime, a PersistentVolumeClaim name for Kubernetes. ``sub_path`` selects a directory
    inside it.
    """

    source: str
    target: str
    read_only: bool = False
    sub_path: str = ""

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("volume source must not be empty")
        if not self.target.startswith("/"):
            raise ValueError(f"volume target {self.target!r} must be an absolute path")
        if self.sub_path.startswith("/") or ".." in self.sub_path.split("/"):
            raise ValueError(f"volume sub_path {self.sub_path!r} must be relative, without '..'")


@dataclass(frozen=True)
class WorkloadSpec:
    """What to run. Invalid values raise ValueError on construction.

    ``name`` is unique in the runtime (DNS-1123 label). ``working_dir`` is the absolute path
    the command starts in, as the workload sees it (it may lie inside a volume's ``target``).
    ``ports`` maps a port name (like ``http``) to the port the workload listens on; the
    process is told the port to bind in the ``WORKBENCH_PORT_<NAME>`` variable (name
    upper-cased, ``-`` as ``_``) because a runtime may assign a different number.
    ``timeout_seconds`` is a deadline the runtime may enforce itself (Kubernetes:
    ``activeDeadlineSeconds``); the control plane enforces it in any case.
    """

    name: str
    kind: Kind
    user: str
    project: str
    command: list[str]
    working_dir: str
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[VolumeMount] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    timeout_seconds: int | None = None

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.timeout_seconds is not None and not (
            isinstance(self.timeout_seconds, int) and self.timeout_seconds > 0
        ):
            raise ValueError(
                f"timeout_seconds must be a positive integer, not {self.timeout_seconds!r}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is invalid: use one of {sorted(KINDS)}")
        if not isinstance(self.user, str) or not self.user:
            raise ValueError("user must be a non-empty string")
        validate_name(self.project, "project")
        if (
            not isinstance(self.command, list)
            or not self.command
            or not all(isinstance(arg, str) for arg in self.command)
            or not self.command[0]
        ):
            raise ValueError("command must be a non-empty list of strings")
        if not isinstance(self.working_dir, str) or not self.working_dir.startswith("/"):
            raise ValueError(f"working_dir {self.working_dir!r} must be an absolute path")
        for key, value in self.env.items():
            if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
                raise ValueError(f"environment variable name {key!r} is invalid")
            if not isinstance(value, str) or "\0" in value:
                raise ValueError(f"environment variable {key}: value must be a string without NUL")
        targets = [volume.target.rstrip("/") for volume in self.volumes]
        if len(set(targets)) != len(targets):
            raise ValueError("two volumes have the same target")
        for key, value in self.labels.items():
            _check_label(key, value)
        for port_name, number in self.ports.items():
            if not (
                isinstance(port_name, str) and len(port_name) <= 15 and NAME_RE.match(port_name)
            ):
                raise ValueError(f"port name {port_name!r}: use 1-15 of [a-z0-9-]")
            if not isinstance(number, int) or not 0 < number < 65536:
                raise ValueError(f"port {port_name}: {number!r} is not a port number")

    def all_labels(self) -> dict[str, str]:
        """The spec's labels plus the standard kind and project labels every runtime sets."""
        return {**self.labels, KIND_LABEL: self.kind, PROJECT_LABEL: self.project}


def port_env_name(port_name: str) -> str:
    """The variable that tells a workload which port to bind for ``port_name``."""
    return "WORKBENCH_PORT_" + port_name.upper().replace("-", "_")


@dataclass(frozen=True)
class WorkloadStatus:
    """What a runtime knows about a workload. Times are aware UTC datetimes.

    ``exit_code`` is set once the command has ended (``128 + n`` when killed by signal ``n``).
    ``endpoints`` maps each port name to the ``host:port`` the control plane can reach it at.
    """

    name: str
    kind: Kind
    user: str
    project: str
    phase: Phase
    labels: dict[str, str]
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    exit_code: int | None = None
    message: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplicatedStatus:
    """A replicated workload (runtimes with :attr:`Runtime.manages_rollouts`).

    ``replicas`` is the wanted count; ``ready`` the ready replicas running the current spec;
    ``rolled_out`` is true once every wanted replica runs the current spec and is ready (older
    replicas gone). ``endpoint`` is the ``host:port`` that balances over the ready replicas.
    """

    name: str
    replicas: int
    ready: int
    rolled_out: bool
    endpoint: str
    labels: dict[str, str]
    message: str = ""


class Runtime(LoggingConfigurable):
    """Base class of runtimes; every method is a coroutine safe to call concurrently.

    Phases: ``pending`` (accepted, not yet running), ``running``, then one of
    ``succeeded`` (exit code 0), ``failed`` (non-zero exit code or could not start),
    ``stopped`` (ended because :meth:`stop` was called) or ``lost`` (the runtime can no
    longer tell what happened to it).
    """

    stop_grace = Float(
        10.0,
        help="""Default seconds :meth:`stop` waits after SIGTERM before killing the workload
        with SIGKILL (Kubernetes: the pod's terminationGracePeriodSeconds).""",
    ).tag(config=True)

    poll_interval = Float(
        0.2,
        help="Seconds between checks while waiting for a workload to end or following its logs.",
    ).tag(config=True)

    #: True when the runtime rolls out replicated workloads itself (:meth:`apply_replicated`);
    #: the model supervisor then hands it whole deployments instead of single replicas.
    manages_rollouts: bool = False

    async def open(self) -> None:
        """Start background work (watches, connections); called once before any other call."""

    async def close(self) -> None:
        """Stop background work and release connections; workloads keep running."""

    async def start(self, spec: WorkloadSpec) -> WorkloadStatus:
        """Start ``spec`` and return its status.

        Idempotent: if a workload named ``spec.name`` already exists (in any phase) nothing is
        started and its current status is returned; the new spec is ignored. Raises ValueError
        when this runtime cannot run the spec (for example a missing working directory).
        """
        raise NotImplementedError

    async def status(self, name: str) -> WorkloadStatus | None:
        """The workload's current status, or ``None`` if no such workload exists."""
        raise NotImplementedError

    async def stop(self, name: str, grace: float | None = None) -> WorkloadStatus:
        """Stop the whole workload (every process of it) and return its final status.

        Sends SIGTERM, waits up to ``grace`` seconds (default :attr:`stop_grace`), then kills
        what is left. The phase becomes ``stopped``. Idempotent: a finished workload is left
        as it is and its status returned. Raises :class:`WorkloadNotFound`.
        """
        raise NotImplementedError

    def logs(self, name: str, follow: bool = False) -> AsyncIterator[str]:
        """Iterate over the workload's output (stdout and stderr) as lines without newline.

        With ``follow`` the iterator waits for new output until the workload has ended.
        Raises :class:`WorkloadNotFound` on first iteration.
        """
        raise NotImplementedError

    async def list(self, selector: dict[str, str] | None = None) -> list[WorkloadStatus]:
        """Every workload whose labels include all of ``selector`` (all workloads if empty).

        Used to reconcile the control plane's records with reality after it restarts.
        """
        raise NotImplementedError

    async def remove(self, name: str) -> None:
        """Forget a workload: stop it if active, then delete its record and logs.

        Idempotent: removing an unknown name does nothing.
        """
        raise NotImplementedError

    async def wait(self, name: str) -> WorkloadStatus:
        """Wait until the workload has finished and return its final status.

        Raises :class:`WorkloadNotFound`. Bound the wait with ``asyncio.timeout``.
        """
        while True:
            status = await self.status(name)
            if status is None:
                raise WorkloadNotFound(name)
            if status.phase in FINISHED_PHASES:
                return status
            await asyncio.sleep(self.poll_interval)

    async def apply_replicated(self, spec: WorkloadSpec, replicas: int) -> ReplicatedStatus:
        """Run ``replicas`` copies of ``spec`` behind one endpoint (only with
        :attr:`manages_rollouts`). Idempotent; a changed spec rolls out without ever having
        fewer than ``replicas`` ready, a changed count scales."""
        raise NotImplementedError

    async def list_replicated(
        self, selector: dict[str, str] | None = None
    ) -> list[ReplicatedStatus]:
        """Every replicated workload whose labels include ``selector``."""
        raise NotImplementedError

    async def list_replicas(self, selector: dict[str, str] | None = None) -> list[WorkloadStatus]:
        """The replicas (one status each) of replicated workloads whose labels include
        ``selector``; ``endpoints`` are each replica's own address."""
        raise NotImplementedError

    async def remove_replicated(self, name: str) -> None:
        """Stop and forget a replicated workload. Idempotent."""
        raise NotImplementedError

    async def project_access_removed(self, project: str, user: str | None = None) -> None:
        """``user`` (None: every user) may no longer use ``project``: remove what gave their
        workloads its files (Kubernetes: their project volumes and claims). Idempotent.
        Nothing to do for local processes."""
