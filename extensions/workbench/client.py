"""The HTTP client behind the SDK, authenticated from the session environment."""

import os

import httpx

from .errors import NotInSessionError, WorkbenchError
from .metrics import Metrics
from .models import Models
from .resources import Jobs, Projects


class Client:
    """A synchronous client for the workbench REST API (`/services/workbench/api/v1`).

    Arguments default to the session environment: `WORKBENCH_API_URL`, `WORKBENCH_TOKEN`
    and `WORKBENCH_PROJECT`. Resources hang off the client (`client.projects`, `client.jobs`,
    `client.models`, `client.metrics`).
    """

    def __init__(self, api_url=None, token=None, project=None, timeout=30.0):
        self.api_url = api_url or _require_env("WORKBENCH_API_URL")
        self.project = project or os.environ.get("WORKBENCH_PROJECT", "")
        token = token or _require_env("WORKBENCH_TOKEN")
        self._http = httpx.Client(
            base_url=self.api_url.rstrip("/") + "/",
            headers={"Authorization": f"token {token}"},
            timeout=timeout,
        )
        self.projects = Projects(self)
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.metrics = Metrics(self)

    def __repr__(self):
        return f"<workbench.Client {self.api_url} project={self.project!r}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        self._http.close()

    def request(self, method, path, **kwargs):
        """Send a request to `path` (relative to the API URL) and return the decoded JSON.

        Raises WorkbenchError with the server's message on a 4xx/5xx answer.
        """
        response = self._send(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def list(self, path, key, params=None):
        """Every item of list endpoint `path`'s `key`, following its pages (``next``)."""
        params = dict(params or {})
        items = []
        while True:
            page = self.request("GET", path, params=params)
            items.extend(page[key])
            following = page.get("next")
            if following is None:
                return items
            params.update(offset=following["offset"], limit=following["limit"])

    def request_bytes(self, method, path, **kwargs):
        """Like `request`, for answers that are not JSON (logs, files): the body as bytes."""
        return self._send(method, path, **kwargs).content

    def _send(self, method, path, **kwargs):
        try:
            response = self._http.request(method, path.lstrip("/"), **kwargs)
        except httpx.HTTPError as e:
            message = f"could not reach the workbench at {self.api_url}: {e}"
            raise WorkbenchError(None, message) from e
        if response.status_code >= 400:
            raise WorkbenchError(response.status_code, _error_message(response))
        return response

    def current_project(self):
        """The project this session or job runs in."""
        if not self.project:
            raise NotInSessionError("WORKBENCH_PROJECT")
        return self.projects.get(self.project)


def _require_env(name):
    value = os.environ.get(name)
    if not value:
        raise NotInSessionError(name)
    return value


def _error_message(response):
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return body["message"]
    return response.text.strip() or response.reason_phrase
