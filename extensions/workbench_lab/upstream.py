"""Calls from the session to the workbench control plane and the JupyterHub API."""

import asyncio
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
from tornado import web


@dataclass
class Upstream:
    """The session's view of the control plane (`api_url`) and the hub API (`hub_api_url`)."""

    client: httpx.AsyncClient
    api_url: str
    hub_api_url: str
    token: str = field(repr=False)

    async def _get(self, base, path, what):
        url = base.rstrip("/") + path
        try:
            response = await self.client.get(url, headers={"Authorization": f"token {self.token}"})
        except httpx.HTTPError as e:
            raise web.HTTPError(502, f"could not reach {what} at {url}: {e}") from e
        if response.status_code >= 400:
            raise web.HTTPError(
                502, f"{what} answered {response.status_code}: {_message(response)}"
            )
        try:
            return response.json()
        except ValueError as e:
            raise web.HTTPError(502, f"{what} sent a response that is not JSON") from e

    async def api_get(self, path):
        """GET a control-plane path such as `/projects`; upstream failures raise 502."""
        if not self.api_url:
            raise web.HTTPError(503, "not inside a workbench session: WORKBENCH_API_URL is not set")
        return await self._get(self.api_url, path, "the workbench control plane")

    async def api_forward(self, method, path, query="", body=None):
        """Send a request to the control plane as the session's user; return the raw response.

        Unlike `api_get`, an upstream 4xx/5xx is returned as is (the caller relays the
        server's status, message and field); only an unreachable control plane raises 502.
        """
        if not self.api_url:
            raise web.HTTPError(503, "not inside a workbench session: WORKBENCH_API_URL is not set")
        url = self.api_url.rstrip("/") + path + (f"?{query}" if query else "")
        headers = {"Authorization": f"token {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            return await self.client.request(method, url, headers=headers, content=body)
        except httpx.HTTPError as e:
            raise web.HTTPError(502, f"could not reach the workbench control plane: {e}") from e

    async def running_projects(self, user, projects):
        """Names of `projects` for which `user` has an active (starting or running) session."""
        servers = await self._hub_servers()
        if servers is not None:
            return set(servers) & set(projects)
        listings = await asyncio.gather(
            *(self.api_get(f"/projects/{quote(name, safe='')}/sessions") for name in projects)
        )
        return {
            name
            for name, listing in zip(projects, listings, strict=True)
            if any(session["user"] == user for session in listing["sessions"])
        }

    async def _hub_servers(self):
        """The user's active servers from the hub, or None if the token may not read them."""
        if not self.hub_api_url:
            return None
        try:
            model = await self._get(self.hub_api_url, "/user", "the JupyterHub API")
        except web.HTTPError:
            return None
        return model.get("servers")


def _message(response):
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "no message"
    if isinstance(body, dict) and body.get("message"):
        return body["message"]
    return response.reason_phrase or "no message"
