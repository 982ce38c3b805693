"""Routes of models in the hub's proxy, set through configurable-http-proxy's REST API."""

import os

import httpx
from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable


class ProxyRoutes(LoggingConfigurable):
    """Adds, replaces and deletes the proxy routes ``/models/<project>/<model>``.

    A route lists every ready replica in ``workbench_targets``; the workbench's proxy
    balances across them (``workbench_hub.proxy``). Routes without ``jupyterhub`` in their
    data are left alone by the hub's own route checks.
    """

    api_url = Unicode(
        "",
        help="""URL of the proxy's REST API (e.g. http://127.0.0.1:8001). Empty: models are
        not routed through the proxy (their replicas still run).""",
    ).tag(config=True)

    auth_token = Unicode(
        help="Token of the proxy's REST API. Default: $CONFIGPROXY_AUTH_TOKEN.",
    ).tag(config=True)

    @default("auth_token")
    def _auth_token_default(self) -> str:
        return os.environ.get("CONFIGPROXY_AUTH_TOKEN", "")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._http = httpx.AsyncClient(
            base_url=self.api_url.rstrip("/") + "/api/routes",
            headers={"Authorization": f"token {self.auth_token}"},
            timeout=10,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.api_url)

    async def set(self, prefix: str, targets: list[str]) -> None:
        """Route ``prefix`` to ``targets`` (URLs), replacing what was there."""
        response = await self._http.post(
            prefix, json={"target": targets[0], "workbench_targets": targets}
        )
        response.raise_for_status()

    async def delete(self, prefix: str) -> None:
        response = await self._http.delete(prefix)
        if response.status_code != 404:
            response.raise_for_status()

    async def list(self) -> dict[str, list[str]]:
        """The balanced routes the proxy holds now: prefix → targets."""
        response = await self._http.get(self.api_url.rstrip("/") + "/api/routes")
        response.raise_for_status()
        return {
            prefix: data["workbench_targets"]
            for prefix, data in response.json().items()
            if "workbench_targets" in data
        }

    async def close(self) -> None:
        await self._http.aclose()
