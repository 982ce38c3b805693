"""Async client of the two control plane routes a spawner uses: spawn-options and audit."""

import asyncio
import weakref
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from .profiles import Profile, ProfileError

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = (
    weakref.WeakKeyDictionary()
)


def _shared_client() -> httpx.AsyncClient:
    """One connection pool per event loop, shared by every spawner."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = httpx.AsyncClient()
    return client


class WorkbenchAPIError(Exception):
    """The control plane refused a request (`status`) or was unreachable (`status` 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ProjectAccess:
    """A project the user may start a session in, with their role on it."""

    name: str
    role: str
    path: str
    read_only: bool


@dataclass(frozen=True)
class SpawnOptions:
    """What a user may start: their projects and the resource profiles open to them."""

    projects: tuple[ProjectAccess, ...]
    profiles: tuple[Profile, ...]

    def project(self, name: str) -> ProjectAccess | None:
        """The project called `name`, or None when the user has no role on it."""
        return next((p for p in self.projects if p.name == name), None)


class WorkbenchClient:
    """Calls the control plane with the workbench service's token (never logged)."""

    def __init__(self, base_url: str, token: str, timeout: float = 10):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    async def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = await _shared_client().request(
                method,
                self.base_url + path,
                headers={"Authorization": f"token {self._token}"},
                timeout=self.timeout,
                **kwargs,
            )
        except httpx.HTTPError as e:
            raise WorkbenchAPIError(
                0, f"the workbench control plane is unreachable ({type(e).__name__})"
            ) from None
        if response.is_error:
            try:
                message = response.json()["message"]
            except (ValueError, KeyError, TypeError):
                message = response.reason_phrase
            raise WorkbenchAPIError(response.status_code, message)
        return response

    async def spawn_options(self, user: str) -> SpawnOptions:
        """``GET /users/{user}/spawn-options``."""
        response = await self._request("GET", f"/users/{quote(user, safe='')}/spawn-options")
        try:
            data = response.json()
            projects = tuple(
                ProjectAccess(p["name"], p["role"], p["path"], bool(p["read_only"]))
                for p in data["projects"]
            )
            profiles = tuple(Profile.from_dict(p) for p in data["profiles"])
        except (ValueError, KeyError, TypeError, ProfileError) as e:
            raise WorkbenchAPIError(
                response.status_code, f"unexpected spawn-options answer: {e}"
            ) from None
        return SpawnOptions(projects, profiles)

    async def audit(
        self,
        *,
        actor: str,
        action: str,
        object_type: str,
        object_id: str,
        outcome: str = "success",
        detail: dict | None = None,
    ) -> None:
        """``POST /audit``: record one event."""
        event = {
            "actor": actor,
            "action": action,
            "object_type": object_type,
            "object_id": object_id,
            "outcome": outcome,
        }
        if detail is not None:
            event["detail"] = detail
        await self._request("POST", "/audit", json=event)
