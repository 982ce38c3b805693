"""The per-caller project listing cache: shared computations, and no stale listing kept."""

import asyncio

from workbench_hub.listing import ProjectListingCache


def computing(results: list, gate: asyncio.Event | None = None):
    calls = []

    async def compute():
        calls.append(1)
        if gate is not None:
            await gate.wait()
        return results[len(calls) - 1]

    return compute, calls


async def test_concurrent_misses_share_one_computation():
    cache = ProjectListingCache(ttl=60)
    gate = asyncio.Event()
    compute, calls = computing([([{"name": "a"}], "a")], gate)
    waiting = [asyncio.ensure_future(cache.get("alice", compute)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    results = [await w for w in waiting]
    assert results == [([{"name": "a"}], "a")] * 20
    assert len(calls) == 1
    assert await cache.get("alice", compute) == ([{"name": "a"}], "a")
    assert len(calls) == 1, "served from the cache"


async def test_a_change_during_a_computation_is_not_cached_over():
    cache = ProjectListingCache(ttl=60)
    gate = asyncio.Event()
    compute, calls = computing([([], "old"), ([], "new")], gate)
    first = asyncio.ensure_future(cache.get("bob", compute))
    await asyncio.sleep(0)
    cache.clear()  # a collaborator was added while the old listing was being read
    gate.set()
    assert (await first)[1] == "old"
    assert (await cache.get("bob", compute))[1] == "new"
    assert len(calls) == 2


async def test_entries_expire_and_callers_are_separate():
    cache = ProjectListingCache(ttl=0)
    compute, _ = computing([([], "1"), ([], "2"), ([], "3")])
    assert (await cache.get("carol", compute))[1] == "1"
    assert (await cache.get("carol", compute))[1] == "2", "ttl 0: computed again"
    assert (await cache.get("dave", compute))[1] == "3"
