"""The model's valid access keys, kept current by long-polling the control plane.

The control plane sends the SHA-256 hex digests of the keys, never the keys, with a version
number; asking with the current version waits until the set changes (docs/models.md). A
revoked key stops working as soon as that answer arrives.
"""

import asyncio
import hashlib
import logging
import time

import httpx

log = logging.getLogger("workbench_serving.keys")

#: seconds the control plane may hold a long poll (it caps this at 60)
LONG_POLL_SECONDS = 30
#: backoff after a failed poll: first wait, longest wait (seconds)
BACKOFF = (0.5, 3.0)


class AccessKeys:
    """The set of valid key hashes; `ready` once it was fetched successfully."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self._http = http
        self._url = url
        self._hashes: frozenset[str] = frozenset()
        self.version: int | None = None
        self.ready = False

    def valid(self, key) -> bool:
        """Whether `key` (any JSON value a caller sent) is a valid access key."""
        if type(key) is not str or not key:
            return False
        return hashlib.sha256(key.encode()).hexdigest() in self._hashes

    def update(self, version: int, hashes) -> None:
        changed = version != self.version
        self._hashes = frozenset(hashes)
        self.version = version
        self.ready = True
        if changed:
            log.info("access keys: version %s, %d valid", version, len(self._hashes))

    async def poll_once(self) -> None:
        """One request: immediate the first time, then a long poll on the current version."""
        if self.version is None:
            params = {"version": 0, "wait": 0}
            timeout = 15.0
        else:
            params = {"version": self.version, "wait": LONG_POLL_SECONDS}
            timeout = LONG_POLL_SECONDS + 15.0
        response = await self._http.get(self._url, params=params, timeout=timeout)
        if response.status_code != 200:
            raise ControlPlaneError(response)
        data = response.json()
        self.update(int(data["version"]), data["hashes"])

    async def run(self) -> None:
        """Poll until cancelled; on errors keep the last set and retry with backoff."""
        delay = BACKOFF[0]
        failing = False
        while True:
            before, version = time.monotonic(), self.version
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning(
                        "could not fetch the access keys (%s); keeping the last %d, retrying",
                        describe(exc),
                        len(self._hashes),
                    )
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            if failing:
                log.info("access keys fetched again")
            failing, delay = False, BACKOFF[0]
            if version is not None and self.version == version and time.monotonic() - before < 1:
                await asyncio.sleep(1)  # the answer did not wait: do not poll in a tight loop


class ControlPlaneError(Exception):
    """The control plane answered with an error status."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code} from {response.request.url.path}")
        self.status = response.status_code


def describe(exc: Exception) -> str:
    """A one-line description of a failed control-plane call (no headers, so no token)."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ControlPlaneError) else f"{type(exc).__name__}: {text}"
