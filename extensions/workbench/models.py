"""Models: deploy a project's function as an HTTP model, manage it, call it (docs/models.md).

    import workbench
    model = workbench.models.deploy("churn", "predict.py", "predict", replicas=2)
    key = model.create_key("dashboard")
    workbench.models.call_model(key, {"tenure": 3})["response"]

`workbench.models.deploy/get/list` use the session's default client; `client.models` is the
same API on an explicit `workbench.Client`.
"""

import os
import threading
import time
from urllib.parse import quote

from .errors import NotInSessionError, WorkbenchError
from .resources import _project_path, _ProjectAPI, _Resource

__all__ = ["Model", "Models", "call_model", "deploy", "get", "list"]

BUILD_END_STATES = ("succeeded", "failed")
DEPLOYMENT_END_STATES = ("running", "failed", "stopped", "superseded")


class Models(_ProjectAPI):
    """Models API of a Client: the models of the client's project (or of `project=`)."""

    #: seconds between polls of a build or deployment, growing to the second value
    poll_interval = (0.25, 2.0)

    def list(self, project=None):
        """Every model of the project, as Model objects."""
        project = self._project(project)
        data = self._client.list(f"{_project_path(project)}/models", "models")
        return [Model(self._client, project, model) for model in data]

    def get(self, name, project=None):
        """One model by name; WorkbenchError(404) if the project has no such model."""
        project = self._project(project)
        return Model(self._client, project, self._client.request("GET", _model_path(project, name)))

    def deploy(
        self,
        name,
        file,
        function,
        project=None,
        replicas=None,
        profile=None,
        description=None,
        env=None,
        wait=True,
        timeout=600,
    ):
        """Serve `function` of `file` (relative to the project) as the model `name`.

        Creates the model (or updates it if it exists), builds a snapshot of the project's
        files, waits for the build and deploys it with `replicas` replicas (default: the
        model's own count, 1 for a new model). With `wait`, returns
        once the deployment is running. A failed build or deployment raises WorkbenchError with
        its message; TimeoutError after `timeout` seconds.
        """
        project = self._project(project)
        deadline = time.monotonic() + timeout
        fields = {"file": file, "function": function}
        if replicas is not None:
            fields["replicas"] = replicas
        if description is not None:
            fields["description"] = description
        if profile is not None:
            fields["profile"] = profile
        if env is not None:
            fields["env"] = env
        models_path = f"{_project_path(project)}/models"
        try:
            self._client.request("POST", models_path, json={"name": name, **fields})
        except WorkbenchError as exc:
            if exc.status != 409:
                raise
            self._client.request("PATCH", _model_path(project, name), json=fields)
        path = _model_path(project, name)
        build = self._client.request("POST", f"{path}/builds", json={})
        build = self._wait(
            f"{path}/builds/{build['number']}",
            build,
            BUILD_END_STATES,
            deadline,
            f"build {build['number']} of model {name!r}",
        )
        if build["state"] != "succeeded":
            raise WorkbenchError(
                None,
                f"build {build['number']} of model {name!r} failed: {build.get('message') or ''}",
            )
        body = {"build": build["number"]}
        if replicas is not None:
            body["replicas"] = replicas
        deployment = self._client.request("POST", f"{path}/deployments", json=body)
        if wait:
            deployment = self._wait(
                f"{path}/deployments/{deployment['number']}",
                deployment,
                DEPLOYMENT_END_STATES,
                deadline,
                f"deployment {deployment['number']} of model {name!r}",
            )
            if deployment["state"] != "running":
                raise WorkbenchError(
                    None,
                    f"deployment {deployment['number']} of model {name!r} is"
                    f" {deployment['state']}: {deployment.get('message') or ''}",
                )
        return self.get(name, project)

    def _wait(self, path, data, end_states, deadline, what):
        """Poll `path` until its state is one of `end_states`; TimeoutError at `deadline`."""
        interval, most = self.poll_interval
        while data["state"] not in end_states:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} is still {data['state']}: timed out")
            time.sleep(min(interval, left))
            interval = min(interval * 2, most)
            data = self._client.request("GET", path)
        return data


