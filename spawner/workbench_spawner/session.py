"""What every workbench spawner shares: the spawn form, authorization against the control
plane's spawn-options (project and resource profile), audit events and the session state."""

import asyncio

from jupyterhub.spawner import SpawnException
from jupyterhub.utils import url_path_join
from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

from .client import ProjectAccess, SpawnOptions, WorkbenchAPIError, WorkbenchClient
from .form import options_from_form, render_form
from .profiles import Profile, ProfileError, select_profile

DEFAULT_SERVER_MESSAGE = (
    "Sessions run per project: start a named server whose name is the project's name "
    "(from the Workbench, or /hub/spawn/<user>/<project>)."
)


async def workbench_options_form(spawner: "WorkbenchSpawnerMixin") -> str:
    """The spawn form for `spawner`'s server, from the user's current spawn-options."""
    options = await spawner.fetch_spawn_options()
    spawn_url = url_path_join(spawner.hub.base_url, "spawn", spawner.user.escaped_name)
    return render_form(spawner.name, options, spawn_url)


def user_options_applied_in_start(spawner: "WorkbenchSpawnerMixin", user_options: dict) -> None:
    """Nothing to do before start: ``start()`` checks and applies ``project`` and ``profile``
    against fresh spawn-options (this hook only stops JupyterHub warning they are unhandled)."""


class WorkbenchSpawnerMixin(LoggingConfigurable):
    """Base of the workbench spawners (mixed in before JupyterHub's or KubeSpawner's class).

    ``start()`` of a subclass calls :meth:`_authorize` first; it fills ``_access`` (the
    project and the user's role on it) and ``_resources`` (the chosen profile).
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

    @default("options_form")
    def _default_options_form(self):
        return workbench_options_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return user_options_applied_in_start

    @default("options_from_form")
    def _default_options_from_form(self):
        return options_from_form

    _spawn_options: SpawnOptions | None = None
    _access: ProjectAccess | None = None
    _resources: Profile | None = None
    _audit_task: asyncio.Task | None = None

    def _client(self) -> WorkbenchClient:
        if not self.workbench_api_url:
            raise SpawnException(
                "The workbench is misconfigured: the spawner's workbench_api_url is unset.",
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
            home = url_path_join(self.hub.base_url, "home")
            raise SpawnException(
                DEFAULT_SERVER_MESSAGE,
                reason="default_server",
                message_html=f'Sessions run per project: start one from <a href="{home}">your'
                " projects</a>.",
            )
        requested = self._option("project") or self.name
        if requested != self.name:
            raise SpawnException(
                f"A session's server name is its project name: server {self.name!r} "
                f"cannot run project {requested!r}.",
                reason="project_mismatch",
            )
        options = self._spawn_options = await self.fetch_spawn_options()
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

    def _session_started(self) -> None:
        """Remember the running session's project and profile; audit in the background."""
        self.project, self.profile = self._access.name, self._resources.name
        self._audit_task = asyncio.create_task(self._audit("session.started"))

    async def stop(self, now=False):
        """Stop the server; record ``session.stopped`` if this session had started."""
        await super().stop(now=now)
        if not self.project:
            return
        if self._audit_task is not None:
            await self._audit_task
        await self._audit("session.stopped")
        self.project = self.profile = ""

    def get_args(self):
        """JupyterLab arguments: the workbench extension, no terminals when read-only."""
        args = [*super().get_args(), "--ServerApp.jpserver_extensions=workbench_lab=True"]
        if self._access.read_only:
            args.append("--ServerApp.terminals_enabled=False")
        return args

    def workbench_env(self) -> dict[str, str]:
        """The workbench variables of a session (docs/architecture.md)."""
        return {
            "WORKBENCH_API_URL": self.public_api_url,
            "WORKBENCH_PROJECT": self._access.name,
            "WORKBENCH_PROJECT_DIR": self._access.path,
            "WORKBENCH_TOKEN": self.api_token,
            "WORKBENCH_READ_ONLY": "1" if self._access.read_only else "0",
            "CDSW_PROJECT": self._access.name,
            "CDSW_API_URL": self.public_api_url,
        }

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
