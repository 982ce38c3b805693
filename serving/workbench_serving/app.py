"""The replica's ASGI application: `/model`, `/invocations` and `/health` (docs/models.md).

A plain ASGI callable, no framework: each request is a dict lookup of its path, a JSON parse,
a key check, the admission against `--queue-limit`, and the call (runner.py: a worker thread,
or the loop's thread for a function that has proved fast; an `async def` function is awaited).
Every route answers both under the model's prefix (`/models/<project>/<model>/model`) and
without it (`/model`).
"""

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx
import orjson

from .keys import AccessKeys
from .reporter import Reporter
from .runner import INVOCATIONS, MODEL, Caller, SyncRunner, error_body
from .stats import Stats

log = logging.getLogger("workbench_serving")

INVOCATION_FIELDS = ("inputs", "instances", "dataframe_records", "dataframe_split")
_JSON_HEADER = (b"content-type", b"application/json")
_READY = orjson.dumps({"status": "ready"})
_STARTING = orjson.dumps(
    {"status": "starting", "detail": "waiting for the model's access keys from the control plane"}
)


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


class ModelApp:
    """Serves one function. `startup()`/`shutdown()` run from the ASGI lifespan."""

    def __init__(
        self,
        func: Callable,
        *,
        function_name: str,
        prefix: str,
        control_url: str,
        deployment_crn: str,
        replica: str,
        token: str,
        max_body_bytes: int = 1 << 20,
        queue_limit: int = 64,
        threads: int = 1,
        inline: bool = True,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.queue_limit = queue_limit
        self.stats = Stats()
        deployment_url = f"{control_url.rstrip('/')}/deployments/{quote(deployment_crn, safe=':')}"
        self.http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(15.0),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
        )
        self.keys = AccessKeys(self.http, deployment_url + "/access-keys")
        self.reporter = Reporter(self.http, deployment_url, replica, self.stats)
        self.caller = Caller(func, function_name, self.reporter.records)
        self.is_async = inspect.iscoroutinefunction(func)
        self.runner = None if self.is_async else SyncRunner(self.caller, threads, inline)
        self._keys_task: asyncio.Task | None = None
        self.routes: dict[str, tuple[str, Callable]] = {}
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        for base in {"", prefix}:
            self.routes[base + "/model"] = ("POST", self._model)
            self.routes[base + "/invocations"] = ("POST", self._invocations)
            self.routes[base + "/health"] = ("GET", self._health)

    # ASGI entry point

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            route = self.routes.get(scope["path"])
            if route is None:
                return await respond(send, 404, error_body(f"no route {scope['path']}"))
            method, handler = route
            if scope["method"] != method and not (method == "GET" and scope["method"] == "HEAD"):
                body = error_body(f"{scope['method']} is not allowed here; use {method}")
                return await respond(send, 405, body, [(b"allow", method.encode())])
            with contextlib.suppress(_Disconnected):
                await handler(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def startup(self) -> None:
        loop = asyncio.get_running_loop()
        if self.runner is not None:
            self.runner.start(loop)
        self._keys_task = loop.create_task(self.keys.run(), name="access-keys")
        self.reporter.start()

    async def shutdown(self) -> None:
        """After the last request: stop polling, send every record and the final stats."""
        if self._keys_task is not None:
            self._keys_task.cancel()
            await asyncio.gather(self._keys_task, return_exceptions=True)
        await self.reporter.stop()
        if self.runner is not None:
            self.runner.stop()
        await self.http.aclose()
        log.info(
            "stopped: %d requests, %d prediction records sent, %d dropped",
            self.stats.requests,
            self.reporter.sent,
            self.reporter.dropped,
        )

    # routes

    async def _health(self, scope, receive, send) -> None:
        if self.keys.ready:
            await respond(send, 200, _READY)
        else:
            await respond(send, 503, _STARTING)

    async def _model(self, scope, receive, send) -> None:
        """Cloudera's form: `{"accessKey": …, "request": …}`."""
        started = time.perf_counter()
        body, data = await self._json_object(
            scope, receive, send, ': {"accessKey": "…", "request": …}'
        )
        if data is None:
            return None
        key = data.get("accessKey")
        if not self.keys.valid(key):
            self.stats.unauthorized += 1
            message = "invalid access key" if key else 'the body has no "accessKey"'
            return await respond(send, 401, error_body(message))
        if "request" not in data:
            message = 'the body has no "request": send {"accessKey": "…", "request": …}'
            return await respond(send, 400, error_body(message))
        await self._call(send, data["request"], MODEL, len(body), started)

    async def _json_object(self, scope, receive, send, shape: str = ""):
        """The body and its JSON object; ``(body, None)`` once an error has been answered."""
        body = await self._read_body(scope, receive)
        if body is None:
            await self._too_large(send)
            return None, None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            await respond(send, 400, error_body("the body is not JSON"))
            return body, None
        if type(data) is not dict:
            await respond(send, 400, error_body("the body must be a JSON object" + shape))
            return body, None
        return body, data

    async def _invocations(self, scope, receive, send) -> None:
        """MLflow's form: the key as a bearer token, the input in one of four fields."""
        started = time.perf_counter()
        key = bearer_token(scope)
        if not self.keys.valid(key):
            self.stats.unauthorized += 1
            message = "invalid access key" if key else "send the access key: Authorization: Bearer"
            return await respond(send, 401, error_body(message))
        body, data = await self._json_object(scope, receive, send)
        if data is None:
            return None
        for field in INVOCATION_FIELDS:
            if field in data:
                return await self._call(send, data[field], INVOCATIONS, len(body), started)
        message = f"the body needs one of the fields {', '.join(INVOCATION_FIELDS)}"
        await respond(send, 400, error_body(message))

    async def _call(self, send, request, kind: str, size: int, started: float) -> None:
        stats = self.stats
        if stats.inflight >= self.queue_limit:
            stats.rejected += 1
            message = f"the model is busy: {self.queue_limit} requests are waiting or running"
            return await respond(send, 429, error_body(message))
        stats.inflight += 1
        try:
            if self.runner is not None:
                status, body, error = await self.runner.call(request, kind, size)
            else:
                status, body, error = await self.caller.call_async(request, kind)
        finally:
            stats.inflight -= 1
        stats.observe(time.perf_counter() - started, error)
        self.reporter.poke()
        await respond(send, status, body)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The request body, or None as soon as it is known to exceed the limit."""
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    return None
                break
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            if message["type"] == "http.disconnect":
                raise _Disconnected
            return body if len(body) <= limit else None
        chunks, size = [body], len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None  # stop reading; the server discards the rest
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _too_large(self, send) -> None:
        message = f"the body is larger than {self.max_body_bytes} bytes"
        await respond(send, 413, error_body(message))


def bearer_token(scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


async def respond(send, status: int, body: bytes, extra_headers=()) -> None:
    headers = [_JSON_HEADER, (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
