"""The `workbench_lab` server extension application."""

import os

import httpx
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from traitlets import Bool, Float, Unicode, default

from .contents import ConfinedContentsManager, ReadOnlyContentsManager
from .handlers import ContextHandler, ForwardHandler, ProjectsHandler
from .spark import ApplicationsHandler, UIProxyHandler
from .upstream import Upstream


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


class WorkbenchLabApp(ExtensionApp):
    """Serve `/workbench/context`, `/workbench/projects` and the session's Spark applications
    (`/workbench/spark/applications`, their UIs under `/workbench/spark/ui/<port>/`) inside a
    workbench session.

    Every trait defaults to the session environment the spawner sets (see
    docs/architecture.md), so a session needs no configuration file.
    """

    name = "workbench_lab"

    project = Unicode(
        help="""Name of the project this session belongs to.

        Defaults to $WORKBENCH_PROJECT. Empty outside a workbench session.
        """,
    ).tag(config=True)

    @default("project")
    def _default_project(self):
        return os.environ.get("WORKBENCH_PROJECT", "")

    api_url = Unicode(
        help="""Base URL of the workbench control plane REST API,
        e.g. http://127.0.0.1:8000/services/workbench/api/v1.

        Defaults to $WORKBENCH_API_URL.
        """,
    ).tag(config=True)

    @default("api_url")
    def _default_api_url(self):
        return os.environ.get("WORKBENCH_API_URL", "")

    api_token = Unicode(
        help="""Token sent as `Authorization: token …` to the control plane and the hub API.

        Defaults to $WORKBENCH_TOKEN, then $JUPYTERHUB_API_TOKEN. Never logged.
        """,
    ).tag(config=True)

    @default("api_token")
    def _default_api_token(self):
        return os.environ.get("WORKBENCH_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")

    read_only = Bool(
        help="""Whether the project's files are read-only in this session (viewers and
        operators). When true, the extension installs
        `workbench_lab.contents.ReadOnlyContentsManager` as the server's contents manager;
        otherwise `workbench_lab.contents.ConfinedContentsManager`. Both refuse paths that
        lead outside the project directory through a symbolic link.

        Defaults to $WORKBENCH_READ_ONLY (`1`, `true` or `yes`).
        """,
    ).tag(config=True)

    @default("read_only")
    def _default_read_only(self):
        return _env_flag("WORKBENCH_READ_ONLY")

    hub_api_url = Unicode(
        help="""JupyterHub REST API URL, used to learn which of the user's sessions are
        running. When it is empty or the token may not read the user's servers, the
        control plane's `GET /projects/{name}/sessions` is asked instead.

        Defaults to $JUPYTERHUB_API_URL.
        """,
    ).tag(config=True)

    @default("hub_api_url")
    def _default_hub_api_url(self):
        return os.environ.get("JUPYTERHUB_API_URL", "")

    user = Unicode(
        help="""Name of the JupyterHub user who owns this session. Defaults to $JUPYTERHUB_USER.
        """,
    ).tag(config=True)

    @default("user")
    def _default_user(self):
        return os.environ.get("JUPYTERHUB_USER", "")

    request_timeout = Float(
        10.0,
        help="Seconds to wait for the control plane or the hub API before answering 502.",
    ).tag(config=True)

    def _link_jupyter_server_extension(self, serverapp):
        # Linking runs before the server creates its contents manager,
        # so this is the last moment the manager class can be chosen.
        super()._link_jupyter_server_extension(serverapp)
        configured = serverapp.contents_manager_class
        wanted = ReadOnlyContentsManager if self.read_only else ConfinedContentsManager
        if self.read_only:
            self.log.info("workbench: project files are read-only in this session")
        if issubclass(configured, wanted):
            return
        if configured is not AsyncLargeFileManager:
            self.log.warning(
                "workbench: replacing contents manager %s with %s",
                configured.__name__,
                wanted.__name__,
            )
        serverapp.contents_manager_class = wanted

    def initialize_settings(self):
        self.upstream = Upstream(
            client=httpx.AsyncClient(timeout=self.request_timeout),
            api_url=self.api_url,
            hub_api_url=self.hub_api_url,
            token=self.api_token,
        )

    def initialize_handlers(self):
        self.handlers.extend(
            [
                (r"/workbench/context", ContextHandler),
                (r"/workbench/projects", ProjectsHandler),
                (r"/workbench/api/v1/(.*)", ForwardHandler),
                (r"/workbench/spark/applications", ApplicationsHandler),
                (r"/workbench/spark/ui/(\d+)/(.*)", UIProxyHandler),
            ]
        )

    async def stop_extension(self):
        await self.upstream.client.aclose()
