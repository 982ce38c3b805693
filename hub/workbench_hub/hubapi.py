"""Async client of the JupyterHub REST API, authenticated with the service's own token."""

import asyncio
import os
import time
from urllib.parse import quote

import httpx


class HubAPIError(RuntimeError):
    """JupyterHub answered a request with an unexpected status."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"JupyterHub {method} {path} answered {status}: {message}")
        self.status = status


class HubClient:
    """JupyterHub API calls the control plane needs (users, groups, named servers).

    `api_url` and `token` default to JupyterHub's service environment
    (``JUPYTERHUB_API_URL``, ``JUPYTERHUB_API_TOKEN``). Group lookups are cached for
    `cache_seconds`, so a burst of requests costs one hub call per user.
    """

    def __init__(
        self,
        api_url: str | None = None,
        token: str | None = None,
        cache_seconds: float = 30,
        stop_wait_seconds: float = 60,
    ) -> None:
        self.api_url = (api_url or os.environ.get("JUPYTERHUB_API_URL", "")).rstrip("/")
        token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self.cache_seconds = cache_seconds
        self.stop_wait_seconds = stop_wait_seconds
        self._groups: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._client = httpx.AsyncClient(headers={"Authorization": f"token {token}"}, timeout=30)

    async def _request(
        self, method: str, path: str, allow: tuple[int, ...] = (), **kwargs
    ) -> httpx.Response:
        response = await self._client.request(method, self.api_url + path, **kwargs)
        if response.status_code >= 400 and response.status_code not in (404, *allow):
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise HubAPIError(method, path, response.status_code, message)
        return response

    async def get_user(self, name: str) -> dict | None:
        """The hub's model of user `name` (with stopped servers), or None if there is none."""
        response = await self._request(
            "GET", f"/users/{quote(name, safe='')}", params={"include_stopped_servers": "1"}
        )
        if response.status_code == 404:
            return None
        return response.json()

    async def ensure_user(self, name: str) -> None:
        """Create hub user `name` if there is none (needs ``admin:users``); an existing one is
        left as is. A refusal (say, an invalid name) raises `HubAPIError` with the hub's status."""
        await self._request("POST", f"/users/{quote(name, safe='')}", allow=(409,))
        self._groups.pop(name, None)

    async def user_groups(self, name: str) -> frozenset[str] | None:
        """The groups of user `name` (briefly cached); None if the hub has no such user."""
        now = time.monotonic()
        cached = self._groups.get(name)
        if cached and now - cached[0] < self.cache_seconds:
            return cached[1]
        user = await self.get_user(name)
        groups = None if user is None else frozenset(user.get("groups") or ())
        self._groups[name] = (now, groups)
        return groups

    async def group_exists(self, name: str) -> bool:
        response = await self._request("GET", f"/groups/{quote(name, safe='')}")
        return response.status_code != 404

    async def list_users(self, *, state: str = "", include_stopped: bool = False) -> list[dict]:
        """Every hub user model, following pagination.

        `state="active"` keeps users with running or pending servers; `include_stopped` adds
        stopped named servers to each model's ``servers``.
        """
        users: list[dict] = []
        offset = 0
        params = {"limit": 200}
        if state:
            params["state"] = state
        if include_stopped:
            params["include_stopped_servers"] = "1"
        while True:
            response = await self._request(
                "GET",
                "/users",
                params=params | {"offset": offset},
                headers={"Accept": "application/jupyterhub-pagination+json"},
            )
            body = response.json()
            items = body["items"] if isinstance(body, dict) else body
            users.extend(items)
            next_page = body.get("_pagination", {}).get("next") if isinstance(body, dict) else None
            if not next_page:
                return users
            offset = next_page["offset"]

    async def delete_server(self, user: str, server: str) -> None:
        """Stop and remove the named server `user/server`; a missing one is not an error."""
        path = f"/users/{quote(user, safe='')}/servers/{quote(server, safe='')}"
        response = await self._request("DELETE", path, json={"remove": True})
        if response.status_code == 202:
            await self._wait_removed(user, server)

    async def _wait_removed(self, user: str, server: str) -> None:
        """Wait until the hub no longer lists `user/server` (its stop was pending)."""
        try:
            async with asyncio.timeout(self.stop_wait_seconds):
                while True:
                    model = await self.get_user(user)
                    if model is None or server not in (model.get("servers") or {}):
                        return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise HubAPIError(
                "DELETE", f"/users/{user}/servers/{server}", 504, "the server did not stop"
            ) from None

    async def create_token(
        self, user: str, *, expires_in: int, scopes: list[str], note: str = ""
    ) -> dict:
        """A new API token of `user` (needs the `tokens` scope): ``{"id", "token", …}``.

        The token is a secret: do not log or store it.
        """
        response = await self._request(
            "POST",
            f"/users/{quote(user, safe='')}/tokens",
            json={"expires_in": expires_in, "scopes": scopes, "note": note},
        )
        if response.status_code == 404:
            raise HubAPIError("POST", f"/users/{user}/tokens", 404, "no such user")
        return response.json()

    async def revoke_token(self, user: str, token_id: str) -> None:
        """Delete token `token_id` of `user`; an unknown one is not an error."""
        await self._request(
            "DELETE", f"/users/{quote(user, safe='')}/tokens/{quote(token_id, safe='')}"
        )

    async def close(self) -> None:
        await self._client.aclose()
