"""Resource limits for a local session's process tree; docs/sessions.md says what they enforce."""

import os
import resource
import zlib
from collections.abc import Callable

from .profiles import Profile


def choose_cpus(cores: int, key: str, available: set[int] | None = None) -> set[int]:
    """`cores` of the `available` CPUs (default: the hub's own), at most all of them.

    The first CPU is derived from `key` (``user/project``), so sessions spread over the machine
    instead of all sharing CPU 0; the same session always gets the same CPUs.
    """
    ordered = sorted(os.sched_getaffinity(0) if available is None else available)
    count = max(1, min(cores, len(ordered)))
    first = zlib.crc32(key.encode()) % len(ordered)
    return {ordered[(first + i) % len(ordered)] for i in range(count)}


def limits_env(profile: Profile, cpus: set[int]) -> dict[str, str]:
    """Environment that keeps libraries within the limits.

    Fewer glibc malloc arenas keep virtual memory (what ``RLIMIT_AS`` counts) close to what is
    used; thread pools sized to the pinned CPUs; no GPU visible to a profile without GPUs.
    """
    env = {"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": str(len(cpus))}
    if profile.gpu == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def make_limits_preexec(
    memory: int, cpus: set[int], then: Callable[[], None] | None = None
) -> Callable[[], None]:
    """A ``Popen`` ``preexec_fn``: run `then`, cap the address space, pin to `cpus`.

    Both limits are inherited by every process the session starts (kernels, terminals).
    """

    def preexec() -> None:
        if then is not None:
            then()
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        os.sched_setaffinity(0, cpus)

    return preexec
