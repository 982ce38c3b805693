"""`WorkbenchLocalSpawner`: a workbench session as a local process, one named server per project."""

import asyncio
import os
import shlex
import sys

from jupyterhub.spawner import SimpleLocalProcessSpawner, SpawnException
from jupyterhub.utils import random_port, url_path_join
from traitlets import Bool, Float, Unicode, default

from . import limits
from .client import ProjectAccess, SpawnOptions, WorkbenchAPIError, WorkbenchClient
from .form import options_from_form, render_form
from .prewarm import PrewarmError, shared_server
from .profiles import Profile, ProfileError, select_profile

DEFAULT_SERVER_MESSAGE = (
    "Sessions run per project: start a named server whose name is the project's name "
    "(from the Workbench, or /hub/spawn/<user>/<project>)."
)


async def workbench_options_form(spawner: "WorkbenchLocalSpawner") -> str:
    """The spawn form for `spawner`'s server, from the user's current spawn-options."""
    options = await spawner.fetch_spawn_options()
    spawn_url = url_path_join(spawner.hub.base_url, "spawn", spawner.user.escaped_name)
    return render_form(spawner.name, options, spawn_url)


def user_options_applied_in_start(spawner: "WorkbenchLocalSpawner", user_options: dict) -> None:
    """Nothing to do before start: ``start()`` checks and applies ``project`` and ``profile``
    against fresh spawn-options (this hook only stops JupyterHub warning they are unhandled)."""


