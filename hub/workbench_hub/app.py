"""The control plane service: a traitlets Application serving the REST API under the hub."""

import asyncio
import gc
import hmac
import logging
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import (
    Any,
    Float,
    Instance,
    Int,
    List,
    Set,
    TraitError,
    Type,
    Unicode,
    default,
    validate,
)
from traitlets.config import Application

from workbench_hub import __version__, redact
from workbench_hub.db import Database, SchemaError
from workbench_hub.handlers import api_handlers
from workbench_hub.handlers.base import NotFoundHandler
from workbench_hub.handlers.openapi import openapi_document
from workbench_hub.handlers.pages import HomeHandler
from workbench_hub.hubapi import HubClient
from workbench_hub.jobs.engine import JobEngine
from workbench_hub.listing import ProjectListingCache
from workbench_hub.models.builder import ModelBuilder
from workbench_hub.models.metrics_store import MetricsStore
from workbench_hub.models.supervisor import ModelSupervisor
from workbench_hub.profiles import InvalidProfile, parse_profiles
from workbench_hub.projects import project_path
from workbench_hub.runtime.local import LocalProcessRuntime


def _service_url() -> str:
    return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8082")


class WorkbenchService(Application):
    """Jupyter Workbench control plane, run by JupyterHub as the managed service `workbench`."""

    name = "workbench-service"
    version = __version__
    description = __doc__

    aliases = {
        "config": "WorkbenchService.config_file",
        "db-url": "WorkbenchService.db_url",
        "project-root": "WorkbenchService.project_root",
        "log-level": "Application.log_level",
    }

    config_file = Unicode(
        "",
        help="""A Python configuration file (`c.WorkbenchService.… = …`) loaded at start.
        Empty: load nothing.""",
    ).tag(config=True)

    data_dir = Unicode(
        help="""Directory for the control plane's own state: the default SQLite database and
        project root live here. Default: ./workbench-data under the working directory.""",
    ).tag(config=True)

    @default("data_dir")
    def _data_dir_default(self):
        return str(Path.cwd() / "workbench-data")

    db_url = Unicode(
        help="""SQLAlchemy URL of the workbench database: `sqlite:////abs/path.sqlite` or
        `postgresql+psycopg://user:password@host/db`. The async driver is chosen
        automatically. The schema must be at the newest revision: `workbench upgrade-db`.
        Default: SQLite file workbench.sqlite in data_dir.""",
    ).tag(config=True)

    db_url_file = Unicode(
        "",
        help="""File holding `db_url` (one line), read when db_url is not set: a URL with a
        password then appears on no command line. `workbench up` writes
        `<data_dir>/secrets/db-url` (mode 0600).""",
    ).tag(config=True)

    @default("db_url")
    def _db_url_default(self):
        if self.db_url_file:
            return Path(self.db_url_file).read_text().strip()
        return f"sqlite:///{Path(self.data_dir).resolve() / 'workbench.sqlite'}"

    project_root = Unicode(
        help="""Directory under which each project has its own directory <project_root>/<name>.
        Created if missing. Default: data_dir/projects.""",
    ).tag(config=True)

    @default("project_root")
    def _project_root_default(self):
        return str(Path(self.data_dir) / "projects")

    @validate("project_root")
    def _absolute_project_root(self, proposal):
        return str(Path(proposal.value).expanduser().resolve())

    resource_profiles = List(
        Any(),
        [
            {
                "name": "small",
                "display_name": "Small: 1 CPU, 2 GiB",
                "cpu": 1,
                "memory": 2 * 1024**3,
                "gpu": 0,
                "groups": [],
            }
        ],
        help="""Resource profiles offered when starting a session, a list of dicts:
        `name` (DNS label), `display_name`, `cpu` (cores, may be fractional), `memory` (bytes
        or a size like "512M", "2G"; 1024-based), `gpu` (count, default 0) and `groups`
        (hub groups allowed to use it; empty: everyone). Invalid entries stop the service
        at start with a message naming the profile.""",
    ).tag(config=True)

    @validate("resource_profiles")
    def _parse_profiles(self, proposal):
        try:
            return parse_profiles(proposal.value)
        except InvalidProfile as e:
            raise TraitError(f"WorkbenchService.resource_profiles: {e}") from None

    public_hub_url = Unicode(
        help="""Public URL of the hub as users reach it (e.g. https://workbench.example.org),
        used in URLs given to sessions. Default: $JUPYTERHUB_PUBLIC_HUB_URL or empty.""",
    ).tag(config=True)

    @default("public_hub_url")
    def _public_hub_url_default(self):
        return os.environ.get("JUPYTERHUB_PUBLIC_HUB_URL", "")

    ip = Unicode(help="Address to listen on. Default: the host of $JUPYTERHUB_SERVICE_URL.").tag(
        config=True
    )

    @default("ip")
    def _ip_default(self):
        return urlsplit(_service_url()).hostname or "127.0.0.1"

    port = Int(help="Port to listen on. Default: the port of $JUPYTERHUB_SERVICE_URL.").tag(
        config=True
    )

    @default("port")
    def _port_default(self):
        return urlsplit(_service_url()).port or 8082

    service_prefix = Unicode(
        help="URL prefix the hub's proxy routes to this service. Default: "
        "$JUPYTERHUB_SERVICE_PREFIX or /services/workbench/.",
    ).tag(config=True)

    @default("service_prefix")
    def _service_prefix_default(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/workbench/")

    service_name = Unicode(
        help="Name of this service in the hub; tokens of this service may call internal "
        "routes. Default: $JUPYTERHUB_SERVICE_NAME or workbench.",
    ).tag(config=True)

    @default("service_name")
    def _service_name_default(self):
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "workbench")

    admin_roles = Set(
        Unicode(),
        {"workbench-admin"},
        help="""Hub roles holding custom:workbench:admin: their members are workbench admins
        when the service looks a user up (spawn options for the spawner). A request is judged
        by its token's scopes alone. Hub admins are members of workbench-admin
        (hubconfig.follow_hub_admins); add any other role you give the scope.""",
    ).tag(config=True)

    auth_cache_seconds = Int(
        5,
        min=1,
        help="""Seconds the service keeps the hub's answer about a token or OAuth cookie
        (who it is, its scopes): a revoked or expired token stops working at most this long
        after. At least 1 (JupyterHub's HubAuth would take 0 as "forever").""",
    ).tag(config=True)

    page_size = Int(
        200,
        min=1,
        max=1000,
        help="""How many items a list endpoint answers when the request gives no `limit`
        (at most 1000, the largest `limit` a request may give). The answer's `next` names
        the following page (docs/architecture.md, "Pagination").""",
    ).tag(config=True)

    git_url_schemes = List(
        Unicode(),
        ["https", "ssh", "git"],
        help="""Transports allowed for creating a project from git_url. Add "file" to allow
        cloning repositories from the workbench host's file system (any repository the
        service can read), or "http" for unencrypted servers.""",
    ).tag(config=True)

    git_clone_timeout = Float(
        300, help="Seconds a git clone may take before it is stopped and the project refused."
    ).tag(config=True)

    hub_cache_seconds = Float(
        30, help="Seconds to cache users' group memberships read from the hub."
    ).tag(config=True)

    runtime_class = Type(
        "workbench_hub.runtime.local.LocalProcessRuntime",
        klass="workbench_hub.runtime.base.Runtime",
        help="""Runtime that runs workloads (job runs, model replicas); see docs/runtime.md.""",
    ).tag(config=True)

    db = Instance(Database, allow_none=True)
    hub = Instance(HubClient, allow_none=True)
    runtime = Any(None)
    engine = Any(None, help="the JobEngine (workbench_hub.jobs.engine), created at start")
    builder = Any(None, help="the ModelBuilder (workbench_hub.models.builder), created at start")
    metrics_store = Any(None, help="the MetricsStore of model metrics, created at start")
    supervisor = Any(None, help="the ModelSupervisor of deployments, created at start")

    @default("log_level")
    def _log_level_default(self):
        return logging.INFO

    def project_path(self, name: str) -> Path:
        """The directory of project `name` under project_root."""
        return project_path(self.project_root, name)

    def initialize(self, argv=None) -> None:
        redact.install()
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            self.update_config(self.cli_config)

    def make_app(self) -> web.Application:
        prefix = url_path_join(self.service_prefix, "/")
        api_prefix = url_path_join(prefix, "api/v1/")
        # the singleton: HubOAuthCallbackHandler finds its OAuth states there
        hub_auth = HubOAuth.instance(parent=self, cache_max_age=self.auth_cache_seconds)
        routes = [
            *api_handlers(api_prefix),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
            (prefix, HomeHandler),
            (api_prefix + ".*", NotFoundHandler),
        ]
        return web.Application(
            routes,
            service=self,
            db=self.db,
            hub=self.hub,
            runtime=self.runtime,
            jobs=self.engine,
            builder=self.builder,
            model_metrics=self.metrics_store,
            models=self.supervisor,
            hub_auth=hub_auth,
            listing_cache=ProjectListingCache(ttl=self.hub_cache_seconds),
            # stable across restarts, so browsers keep their OAuth cookie
            cookie_secret=hmac.digest(hub_auth.api_token.encode(), b"cookie-secret", "sha256"),
            default_handler_class=NotFoundHandler,
            log_function=self._log_request,
        )

    def _log_request(self, handler: web.RequestHandler) -> None:
        status = handler.get_status()
        if status >= 500:
            level = self.log.error
        elif status >= 400:
            level = self.log.warning
        elif handler.request.method in ("GET", "HEAD"):
            level = self.log.debug  # successful reads: a log line each would cost more than them
        else:
            level = self.log.info
        # the path only: query strings may carry ?token=
        level(
            "%d %s %s %.1fms",
            status,
            handler.request.method,
            handler.request.path,
            1000 * handler.request.request_time(),
        )

    def _make_runtime(self):
        """The configured runtime; a local runtime keeps its state under data_dir/runtime.

        No fallback: a runtime that cannot be loaded stops the service at start.
        """
        runtime_class = self.runtime_class
        kwargs = {}
        if issubclass(runtime_class, LocalProcessRuntime) and not self._configured(
            runtime_class, "state_dir"
        ):
            kwargs["state_dir"] = str(Path(self.data_dir).resolve() / "runtime")
        return runtime_class(parent=self, **kwargs)

    def _configured(self, cls: type, trait: str) -> bool:
        """Whether the configuration sets `trait` of `cls` or one of its base classes."""
        return any(
            trait in self.config.get(klass.__name__, {})
            for klass in cls.mro()
            if isinstance(klass, type)
        )

    async def start_async(self) -> None:
        self.db = Database(self.db_url)
        try:
            await self.db.check_schema()
        except SchemaError as e:
            self.log.error("Refusing to start: %s", e)
            await self.db.dispose()
            self.exit(1)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: Path(self.project_root).mkdir(parents=True, exist_ok=True)
        )
        openapi_document()
        self.hub = HubClient(cache_seconds=self.hub_cache_seconds)
        self.runtime = self._make_runtime()
        await self.runtime.open()
        self.engine = JobEngine(
            parent=self,
            db=self.db,
            runtime=self.runtime,
            hub=self.hub,
            project_root=self.project_root,
        )
        await self.engine.start()
        self.metrics_store = MetricsStore(parent=self, db=self.db)
        await self.metrics_store.start()
        self.builder = ModelBuilder(
            parent=self,
            db=self.db,
            runtime=self.runtime,
            project_root=self.project_root,
            data_dir=self.data_dir,
        )
        await self.builder.start()
        self.supervisor = ModelSupervisor(
            parent=self, db=self.db, runtime=self.runtime, builder=self.builder
        )
        await self.supervisor.start()
        # everything imported and set up so far lives as long as the service: keep it out of
        # the garbage collector's full passes, which otherwise pause requests for tens of ms
        gc.freeze()
        server = HTTPServer(self.make_app(), xheaders=True)
        server.listen(self.port, self.ip)
        self.log.info(
            "Workbench control plane on http://%s:%i%s", self.ip, self.port, self.service_prefix
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()
        await self.supervisor.stop()
        await self.builder.stop()
        await self.metrics_store.stop()
        await self.engine.stop()
        await self.runtime.close()
        await self.hub.close()
        await self.db.dispose()

    def start(self) -> None:
        asyncio.run(self.start_async())
