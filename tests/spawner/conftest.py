"""Fixtures for the spawner: real spawner objects on JupyterHub's ORM, and a control plane.

The control plane only runs inside a hub, so these tests serve its two documented routes
(``spawn-options`` and ``audit``, docs/architecture.md) from a real tornado server; the
end-to-end tests run the spawner against the real one.
"""

import json
import sys

import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.user import User
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from workbench_spawner import WorkbenchLocalSpawner

SERVICE_TOKEN = "service-secret-token"
GiB = 2**30

#: Stands in for a single-user server: listens on the port the hub assigned, then idles.
LISTENER = """
import os, socket, time, urllib.parse
port = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port
server = socket.create_server(("127.0.0.1", port))
time.sleep(60)
"""


class ControlPlaneRoutes:
    """What the stand-in answers, and the audit events it received."""

    def __init__(self, url: str):
        self.url = url
        self.spawn_options: dict[str, dict] = {}
        self.events: list[dict] = []
        self.audit_status = 201


class _Handler(web.RequestHandler):
    def initialize(self, routes: ControlPlaneRoutes):
        self.routes = routes

    def prepare(self):
        if self.request.headers.get("Authorization") != f"token {SERVICE_TOKEN}":
            self.send_json(403, {"status": 403, "message": "not the workbench service"})
            raise web.Finish()

    def send_json(self, status: int, body: dict):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(body))


class SpawnOptionsHandler(_Handler):
    def get(self, user):
        self.send_json(200, self.routes.spawn_options.get(user, {"projects": [], "profiles": []}))


class AuditHandler(_Handler):
    def post(self):
        status = self.routes.audit_status
        if status != 201:
            self.send_json(status, {"status": status, "message": "audit store down"})
            return
        self.routes.events.append(json.loads(self.request.body))
        self.send_json(201, {})


@pytest.fixture(scope="session")
async def control_plane():
    """A running HTTP server answering spawn-options and audit like the control plane."""
    sock, port = bind_unused_port()
    routes = ControlPlaneRoutes(f"http://127.0.0.1:{port}/services/workbench/api/v1")
    prefix = "/services/workbench/api/v1"
    app = web.Application(
        [
            (prefix + r"/users/([^/]+)/spawn-options", SpawnOptionsHandler, {"routes": routes}),
            (prefix + r"/audit", AuditHandler, {"routes": routes}),
        ]
    )
    server = HTTPServer(app)
    server.add_sockets([sock])
    yield routes
    server.stop()


@pytest.fixture
def routes(control_plane, tmp_path):
    """The control plane with user ana: contributor on demo, viewer on docs; two profiles."""
    control_plane.events.clear()
    control_plane.audit_status = 201
    control_plane.spawn_options = {
        "ana": {
            "projects": [
                {
                    "name": "demo",
                    "role": "contributor",
                    "path": str(tmp_path / "demo"),
                    "read_only": False,
                },
                {
                    "name": "docs",
                    "role": "viewer",
                    "path": str(tmp_path / "docs"),
                    "read_only": True,
                },
            ],
            "profiles": [
                {
                    "name": "small",
                    "display_name": "Small",
                    "cpu": 0.5,
                    "memory": GiB,
                    "gpu": 0,
                    "groups": [],
                },
                {
                    "name": "large",
                    "display_name": "Large",
                    "cpu": 64,
                    "memory": 4 * GiB,
                    "gpu": 1,
                    "groups": ["ml"],
                },
            ],
        }
    }
    for project in ("demo", "docs"):
        (tmp_path / project).mkdir()
    return control_plane


@pytest.fixture
def db():
    """JupyterHub's ORM on an in-memory database with user ana."""
    session = orm.new_session_factory("sqlite:///:memory:")()
    session.add(orm.User(name="ana"))
    session.commit()
    return session


@pytest.fixture
def make_spawner(db, routes, tmp_path):
    """`make_spawner(server_name, user_options=None, **traits)`: a spawner of ana's server."""
    spawners = []

    def make(server_name="demo", user_options=None, **traits):
        orm_user = db.query(orm.User).one()
        if server_name not in orm_user.orm_spawners:
            db.add(orm.Spawner(user=orm_user, name=server_name))
            db.commit()
        settings = {
            "cmd": [sys.executable, "-c", LISTENER],
            "hub": Hub(base_url="/hub/"),
            "workbench_api_url": routes.url,
            "workbench_api_token": SERVICE_TOKEN,
            "public_api_url": "http://public.example:8000/services/workbench/api/v1",
            "home_dir_template": str(tmp_path / "home" / "{username}"),
            "oauth_client_id": f"jupyterhub-user-ana-{server_name}",
            "interrupt_timeout": 2,
            "term_timeout": 2,
            "kill_timeout": 2,
            **traits,
        }
        spawner = User(orm_user, {})._new_spawner(
            server_name, spawner_class=WorkbenchLocalSpawner, **settings
        )
        spawner.api_token = "session-token"
        spawner.user_options = user_options or {}
        spawners.append(spawner)
        return spawner

    yield make
    for spawner in spawners:
        if spawner.proc is not None and spawner.proc.poll() is None:
            spawner.proc.kill()
            spawner.proc.wait()
