"""A cache of each caller's project listing, the hottest read of the API."""

import time


class ProjectListingCache:
    """Listings by caller identity; every project or collaborator change clears them all.

    Entries also expire after `ttl` seconds, the time the service caches hub group
    memberships (which decide `team` visibility), so no listing is staler than those.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict = {}

    def get(self, identity) -> tuple[list[dict], str] | None:
        entry = self._entries.get(identity)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, identity, projects: list[dict], body: str) -> None:
        self._entries[identity] = (time.monotonic() + self.ttl, (projects, body))

    def clear(self) -> None:
        self._entries.clear()
