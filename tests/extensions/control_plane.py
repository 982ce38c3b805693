"""A test double of the control plane's project routes and the hub's `GET /user`.

The real control plane is tested in tests/hub; here a small tornado app on a loopback port,
run in its own thread so that both the async server extension and the synchronous SDK can
call it, answers the few routes a session uses, with the contract's shapes and errors.
"""

import asyncio
import threading

import tornado.httpserver
import tornado.testing
import tornado.web

API_PREFIX = "/services/workbench/api/v1"
TOKEN = "session-token-4f1c"
USER = "alice"


class _Handler(tornado.web.RequestHandler):
    def initialize(self, double):
        self.double = double

    def prepare(self):
        self.double.requests.append((self.request.path, self.request.headers.get("Authorization")))
        if self.request.headers.get("Authorization") != f"token {TOKEN}":
            self.fail(403, "a token with custom:workbench:use is required")
        elif self.double.failure and self.request.path.startswith(API_PREFIX):
            self.fail(*self.double.failure)

    def fail(self, status, message):
        self.set_status(status)
        self.finish({"status": status, "message": message})

    def project_or_404(self, name):
        if name not in self.double.projects:
            self.fail(404, f"no project named {name!r}")
            return None
        return self.double.projects[name]


class _ProjectList(_Handler):
    def get(self):
        self.finish({"projects": list(self.double.projects.values())})


class _Project(_Handler):
    def get(self, name):
        if project := self.project_or_404(name):
            self.finish(project)


class _Sessions(_Handler):
    def get(self, name):
        if self.project_or_404(name):
            self.finish({"sessions": self.double.sessions.get(name, [])})


class _HubUser(_Handler):
    def get(self):
        model = {"kind": "user", "name": USER}
        if self.double.hub_servers is not None:
            model["servers"] = self.double.hub_servers
        self.finish(model)


class ControlPlaneDouble:
    """The routes and their state. Tests set `projects`, `sessions`, `hub_servers`, `failure`."""

    def __init__(self):
        self.url = ""
        self.reset()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def api_url(self):
        return self.url + API_PREFIX

    @property
    def hub_api_url(self):
        return self.url + "/hub/api"

    def reset(self):
        self.projects = {}
        self.sessions = {}
        # None plays a token without read:users:servers: the hub omits "servers".
        self.hub_servers = None
        self.failure = None
        self.requests = []

    def add_project(self, name, role="contributor"):
        self.projects[name] = {
            "name": name,
            "description": f"the {name} project",
            "owner": {"kind": "user", "name": USER},
            "visibility": "private",
            "created": "2026-01-01T00:00:00+00:00",
            "updated": "2026-01-01T00:00:00+00:00",
            "role": role,
            "path": f"/srv/workbench/projects/{name}",
        }

    def start(self):
        sock, port = tornado.testing.bind_unused_port()
        self.url = f"http://127.0.0.1:{port}"
        kwargs = {"double": self}
        app = tornado.web.Application(
            [
                (API_PREFIX + r"/projects", _ProjectList, kwargs),
                (API_PREFIX + r"/projects/([^/]+)", _Project, kwargs),
                (API_PREFIX + r"/projects/([^/]+)/sessions", _Sessions, kwargs),
                (r"/hub/api/user", _HubUser, kwargs),
            ]
        )

        async def serve():
            self._server = tornado.httpserver.HTTPServer(app)
            self._server.add_socket(sock)

        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop).result()
        return self

    def stop(self):
        self._loop.call_soon_threadsafe(self._server.stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
