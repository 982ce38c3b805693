"""Technical metrics of deployments from the counters their replicas post (docs/models.md)."""

import time
from collections import deque
from dataclasses import dataclass, field

#: how far back rates and percentiles look
WINDOW_SECONDS = 60.0
#: how long a replica's samples are kept after its last post
FORGET_SECONDS = 300.0


@dataclass
class _Replica:
    samples: deque = field(default_factory=lambda: deque(maxlen=64))  # (monotonic, stats)


def _percentile(bounds: list[float], counts: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of a bucketed histogram, interpolated within the bucket."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            low = bounds[i - 1] if i > 0 else 0.0
            high = bounds[i] if i < len(bounds) else bounds[-1] * 2
            return round(low + (high - low) * (rank - seen) / count, 3)
        seen += count
    return float(bounds[-1])


def _delta(new: dict, old: dict | None, key: str) -> float:
    return new.get(key, 0) - (old.get(key, 0) if old else 0)


class DeploymentStats:
    """Keeps each replica's recent counter samples; answers per-deployment summaries."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._replicas: dict[int, dict[str, _Replica]] = {}

    def record(self, deployment_id: int, replica: str, stats: dict) -> None:
        replicas = self._replicas.setdefault(deployment_id, {})
        entry = replicas.setdefault(replica, _Replica())
        if entry.samples and stats.get("started") != entry.samples[-1][1].get("started"):
            entry.samples.clear()  # the process restarted: its counters began again
        entry.samples.append((self._clock(), stats))

    def forget(self, deployment_id: int) -> None:
        self._replicas.pop(deployment_id, None)

    def replicas(self, deployment_id: int) -> dict[str, dict]:
        """The newest stats of each replica heard from recently."""
        now = self._clock()
        return {
            name: entry.samples[-1][1]
            for name, entry in self._replicas.get(deployment_id, {}).items()
            if entry.samples and now - entry.samples[-1][0] < FORGET_SECONDS
        }

    def summary(self, deployment_id: int) -> dict:
        """Requests/s, latency percentiles and errors over the last minute, plus totals."""
        now = self._clock()
        totals = {"requests": 0, "errors": 0, "rejected": 0, "unauthorized": 0}
        window = {"requests": 0.0, "errors": 0.0, "seconds": 0.0}
        bounds: list[float] = []
        counts: list[int] = []
        cpu = memory = 0.0
        for entry in self._replicas.get(deployment_id, {}).values():
            if not entry.samples or now - entry.samples[-1][0] >= FORGET_SECONDS:
                continue
            at, newest = entry.samples[-1]
            for key in totals:
                totals[key] += newest.get(key, 0)
            base_at, base = next(
                ((t, s) for t, s in entry.samples if now - t <= WINDOW_SECONDS), (at, newest)
            )
            if base is newest and len(entry.samples) == 1:
                base_at, base = newest.get("started", at), None
                span = max(time.time() - newest.get("started", time.time()), 1e-3)
            else:
                span = max(at - base_at, 1e-3)
            window["requests"] += _delta(newest, base, "requests") / span
            window["errors"] += _delta(newest, base, "errors") / span
            bounds = newest.get("latency_bounds_ms", bounds)
            new_counts = newest.get("latency_counts", [])
            old_counts = base.get("latency_counts", []) if base else [0] * len(new_counts)
            diff = [n - o for n, o in zip(new_counts, old_counts, strict=False)]
            counts = [a + b for a, b in zip(counts, diff, strict=False)] if counts else diff
            memory += newest.get("memory_bytes", 0)
            if base is not None and span > 0:
                cpu += _delta(newest, base, "cpu_seconds") / span
        return {
            "requests_per_second": round(window["requests"], 3),
            "errors_per_second": round(window["errors"], 3),
            "latency_ms": {
                "p50": _percentile(bounds, counts, 0.50) if bounds else None,
                "p95": _percentile(bounds, counts, 0.95) if bounds else None,
                "p99": _percentile(bounds, counts, 0.99) if bounds else None,
            },
            "totals": totals,
            "cpu_cores": round(cpu, 3),
            "memory_bytes": int(memory),
        }
