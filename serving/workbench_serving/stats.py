"""A replica's technical metrics: counters, latency histogram, CPU and memory of the process.

The control plane receives these cumulative values every 2 s (docs/models.md, *Technical
metrics*) and turns their differences into rates and percentiles.
"""

import os
import time
from bisect import bisect_left

#: upper bounds (ms, inclusive) of the latency histogram's buckets; one more bucket for slower
LATENCY_BOUNDS_MS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Stats:
    """Cumulative counters of one replica process; updated from the event loop thread only."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = 0  # answered calls of the function (/model and /invocations)
        self.errors = 0  # calls where the function raised or its result was not JSON
        self.rejected = 0  # 429: the queue was full
        self.unauthorized = 0  # 401
        self.inflight = 0  # calls waiting for the function or running it
        self.latency_counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        self.latency_sum_ms = 0.0

    def observe(self, seconds: float, error: bool) -> None:
        """Count one answered call that took `seconds` from its arrival to its answer."""
        ms = seconds * 1000.0
        self.requests += 1
        if error:
            self.errors += 1
        self.latency_counts[bisect_left(LATENCY_BOUNDS_MS, ms)] += 1
        self.latency_sum_ms += ms

    def snapshot(self) -> dict:
        """The `stats` object the control plane expects."""
        return {
            "started": self.started,
            "requests": self.requests,
            "errors": self.errors,
            "rejected": self.rejected,
            "unauthorized": self.unauthorized,
            "latency_bounds_ms": list(LATENCY_BOUNDS_MS),
            "latency_counts": list(self.latency_counts),
            "latency_sum_ms": round(self.latency_sum_ms, 3),
            "cpu_seconds": round(time.process_time(), 3),
            "memory_bytes": rss_bytes(),
            "inflight": self.inflight,
        }


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The resident set size of this process, in bytes."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, not current
