"""Rates and latency percentiles from the counters replicas post (DeploymentStats)."""

from workbench_hub.models.stats import DeploymentStats

BOUNDS = [1, 2, 5, 10]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(requests, counts, errors=0, cpu=0.0, started=1.0, memory=100):
    return {
        "started": started,
        "requests": requests,
        "errors": errors,
        "rejected": 0,
        "unauthorized": 0,
        "latency_bounds_ms": BOUNDS,
        "latency_counts": counts,
        "cpu_seconds": cpu,
        "memory_bytes": memory,
    }


def test_rates_and_percentiles_over_the_window():
    clock = Clock()
    stats = DeploymentStats(clock=clock)
    stats.record(1, "a", sample(100, [100, 0, 0, 0, 0], cpu=1.0))
    clock.now += 10
    # 1000 more requests in 10 s: 900 under 1 ms, 60 in 1-2 ms, 40 in 5-10 ms
    stats.record(1, "a", sample(1100, [1000, 60, 0, 40, 0], errors=5, cpu=6.0))
    stats.record(1, "b", sample(50, [50, 0, 0, 0, 0], started=2.0, memory=50))
    summary = stats.summary(1)
    assert summary["totals"]["requests"] == 1150
    assert summary["totals"]["errors"] == 5
    assert 100 <= summary["requests_per_second"] <= 101  # replica b has one sample: rate unknown
    assert summary["errors_per_second"] == 0.5
    assert summary["latency_ms"]["p50"] < 1
    assert 1 <= summary["latency_ms"]["p95"] <= 2
    assert 5 <= summary["latency_ms"]["p99"] <= 10
    assert summary["cpu_cores"] == 0.5
    assert summary["memory_bytes"] == 150


def test_a_restarted_replica_starts_its_counters_again():
    clock = Clock()
    stats = DeploymentStats(clock=clock)
    stats.record(1, "a", sample(500, [500, 0, 0, 0, 0]))
    clock.now += 5
    stats.record(1, "a", sample(10, [10, 0, 0, 0, 0], started=50.0))
    clock.now += 5
    stats.record(1, "a", sample(60, [60, 0, 0, 0, 0], started=50.0))
    summary = stats.summary(1)
    assert summary["totals"]["requests"] == 60
    assert summary["requests_per_second"] == 10


def test_silent_replicas_are_forgotten():
    clock = Clock()
    stats = DeploymentStats(clock=clock)
    stats.record(1, "a", sample(5, [5, 0, 0, 0, 0]))
    clock.now += 3600
    assert stats.replicas(1) == {}
    assert stats.summary(1)["totals"]["requests"] == 0
    assert stats.summary(2)["latency_ms"] == {"p50": None, "p95": None, "p99": None}