class Model(_Resource):
    """A model of a project: its fields (`name`, `crn`, `url`, `deployment`, …) as attributes."""

    def __init__(self, client, project, data):
        super().__init__(client, data)
        self.project = project

    def __repr__(self):
        return f"<workbench.Model {self.project}/{self.data['name']}>"

    @property
    def _path(self):
        return _model_path(self.project, self.data["name"])

    @property
    def url(self):
        """The URL callers POST `{"accessKey", "request"}` to."""
        return self.data.get("url")

    def refresh(self):
        self.data = self._client.request("GET", self._path)
        return self

    def update(self, **fields):
        """Change fields of the model (`file`, `function`, `description`, `replicas`, …)."""
        self.data = self._client.request("PATCH", self._path, json=fields)
        return self

    def delete(self):
        """Delete the model (its deployments stop)."""
        self._client.request("DELETE", self._path)

    def builds(self):
        """Every build of the model, as dicts (`number`, `state`, `message`, …)."""
        return self._client.list(f"{self._path}/builds", "builds")

    def build_log(self, number):
        """The log of build `number`, as text."""
        data = self._client.request_bytes("GET", f"{self._path}/builds/{int(number)}/log")
        return data.decode(errors="replace")

    def deployments(self):
        """Every deployment of the model, as dicts (`number`, `state`, `replicas`, …)."""
        return self._client.list(f"{self._path}/deployments", "deployments")

    def keys(self):
        """The model's access keys, as dicts (`id`, `prefix`, `description`, `revoked`, …)."""
        return self._client.request("GET", f"{self._path}/keys")["keys"]

    def create_key(self, description=""):
        """A new access key; the returned string is shown only this once."""
        return self._client.request(
            "POST", f"{self._path}/keys", json={"description": description}
        )["key"]

    def revoke_key(self, id):
        """Revoke access key `id`; calls with it fail (401) from then on."""
        self._client.request("DELETE", f"{self._path}/keys/{quote(str(id), safe='')}")

    def _change_deployment(self, body):
        deployment = self.refresh().data.get("deployment")
        if not deployment:
            raise WorkbenchError(None, f"model {self.data['name']!r} has no deployment")
        path = f"{self._path}/deployments/{deployment['number']}"
        return self._client.request("PATCH", path, json=body)

    def scale(self, replicas):
        """Run the current deployment with `replicas` replicas; the deployment as a dict."""
        return self._change_deployment({"replicas": int(replicas)})

    def stop(self):
        """Stop the current deployment; the deployment as a dict."""
        return self._change_deployment({"state": "stopped"})

    def restart(self):
        """Replace the current deployment's replicas one by one; the deployment as a dict."""
        return self._change_deployment({"restart": True})

    def logs(self):
        """The output of the current deployment's replicas, as text."""
        return self._client.request_bytes("GET", f"{self._path}/logs").decode(errors="replace")

    def stats(self):
        """Technical metrics of the current deployment: requests/s, latency percentiles, …"""
        return self._client.request("GET", f"{self._path}/stats")


def _model_path(project, name):
    return f"{_project_path(project)}/models/{quote(name, safe='')}"


_resolved_urls = {}
_http = None
_http_lock = threading.Lock()


def _http_client():
    global _http
    with _http_lock:
        if _http is None:
            import httpx

            _http = httpx.Client(timeout=60.0)
        return _http


def call_model(access_key, payload):
    """Call the model `access_key` belongs to with `payload`; the whole answer body.

    `resp["response"]` is the function's result (`resp["response"]["prediction"]` and
    `["uuid"]` with the metrics decorator). The model's URL is looked up once per key
    (`POST /access-keys/resolve`, the key is the credential) from `WORKBENCH_API_URL`.
    Raises WorkbenchError with the model's message when the call fails.
    """
    import httpx

    url = _resolved_urls.get(access_key)
    if url is None:
        url = _resolve(access_key)
    try:
        response = _http_client().post(url, json={"accessKey": access_key, "request": payload})
    except httpx.HTTPError as exc:
        raise WorkbenchError(None, f"could not reach the model at {url}: {exc}") from exc
    if response.status_code in (401, 404):
        _resolved_urls.pop(access_key, None)  # key revoked or model moved: resolve next time
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        message = body.get("error") if isinstance(body, dict) else None
        raise WorkbenchError(response.status_code, message or response.text.strip())
    return body


def _resolve(access_key):
    import httpx

    api_url = os.environ.get("WORKBENCH_API_URL")
    if not api_url:
        raise NotInSessionError("WORKBENCH_API_URL")
    try:
        response = _http_client().post(
            api_url.rstrip("/") + "/access-keys/resolve", json={"accessKey": access_key}
        )
    except httpx.HTTPError as exc:
        message = f"could not reach the workbench at {api_url}: {exc}"
        raise WorkbenchError(None, message) from exc
    if response.status_code >= 400:
        try:
            message = response.json().get("message")
        except (ValueError, AttributeError):
            message = None
        raise WorkbenchError(response.status_code, message or response.text.strip())
    url = response.json()["url"]
    _resolved_urls[access_key] = url
    return url


def _default_models():
    from . import default_client

    return default_client().models


def deploy(
    name,
    file,
    function,
    project=None,
    replicas=None,
    profile=None,
    description=None,
    env=None,
    wait=True,
    timeout=600,
):
    """`Models.deploy` with the session's default client."""
    return _default_models().deploy(
        name,
        file,
        function,
        project=project,
        replicas=replicas,
        profile=profile,
        description=description,
        env=env,
        wait=wait,
        timeout=timeout,
    )


def get(name, project=None):
    """`Models.get` with the session's default client."""
    return _default_models().get(name, project)


def list(project=None):
    """`Models.list` with the session's default client."""
    return _default_models().list(project)
