"""The router's rolling window of request outcomes: rates, errors, percentiles, expiry."""

import math
import random

import pytest

from fastvlm_engine.observability.http import RequestOutcome
from fastvlm_engine.router.live_stats import RATIO, LiveStats, percentile

IMAGE, VIDEO = "/predict_image", "/summarize_video"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def outcome(endpoint: str = IMAGE, status: int = 200, seconds: float = 0.1) -> RequestOutcome:
    code = "ok" if status < 400 else f"http_{status}"
    return RequestOutcome(endpoint=endpoint, status=status, code=code, seconds=seconds)


def exact_nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_percentiles_are_within_the_grid_tolerance_of_the_exact_value(q):
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(80), 1.2) for _ in range(5000)]  # ms, a long tail
    estimate = percentile(values, q)
    exact = exact_nearest_rank(values, q)
    assert abs(estimate / exact - 1) <= math.sqrt(RATIO) - 1 + 1e-9


def test_percentiles_of_a_single_value_and_of_nothing():
    assert percentile([], 0.5) is None
    assert percentile([123.4], 0.5) == 123.4  # clamped to the extremes seen: exact
    assert percentile([0.01, 0.02], 0.99) == 0.02


def test_buckets_count_outcomes_and_latencies_of_successes_only():
    clock = Clock(1000.0)
    stats = LiveStats([IMAGE, VIDEO], bucket_s=10, window_s=60, clock=clock)
    for ms in (100, 200, 300, 400):
        stats.observe(outcome(seconds=ms / 1000))
    stats.observe(outcome(status=503, seconds=0.001))  # shed: an error, not a latency sample
    stats.observe(outcome(status=422, seconds=0.002))
    stats.observe(outcome("/admin", seconds=5))  # not tracked
    clock.now = 1004.0
    snapshot = stats.snapshot()
    image = snapshot["endpoints"][IMAGE]
    assert (image["requests"], image["errors"], image["client_errors"]) == (6, 1, 1)
    assert image["p50_ms"] == pytest.approx(200, rel=0.05) and image["p99_ms"] == pytest.approx(400, rel=0.05)
    [point] = image["series"]
    assert point["t"] == 1000.0 and point["seconds"] == 4.0 and point["requests"] == 6
    assert snapshot["endpoints"][VIDEO]["requests"] == 0 and set(snapshot["endpoints"]) == {IMAGE, VIDEO}


def test_the_series_covers_the_window_and_old_buckets_fall_out():
    clock = Clock(0.0)
    stats = LiveStats([IMAGE], bucket_s=10, window_s=30, clock=clock)
    for second in range(0, 50, 10):  # one request in each of five buckets
        clock.now = second + 1
        stats.observe(outcome())
    clock.now = 45.0
    series = stats.snapshot()["endpoints"][IMAGE]["series"]
    assert [p["t"] for p in series] == [20.0, 30.0, 40.0]  # three buckets of 10 s: the window
    assert [p["requests"] for p in series] == [1, 1, 1]
    assert [p["seconds"] for p in series] == [10.0, 10.0, 5.0]
    assert stats.snapshot()["endpoints"][IMAGE]["requests"] == 3
    clock.now = 200.0  # long idle: everything expired, empty buckets still line the window
    quiet = stats.snapshot()["endpoints"][IMAGE]
    assert quiet["requests"] == 0 and quiet["p50_ms"] is None
    assert [p["requests"] for p in quiet["series"]] == [0, 0, 0]


def test_the_series_starts_when_the_router_started():
    clock = Clock(1000.0)
    stats = LiveStats([IMAGE], bucket_s=10, window_s=600, clock=clock)
    clock.now = 1025.0
    assert [p["t"] for p in stats.snapshot()["endpoints"][IMAGE]["series"]] == [1000.0, 1010.0, 1020.0]


def test_memory_stays_bounded_under_load():
    clock = Clock(0.0)
    stats = LiveStats([IMAGE], bucket_s=1, window_s=5, clock=clock)
    rng = random.Random(1)
    for step in range(20000):
        clock.now = step / 100  # 100 requests per second for 200 s
        stats.observe(outcome(seconds=rng.uniform(0.001, 30)))
    buckets = stats._series[IMAGE]
    assert len(buckets) <= 5
    bins_up_to_30_s = math.ceil(math.log(30000 / 0.1) / math.log(RATIO)) + 1
    assert all(len(b.latencies.bins) <= bins_up_to_30_s for b in buckets.values())


def test_bad_window_is_refused():
    with pytest.raises(ValueError):
        LiveStats([IMAGE], bucket_s=0)
    with pytest.raises(ValueError):
        LiveStats([IMAGE], bucket_s=10, window_s=5)
