"""A test double of the control plane's three routes that model replicas call.

This is not the control plane: tests/hub tests the real one. It is a small aiohttp app on a
loopback port, run on its own event loop in a background thread, so that synchronous tests and
benchmarks can drive a real `python -m workbench_serving` process against it. It implements
(docs/models.md, *Routes the replicas call*):

- `GET  /deployments/{crn}/access-keys?version=V&wait=S`: the key hashes and their version,
  holding the answer up to S seconds while V is the current version (long poll);
- `POST /deployments/{crn}/predictions` `{"records": [...]}` → 204;
- `POST /deployments/{crn}/stats` `{"replica", "stats"}` → 204;

each checking `Authorization: Bearer <deployment token>` (401 otherwise) and recording what it
received. Tests change the keys (`add_key`, `revoke_key`), hold the key answers back
(`hold_keys`/`release_keys`) and make prediction posts fail (`fail_predictions`).
"""

import asyncio
import contextlib
import hashlib
import threading
import time

from aiohttp import web

API_PREFIX = "/services/workbench/api/v1"
TOKEN = "deployment-token-7d2e9b"
CRN = "crn:workbench:deployment:0b6f3c52-1d1e-4c1e-9a57-6f1f0a5c2d11"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ReplicaControlPlane:
    """The three replica routes, their state and what they received."""

    def __init__(self, token: str = TOKEN, crn: str = CRN) -> None:
        self.token = token
        self.crn = crn
        self.url = ""
        self.hashes: set[str] = set()
        self.version = 1
        self.records: list[list] = []  # every prediction record received, in order
        self.prediction_posts = 0  # answered 204
        self.stats: list[dict] = []  # every stats body received
        self.requests: list[tuple[str, str, bool]] = []  # (method, path?query, authorized)
        self.fail_predictions = 0  # answer this many prediction posts with 500
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._changed: asyncio.Event | None = None
        self._released: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    # lifecycle

    def start(self) -> "ReplicaControlPlane":
        self._thread.start()
        self._run(self._start())
        return self

    def stop(self) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _stop(self) -> None:
        self._released.set()
        self._changed.set()  # answer the long polls still waiting
        await self._runner.cleanup()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        self._released = asyncio.Event()
        self._released.set()
        app = web.Application(middlewares=[self._auth])
        base = f"{API_PREFIX}/deployments/{{crn}}"
        app.router.add_get(f"{base}/access-keys", self._access_keys)
        app.router.add_post(f"{base}/predictions", self._predictions)
        app.router.add_post(f"{base}/stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    # state changes, from the test's thread

    def add_key(self, key: str) -> None:
        self._run(self._change(lambda: self.hashes.add(key_hash(key))))

    def revoke_key(self, key: str) -> None:
        self._run(self._change(lambda: self.hashes.discard(key_hash(key))))

    def hold_keys(self) -> None:
        """Access-key requests wait (no answer) until `release_keys()`."""
        self._run(self._call(self._released.clear))

    def release_keys(self) -> None:
        self._run(self._call(self._released.set))

    def fail_next_predictions(self, count: int) -> None:
        """Answer the next `count` prediction posts with 500 (and record nothing)."""
        self._run(self._call(setattr, self, "fail_predictions", count))

    async def _call(self, func, *args) -> None:
        func(*args)

    async def _change(self, change) -> None:
        change()
        self.version += 1
        self._changed.set()  # wakes every waiting long poll
        self._changed = asyncio.Event()

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "the condition"):
        """Poll `predicate()` until it is truthy; its value. AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.02)

    def last_stats(self) -> dict | None:
        return self.stats[-1]["stats"] if self.stats else None

    # routes

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        self.requests.append((request.method, request.path_qs, authorized))
        if not authorized:
            return web.json_response({"status": 401, "message": "invalid deployment token"}, 401)
        if request.match_info.get("crn") != self.crn:
            return web.json_response({"status": 404, "message": "no such deployment"}, 404)
        return await handler(request)

    async def _access_keys(self, request: web.Request) -> web.Response:
        await self._released.wait()
        version = int(request.query.get("version", "-1"))
        wait = min(float(request.query.get("wait", "0")), 60.0)
        if version == self.version and wait > 0:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)
        return web.json_response({"version": self.version, "hashes": sorted(self.hashes)})

    async def _predictions(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.fail_predictions > 0:
            self.fail_predictions -= 1
            return web.json_response({"status": 500, "message": "database is locked"}, 500)
        assert len(body["records"]) <= 50_000
        self.records.extend(body["records"])
        self.prediction_posts += 1
        return web.Response(status=204)

    async def _stats(self, request: web.Request) -> web.Response:
        self.stats.append(await request.json())
        return web.Response(status=204)
