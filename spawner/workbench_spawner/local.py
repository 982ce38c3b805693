"""`WorkbenchLocalSpawner`: a workbench session as a local process, one named server per project."""

import asyncio
import os
import shlex
import sys

from jupyterhub.spawner import SimpleLocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Bool, Float, Instance, default

from workbench_hub.isolation.config import Isolation
from workbench_hub.isolation.sandbox import Bind, SandboxPolicy, enter

from . import limits
from .prewarm import PrewarmError, shared_server
from .session import WorkbenchSpawnerMixin


class WorkbenchLocalSpawner(WorkbenchSpawnerMixin, SimpleLocalProcessSpawner):
    """Start a workbench session: JupyterLab in the project directory, with the project's
    role and the chosen resource profile applied.

    With ``isolation.enabled`` (``workbench up`` as root) a session runs as its user's unix
    account in a sandbox that shows it its project (read-only for viewers and operators), its
    home and the software only (docs/isolation.md). Without it, every session runs as the
    hub's own unix user and the limits are guard rails against accidents, not walls.
    """

    isolation = Instance(Isolation, help="The walls around each session (docs/isolation.md).")

    @default("isolation")
    def _default_isolation(self):
        return Isolation(parent=self)

    enforce_limits = Bool(
        True,
        help="""Apply the resource profile to the session's processes: address-space limit of
        the profile's memory, CPU affinity to ceil(cpu) cores, no GPUs for profiles without
        GPUs. See docs/sessions.md. When False the profile is only advertised (MEM_LIMIT,
        CPU_LIMIT).""",
    ).tag(config=True)

    prewarm = Bool(
        True,
        help="""Start sessions by forking a pre-warmed server process that has already imported
        JupyterLab, instead of starting a new Python each time (spawn-to-ready under 1 s, not 5).
        The server is started by the first session the hub starts; sessions are then identical
        to normally started ones (environment, working directory, limits, own process session).
        Used only when `cmd` is ``[sys.executable, "-m", <module>]`` and neither `shell_cmd` nor
        `popen_kwargs` is set; when False, or when the prewarm server fails, sessions are
        started the normal way. See docs/sessions.md.""",
    ).tag(config=True)

    @default("cmd")
    def _default_cmd(self):
        # jupyterhub-singleuser, minus a slow optional import (see workbench_lab.singleuser)
        return [sys.executable, "-m", "workbench_lab.singleuser"]

    ready_poll_interval = Float(
        0.02,
        help="""Seconds between checks that the session's port accepts connections, before
        start() returns. The hub's own readiness check then succeeds at once, instead of
        backing off exponentially (which adds up to a second or more to every spawn).""",
    ).tag(config=True)

    @default("default_url")
    def _default_default_url(self):
        return "/lab"

    @default("start_timeout")
    def _default_start_timeout(self):
        return 30

    @default("http_timeout")
    def _default_http_timeout(self):
        return 60

    def _cpus(self) -> set[int]:
        return limits.choose_cpus(self._resources.cores, f"{self.user.name}/{self._access.name}")

    async def start(self):
        """Authorize, then start JupyterLab in the project directory with the profile's limits."""
        self._access, self._resources = await self._authorize()
        self.notebook_dir = self._access.path.replace("{", "{{").replace("}", "}}")
        self.mem_limit = self._resources.memory
        self.cpu_limit = self._resources.cpu
        self._sandbox = None
        if self.isolation.enabled:
            self._sandbox = await asyncio.to_thread(self._make_sandbox)
        address = await self._start_prewarmed() if self._prewarm_module() else None
        if address is None:
            address = await super().start()
        await self._wait_listening(*address)
        self._session_started()
        return address

    def _make_sandbox(self) -> SandboxPolicy:
        """The session's sandbox: the user's account, the project through its group. Blocking."""
        accounts = self.isolation.accounts
        account = accounts.ensure_user(self.user.name)
        if account.home != self.home_dir:
            raise ValueError("UnixAccounts.home_dir_template must be the spawner's")
        gid = accounts.ensure_project_group(self._access.name, self._access.path)
        bind = Bind(self._access.path, read_only=self._access.read_only)
        return self.isolation.policy(account, [gid], [bind])

    def _prewarm_module(self) -> str | None:
        """The module the prewarm server can run for `cmd`, or None to start with Popen."""
        cmd = list(self.cmd)
        if not self.prewarm or self.shell_cmd or self.popen_kwargs or sys.platform != "linux":
            return None
        if len(cmd) != 3 or cmd[:2] != [sys.executable, "-m"]:
            return None
        if type(self).make_preexec_fn is not WorkbenchLocalSpawner.make_preexec_fn:
            return None  # a subclass's preexec_fn cannot be sent to the prewarm server
        return cmd[2]

    async def _start_prewarmed(self) -> tuple[str, int] | None:
        """LocalProcessSpawner.start through the prewarm server; None if it cannot."""
        if self.port == 0:
            self.port = random_port()
        env = self.get_env()
        args = self.get_args()
        self.log.info(
            "Spawning (prewarmed) %s", " ".join(shlex.quote(s) for s in [*self.cmd, *args])
        )
        try:
            self.pid = await shared_server(env).spawn(
                self._prewarm_module(),
                args,
                env,
                self.home_dir,
                memory=self._resources.memory if self.enforce_limits else None,
                cpus=self._cpus() if self.enforce_limits else None,
                sandbox=self._sandbox.to_dict() if self._sandbox else None,
            )
        except PrewarmError as e:
            self.log.warning(
                "Prewarmed start of %s failed (%s): starting normally", self._log_name, e
            )
            return None
        return (self.ip or "127.0.0.1", self.port)

    async def _wait_listening(self, ip: str, port: int) -> None:
        """Return once the server accepts connections, it exits, or `http_timeout` passes."""
        deadline = asyncio.get_running_loop().time() + self.http_timeout
        while asyncio.get_running_loop().time() < deadline:
            if await self.poll() is not None:
                return  # the hub reports the exit
            try:
                _, writer = await asyncio.open_connection(ip or "127.0.0.1", port)
            except OSError:
                await asyncio.sleep(self.ready_poll_interval)
                continue
            writer.close()
            return

    def get_args(self):
        """The sessions' JupyterLab arguments, and root allowed when the hub runs as root."""
        args = super().get_args()
        if os.geteuid() == 0 and not self.isolation.enabled:
            # without isolation sessions run as the hub's own user, which may be root
            args.append("--ServerApp.allow_root=True")
        return args

    def get_env(self):
        """JupyterHub's environment plus the workbench variables of docs/architecture.md."""
        env = super().get_env()
        env.update(self.workbench_env())
        if self.enforce_limits:
            env.update(limits.limits_env(self._resources, self._cpus()))
        return env

    def make_preexec_fn(self, name):
        """Enter the sandbox (with `isolation`), prepare the home directory, then (with
        `enforce_limits`) apply the profile."""
        prepare_home = super().make_preexec_fn(name)
        if self._sandbox is not None:
            policy, then = self._sandbox, prepare_home

            def prepare_home():
                enter(policy)
                then()

        if not self.enforce_limits:
            return prepare_home
        return limits.make_limits_preexec(self._resources.memory, self._cpus(), prepare_home)
