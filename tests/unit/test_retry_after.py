import math

import pytest

from fastvlm_engine.errors import retry_after_header
from fastvlm_engine.router.retry_after import MAX_ATTEMPT, Ewma, RetryAfterEstimator, parse_attempt

IMG, VID = "/predict_image", "/summarize_video"


def make() -> RetryAfterEstimator:
    return RetryAfterEstimator(bounds={IMG: (1.0, 30.0), VID: (5.0, 300.0)}, priors={IMG: 2.0, VID: 30.0})


@pytest.mark.parametrize(("header", "attempt"), [
    (None, 0), ("", 0), ("0", 0), ("1", 1), ("3", 3), (" 4 ", 4), ("-1", 0), ("-999999", 0),
    ("abc", 0), ("1e3", MAX_ATTEMPT), ("nan", 0), ("inf", 0), ("2.7", 2),
    ("9" * 5000, MAX_ATTEMPT), ("1024", MAX_ATTEMPT), ("0x10", 0), ("\x00", 0),
])
def test_any_attempt_header_is_handled(header, attempt):
    assert parse_attempt(header) == attempt


def test_grows_with_load():
    est = make()
    values = [est.estimate(IMG, in_flight=n, capacity=4, now=0) for n in (0, 4, 8, 16, 32)]
    assert values == sorted(values) and values[-1] > values[0]


def test_grows_with_recent_rejections():
    est = make()
    quiet = est.estimate(IMG, in_flight=4, capacity=4, now=100.0)
    for i in range(20):
        est.rejected(IMG, f"client-{i}", now=100.0)
    crowded = est.estimate(IMG, in_flight=4, capacity=4, now=100.0)
    assert crowded > quiet
    # rejections older than about one service time no longer count
    assert est.estimate(IMG, in_flight=4, capacity=4, now=200.0) == quiet


def test_a_client_retrying_in_a_loop_counts_once():
    est = make()
    for _ in range(1000):
        est.rejected(IMG, "the-same-client", now=100.0)
    assert est.waiting(IMG, now=100.0) == 1
    est.rejected(IMG, None, now=100.0)
    est.rejected(IMG, None, now=100.0)
    assert est.waiting(IMG, now=100.0) == 3  # anonymous rejections count separately


def test_grows_with_attempt_and_is_bounded():
    est = make()
    values = [est.estimate(IMG, in_flight=4, capacity=4, attempt=a, now=0) for a in range(0, 12)]
    assert values == sorted(values) and values[5] > values[0]
    assert all(1.0 <= v <= 30.0 for v in values)
    huge = est.estimate(VID, in_flight=10**6, capacity=1, attempt=10**9, now=0)
    assert huge == 300.0
    tiny = est.estimate(IMG, in_flight=0, capacity=10**6, now=0)
    assert tiny == 1.0


def test_follows_measured_latency_per_endpoint():
    est = make()
    before = est.estimate(IMG, in_flight=8, capacity=4, now=0)
    for _ in range(50):
        est.observe(IMG, 6.0)
    after = est.estimate(IMG, in_flight=8, capacity=4, now=0)
    assert after > before
    assert est.estimate(VID, in_flight=8, capacity=4, now=0) >= 5.0  # video unaffected, own bounds


def test_zero_capacity_is_not_a_division_error():
    assert 1.0 <= make().estimate(IMG, in_flight=0, capacity=0, now=0) <= 30.0


@pytest.mark.parametrize("value", [0.001, 1.0, 1.2, 2.5, 29.999, 30.0, 299.5])
def test_header_is_the_ceiling_of_the_body_value(value):
    assert int(retry_after_header(value)) == math.ceil(value)


def test_ewma_prior_and_update_and_ignores_garbage():
    ewma = Ewma(prior=2.0, alpha=0.5)
    assert ewma.get() == 2.0
    ewma.update(4.0)
    assert ewma.get() == 4.0
    ewma.update(2.0)
    assert ewma.get() == 3.0
    ewma.update(float("nan"))
    ewma.update(-1)
    assert ewma.get() == 3.0
    with pytest.raises(ValueError):
        Ewma(prior=1, alpha=0)


def test_bad_bounds_are_rejected():
    with pytest.raises(ValueError):
        RetryAfterEstimator(bounds={IMG: (5.0, 1.0)}, priors={IMG: 1.0})
