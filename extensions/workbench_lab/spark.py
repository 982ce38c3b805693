"""Spark progress and the Spark UI, served by the session's Jupyter server.

Each Spark application started in the session registers itself as `<registry>/<app_id>.json`
= `{"port", "app_id", "pid", "ui_url"}`, registry = `workbench.spark.registry_dir()`.
Only applications whose `pid` is alive count; stale files are removed.

`GET /workbench/spark/applications` answers, from Spark's own REST API:

    {"applications": [{
        "app_id": "local-1700000000000",
        "port": 4040,
        "ui": "<base_url>workbench/spark/ui/4040/",
        "reachable": true,          # false, without the counts, when the UI does not answer
        "jobs": {"running": 1, "succeeded": 3, "failed": 0,
                 "active": [{"jobId": 3, "name": "count at …", "stageIds": [4],
                             "numTasks": 8, "numCompletedTasks": 2,
                             "numActiveTasks": 2, "numFailedTasks": 0}]},
        "stages": {"active": 1, "complete": 3, "pending": 0, "failed": 0},
        "executors": {"count": 1, "active_tasks": 2},   # count includes the driver
    }]}

`GET /workbench/spark/ui/<port>/<path>` proxies the Spark UI of a registered application
to `http://127.0.0.1:<port>/<path>`; any other port answers 404.
"""

import asyncio
import contextlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from tornado import web

from workbench.spark import registry_dir, ui_path

from .handlers import WorkbenchHandler

REST_TIMEOUT = httpx.Timeout(5.0)
PROXY_TIMEOUT = httpx.Timeout(30.0, connect=2.0)
COPIED_HEADERS = ("Content-Type", "Cache-Control", "Last-Modified", "ETag")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_applications(registry):
    """The registered applications whose process is alive; removes the files of dead ones."""
    applications = []
    for path in sorted(Path(registry).glob("*.json")):
        try:
            entry = json.loads(path.read_text())
            port, pid = int(entry["port"]), int(entry["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _pid_alive(pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        applications.append({**entry, "port": port, "pid": pid})
    return applications


def summarize(jobs, stages, executors):
    """Progress counts from Spark's `/jobs`, `/stages` and `/executors` REST answers."""

    def count(items, status):
        return sum(1 for item in items if item.get("status") == status)

    task_keys = ("numTasks", "numCompletedTasks", "numActiveTasks", "numFailedTasks")
    active = [
        {
            "jobId": job["jobId"],
            "name": job.get("name", ""),
            "stageIds": job.get("stageIds", []),
            **{key: job.get(key, 0) for key in task_keys},
        }
        for job in jobs
        if job.get("status") == "RUNNING"
    ]
    return {
        "jobs": {
            "running": len(active),
            "succeeded": count(jobs, "SUCCEEDED"),
            "failed": count(jobs, "FAILED"),
            "active": sorted(active, key=lambda job: job["jobId"]),
        },
        "stages": {
            "active": count(stages, "ACTIVE"),
            "complete": count(stages, "COMPLETE"),
            "pending": count(stages, "PENDING"),
            "failed": count(stages, "FAILED"),
        },
        "executors": {
            "count": len(executors),
            "active_tasks": sum(e.get("activeTasks", 0) for e in executors),
        },
    }


class SparkHandler(WorkbenchHandler):
    """Base for the Spark handlers: the registry and the shared HTTP client."""

    @property
    def client(self):
        return self.extensionapp.upstream.client

    def live_applications(self):
        return live_applications(registry_dir())


class ApplicationsHandler(SparkHandler):
    """`GET /workbench/spark/applications`: the session's live Spark applications."""

    async def _progress(self, application):
        base = f"http://127.0.0.1:{application['port']}/api/v1/applications/{application['app_id']}"
        try:
            responses = await asyncio.gather(
                *(
                    self.client.get(f"{base}/{what}", timeout=REST_TIMEOUT)
                    for what in ("jobs", "stages", "executors")
                )
            )
            for response in responses:
                response.raise_for_status()
            return {"reachable": True, **summarize(*(r.json() for r in responses))}
        except (httpx.HTTPError, ValueError) as e:
            self.log.info("workbench: Spark UI of %s unreachable: %r", application["app_id"], e)
            return {"reachable": False}

    @web.authenticated
    async def get(self):
        applications = self.live_applications()
        progress = await asyncio.gather(*(self._progress(a) for a in applications))
        self.write_json(
            {
                "applications": [
                    {
                        "app_id": a["app_id"],
                        "port": a["port"],
                        "ui": ui_path(self.base_url, a["port"]),
                        **p,
                    }
                    for a, p in zip(applications, progress, strict=True)
                ]
            }
        )


class UIProxyHandler(SparkHandler):
    """`GET|HEAD /workbench/spark/ui/<port>/<path>`: the Spark UI of a registered application.

    Only ports of live registered applications are proxied, always to 127.0.0.1; request
    headers (cookies, tokens) are not forwarded; redirects are rewritten to stay under
    the proxy path.
    """

    @property
    def content_security_policy(self):
        # The Spark UI's pages need their own scripts and styles, which APIHandler forbids.
        return super(WorkbenchHandler, self).content_security_policy.split("; default-src")[0]

    def _rewrite_location(self, location, prefix):
        parts = urlsplit(location)
        path = parts.path if parts.path.startswith(prefix) else prefix + parts.path.lstrip("/")
        return urlunsplit(("", "", path, parts.query, parts.fragment))

    @web.authenticated
    async def get(self, port, path):
        port = int(port)
        if port not in {a["port"] for a in self.live_applications()}:
            raise web.HTTPError(404, f"no Spark application of this session on port {port}")
        url = f"http://127.0.0.1:{port}/{path}"
        if self.request.query:
            url += f"?{self.request.query}"
        request = self.client.build_request(self.request.method, url, timeout=PROXY_TIMEOUT)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise web.HTTPError(502, f"the Spark UI on port {port} did not answer: {e}") from e
        try:
            self.set_status(response.status_code)
            for name in COPIED_HEADERS:
                if name in response.headers:
                    self.set_header(name, response.headers[name])
            if "Location" in response.headers:
                prefix = ui_path(self.base_url, port)
                self.set_header(
                    "Location", self._rewrite_location(response.headers["Location"], prefix)
                )
            async for chunk in response.aiter_bytes():
                self.write(chunk)
                await self.flush()
        finally:
            await response.aclose()
        self.finish(set_content_type=response.headers.get("Content-Type", "text/plain"))

    head = get
