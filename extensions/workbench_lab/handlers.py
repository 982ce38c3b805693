"""The `/workbench/` REST handlers of the session's Jupyter server."""

import json

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