class WorkbenchLocalSpawner(SimpleLocalProcessSpawner):
    """Start a workbench session: JupyterLab in the project directory, with the project's
    role and the chosen resource profile applied.

    Every session runs as the hub's own unix user (embedded mode has no system users), so the
    limits are guard rails against accidents, not isolation between users.
    """

    workbench_api_url = Unicode(
        "",
        help="""Base URL of the control plane API as the hub reaches it, e.g.
        ``http://127.0.0.1:8081/services/workbench/api/v1``. Used for spawn-options and audit
        events. Set by the workbench hub configuration.""",
    ).tag(config=True)

    workbench_api_token = Unicode(
        "",
        help="""API token of the ``workbench`` service, sent to the control plane to read a
        user's spawn-options and to record audit events. Never logged.""",
    ).tag(config=True)

    public_api_url = Unicode(
        help="""Control plane API URL as sessions reach it, given to them as
        ``WORKBENCH_API_URL`` and ``CDSW_API_URL``, e.g.
        ``http://127.0.0.1:8000/services/workbench/api/v1``. Defaults to `workbench_api_url`.""",
    ).tag(config=True)

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

    project = Unicode("", help="Project of the running session (kept in the spawner state).")
    profile = Unicode("", help="Resource profile of the running session (kept in the state).")

    @default("public_api_url")
    def _default_public_api_url(self):
        return self.workbench_api_url

    @default("server_token_scopes")
    def _default_server_token_scopes(self):
        return [
            "users:activity!user",
            "access:servers!server",
            "read:servers!user",
            "access:services!service=workbench",
            "custom:workbench:use",
        ]

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

    @default("options_form")
    def _default_options_form(self):
        return workbench_options_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return user_options_applied_in_start

    @default("options_from_form")
    def _default_options_from_form(self):
        return options_from_form

    _access: ProjectAccess | None = None
    _resources: Profile | None = None
    _audit_task: asyncio.Task | None = None

    def _client(self) -> WorkbenchClient:
        if not self.workbench_api_url:
            raise SpawnException(
                "The workbench is misconfigured: WorkbenchLocalSpawner.workbench_api_url is unset.",
                reason="misconfigured",
                status_code=500,
            )
        return WorkbenchClient(self.workbench_api_url, self.workbench_api_token)

    async def fetch_spawn_options(self) -> SpawnOptions:
        """The user's projects and profiles, as the control plane says now."""
        try:
            return await self._client().spawn_options(self.user.name)
        except WorkbenchAPIError as e:
            raise SpawnException(
                f"Cannot read your projects from the workbench: {e.message}",
                reason="workbench_unavailable",
                status_code=503,
            ) from None

    def _option(self, key: str) -> str:
        value = self.user_options.get(key) or ""
        if not isinstance(value, str):
            raise SpawnException(f"{key} must be a name, got {value!r}", reason="user_options")
        return value

    async def _authorize(self) -> tuple[ProjectAccess, Profile]:
        """Check the request against fresh spawn-options; the refusal says what to do."""
        if not self.name:
            raise SpawnException(DEFAULT_SERVER_MESSAGE, reason="default_server")
        requested = self._option("project") or self.name
        if requested != self.name:
            raise SpawnException(
                f"A session's server name is its project name: server {self.name!r} "
                f"cannot run project {requested!r}.",
                reason="project_mismatch",
            )
        options = await self.fetch_spawn_options()
        access = options.project(self.name)
        if access is None:
            raise SpawnException(
                f"You have no role on project {self.name}", reason="no_role", status_code=403
            )
        try:
            profile = select_profile(list(options.profiles), self._option("profile"))
        except ProfileError as e:
            raise SpawnException(str(e), reason="profile", status_code=403) from None
        return access, profile

    def _cpus(self) -> set[int]:
        return limits.choose_cpus(self._resources.cores, f"{self.user.name}/{self._access.name}")

    async def start(self):
        """Authorize, then start JupyterLab in the project directory with the profile's limits."""
        self._access, self._resources = await self._authorize()
        self.notebook_dir = self._access.path.replace("{", "{{").replace("}", "}}")
        self.mem_limit = self._resources.memory
        self.cpu_limit = self._resources.cpu
        address = await self._start_prewarmed() if self._prewarm_module() else None
        if address is None:
            address = await super().start()
        await self._wait_listening(*address)
        self.project, self.profile = self._access.name, self._resources.name
        self._audit_task = asyncio.create_task(self._audit("session.started"))
        return address

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

    async def stop(self, now=False):
        """Stop the process; record ``session.stopped`` if this session had started."""
        await super().stop(now=now)
        if not self.project:
            return
        if self._audit_task is not None:
            await self._audit_task
        await self._audit("session.stopped")
        self.project = self.profile = ""

    async def _audit(self, action: str) -> None:
        """Post an audit event; a failure is logged and never stops a session."""
        try:
            await self._client().audit(
                actor=self.user.name,
                action=action,
                object_type="session",
                object_id=f"{self.user.name}/{self.project}",
                detail={"profile": self.profile},
            )
        except (WorkbenchAPIError, SpawnException) as e:
            self.log.warning("Could not record %s for %s: %s", action, self._log_name, e)

    def get_args(self):
        """JupyterLab arguments: the workbench extension, no terminals when read-only."""
        args = [*super().get_args(), "--ServerApp.jpserver_extensions=workbench_lab=True"]
        if self._access.read_only:
            args.append("--ServerApp.terminals_enabled=False")
        if os.geteuid() == 0:
            # embedded mode runs sessions as the hub's own user, which may be root
            args.append("--ServerApp.allow_root=True")
        return args

    def get_env(self):
        """JupyterHub's environment plus the workbench variables of docs/architecture.md."""
        env = super().get_env()
        env.update(
            WORKBENCH_API_URL=self.public_api_url,
            WORKBENCH_PROJECT=self._access.name,
            WORKBENCH_TOKEN=self.api_token,
            WORKBENCH_READ_ONLY="1" if self._access.read_only else "0",
            CDSW_PROJECT=self._access.name,
            CDSW_API_URL=self.public_api_url,
        )
        if self.enforce_limits:
            env.update(limits.limits_env(self._resources, self._cpus()))
        return env

    def make_preexec_fn(self, name):
        """Prepare the home directory, then (with `enforce_limits`) apply the profile."""
        prepare_home = super().make_preexec_fn(name)
        if not self.enforce_limits:
            return prepare_home
        return limits.make_limits_preexec(self._resources.memory, self._cpus(), prepare_home)

    def get_state(self):
        """JupyterHub's state plus the running session's project and profile."""
        state = super().get_state()
        if self.project:
            state.update(project=self.project, profile=self.profile)
        return state

    def load_state(self, state):
        """Restore the running session's project and profile after a hub restart."""
        super().load_state(state)
        self.project = state.get("project", "")
        self.profile = state.get("profile", "")
