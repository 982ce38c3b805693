"""A cache of each caller's project listing, the hottest read of the API."""

import asyncio
import time
from collections.abc import Awaitable, Callable

Listing = tuple[list[dict], str]


class ProjectListingCache:
    """Listings by caller identity; every project or collaborator change clears them all.

    Entries also expire after `ttl` seconds, the time the service caches hub group
    memberships (which decide `team` visibility), so no listing is staler than those.
    Concurrent misses for one caller share a single computation.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict = {}
        self._pending: dict = {}
        self._generation = 0

    async def get(self, identity, compute: Callable[[], Awaitable[Listing]]) -> Listing:
        """The cached listing of `identity`, computed by `compute()` when missing or old."""
        entry = self._entries.get(identity)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        pending = self._pending.get(identity)
        if pending is None:
            pending = asyncio.ensure_future(self._compute(identity, compute, self._generation))
            self._pending[identity] = pending
        return await asyncio.shield(pending)

    async def _compute(self, identity, compute, generation: int) -> Listing:
        try:
            listing = await compute()
        finally:
            if self._pending.get(identity) is asyncio.current_task():
                del self._pending[identity]
        if generation == self._generation:  # nothing changed while it was computed
            self._entries[identity] = (time.monotonic() + self.ttl, listing)
        return listing

    def clear(self) -> None:
        """Forget every listing, including those being computed now."""
        self._generation += 1
        self._entries.clear()
        self._pending.clear()
