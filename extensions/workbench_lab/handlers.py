"""The `/workbench/` REST handlers of the session's Jupyter server."""

import json
import re

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web


class WorkbenchHandler(ExtensionHandlerMixin, APIHandler):
    """Base for `/workbench/` handlers: authenticated, JSON in and out."""

    def write_json(self, model):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model))


class ContextHandler(WorkbenchHandler):
    """`GET /workbench/context`: which project this session is for and what it may do."""

    @web.authenticated
    async def get(self):
        app = self.extensionapp
        self.write_json(
            {
                "project": app.project,
                "read_only": app.read_only,
                "api_url": app.api_url,
                "user": app.user,
            }
        )


class ProjectsHandler(WorkbenchHandler):
    """`GET /workbench/projects`: the user's projects, each with `running` and `current`."""

    @web.authenticated
    async def get(self):
        app = self.extensionapp
        upstream = app.upstream
        projects = (await upstream.api_get("/projects"))["projects"]
        running = await upstream.running_projects(app.user, [p["name"] for p in projects])
        for project in projects:
            project["running"] = project["name"] in running
            project["current"] = project["name"] == app.project
        self.write_json({"projects": projects})


#: Control-plane paths the Workbench panels may reach through the session (`ForwardHandler`).
FORWARDED = re.compile(
    r"^/(templates|profiles|projects"
    r"|projects/[^/]+(/sessions|/collaborators(/[^/]+)?)?)$"
)


class ForwardHandler(WorkbenchHandler):
    """`/workbench/api/v1/<path>`: the Workbench panels' calls to the control plane.

    The browser reaches the session's server (cookie and XSRF token, checked by Jupyter
    Server); the session forwards the call with its own token, as the session's user. Only the
    user the session belongs to may use it, and only the paths in `FORWARDED`. The control
    plane's answer (status and JSON error with `field`) is relayed unchanged.
    """

    async def _forward(self):
        app = self.extensionapp
        user = self.current_user
        name = getattr(user, "username", None) or getattr(user, "name", None)
        if app.user and name != app.user:
            raise web.HTTPError(403, "only the session's owner may change projects from it")
        # the raw (still percent-encoded) path: a name holding "%2F" stays one segment
        raw = self.request.path
        path = raw[raw.index("/workbench/api/v1/") + len("/workbench/api/v1") :]
        if not FORWARDED.match(path):
            raise web.HTTPError(404, f"{path} is not forwarded")
        body = self.request.body if self.request.method in ("POST", "PUT", "PATCH") else None
        response = await app.upstream.api_forward(
            self.request.method, path, self.request.query, body or None
        )
        self.set_status(response.status_code)
        if response.status_code == 204:
            self.finish()
            return
        self.set_header("Content-Type", "application/json")
        self.finish(response.content)

    @web.authenticated
    async def get(self, _path):
        await self._forward()

    @web.authenticated
    async def post(self, _path):
        await self._forward()

    @web.authenticated
    async def put(self, _path):
        await self._forward()

    @web.authenticated
    async def patch(self, _path):
        await self._forward()

    @web.authenticated
    async def delete(self, _path):
        await self._forward()
