"""Collectors against independent computations on known distributions, and incremental == one-shot."""
from __future__ import annotations

import numpy as np
import pytest

from calibration import (
    CalibrationError,
    EntropyCollector,
    Method,
    MinMaxCollector,
    MseCollector,
    PercentileCollector,
    make_collector,
)
from calibration import thresholds


def test_minmax_of_a_uniform_tensor():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3.0, 2.0, size=(4, 8, 16, 16)).astype(np.float32)
    c = MinMaxCollector()
    c.observe("x", x)
    assert c.compute() == {"x": pytest.approx(float(np.abs(x).max()))}
    assert c.stats()["x"]["min"] == pytest.approx(float(x.min()))
    assert c.stats()["x"]["max"] == pytest.approx(float(x.max()))
    assert c.stats()["x"]["count"] == x.size


def test_minmax_over_batches_is_the_max_of_all():
    rng = np.random.default_rng(1)
    batches = [rng.normal(0, s, size=1000) for s in (1.0, 5.0, 0.5)]
    c = MinMaxCollector()
    for b in batches:
        c.observe("t", b)
    assert c.compute()["t"] == pytest.approx(float(np.abs(np.concatenate(batches)).max()))


def test_percentile_of_a_gaussian_is_within_one_bin_of_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(2_000_000).astype(np.float32)
    c = PercentileCollector(percentile=99.99)
    for part in np.split(x, 4):
        c.observe("g", part)
    width = c.histogram("g").width
    expected = float(np.percentile(np.abs(x), 99.99))
    assert abs(c.compute()["g"] - expected) <= width
    assert width < 0.01  # the check above is meaningful: 2048 bins over [0, 8)


def test_histogram_equals_numpy_histogram_over_the_final_range():
    rng = np.random.default_rng(3)
    batches = [rng.normal(0, 0.3, 5000), rng.normal(0, 2.0, 5000), rng.normal(0, 40.0, 100), rng.normal(0, 1, 10)]
    c = EntropyCollector()
    for b in batches:
        c.observe("t", b.astype(np.float32))
    hist = c.histogram("t")
    data = np.abs(np.concatenate(batches).astype(np.float32))
    assert hist.range == 2.0 ** (np.floor(np.log2(data.max())) + 1)  # the smallest power of two above the max
    expected, _ = np.histogram(data, bins=2048, range=(0.0, hist.range))
    np.testing.assert_array_equal(hist.counts, expected)
    assert hist.count == data.size
    assert hist.amax == pytest.approx(float(data.max()))


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_incremental_equals_one_shot_when_later_batches_exceed_the_range(method):
    rng = np.random.default_rng(4)
    # Each batch exceeds the range of the previous ones, by factors of 3, 40 and 1000 (several doublings).
    batches = [rng.laplace(0, s, size=(2, 3, 8, 8)).astype(np.float32) for s in (0.01, 0.03, 1.2, 1000.0)]
    batches.append(np.zeros((1, 3, 8, 8), dtype=np.float32))
    incremental = make_collector(method)
    for b in batches:
        incremental.observe("t", b)
    one_shot = make_collector(method)
    one_shot.observe("t", np.concatenate(batches))
    np.testing.assert_array_equal(incremental.histogram("t").counts, one_shot.histogram("t").counts)
    assert incremental.compute() == one_shot.compute()


def test_histogram_collectors_threshold_is_the_rule_applied_to_the_occupied_histogram():
    rng = np.random.default_rng(5)
    x = np.maximum(rng.standard_normal((8, 16, 32, 32)), 0).astype(np.float32)
    for cls, rule in ((EntropyCollector, thresholds.amax_entropy), (MseCollector, thresholds.amax_mse)):
        c = cls()
        c.observe("relu", x)
        hist = c.histogram("relu")
        top = int(np.floor(x.max() / hist.width))
        counts = hist.counts[: top + 1]
        assert counts[-1] > 0 and not hist.counts[top + 1:].any()
        assert c.compute()["relu"] == pytest.approx(rule(counts, hist.width))
        assert 0.5 * x.max() < c.compute()["relu"] <= x.max() + hist.width


def test_all_zero_tensor_and_zeros_before_data():
    c = EntropyCollector()
    c.observe("z", np.zeros((2, 4)))
    assert c.compute() == {"z": 0.0}
    c.observe("z", np.array([0.0, 1.5, -0.75]))
    hist = c.histogram("z")
    assert hist.counts[0] == 9  # eight earlier zeros kept, plus one
    assert hist.counts.sum() == 11
    m = MinMaxCollector()
    m.observe("z", np.zeros(3))
    assert m.compute() == {"z": 0.0}


def test_integer_and_float64_inputs_and_several_tensors():
    c = PercentileCollector(percentile=100.0)
    c.observe_batch({"a": np.array([[1, -7, 3]], dtype=np.int8), "b": np.array([0.25, -0.5], dtype=np.float64)})
    amax = c.compute()
    assert list(amax) == ["a", "b"] == c.names
    assert amax["a"] == pytest.approx(7.0, abs=c.histogram("a").width)
    assert amax["b"] == pytest.approx(0.5, abs=c.histogram("b").width)


@pytest.mark.parametrize("method", list(Method))
def test_non_finite_values_are_refused_with_the_tensor_name(method):
    c = make_collector(method)
    with pytest.raises(CalibrationError, match="'conv1_out'.*NaN or infinite"):
        c.observe("conv1_out", np.array([1.0, np.nan, 2.0], dtype=np.float32))
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        c.observe("x", np.array([np.inf]))


def test_make_collector_by_name_and_options():
    c = make_collector("percentile", percentile=99.9, num_bins=1024)
    assert isinstance(c, PercentileCollector) and c.percentile == 99.9 and c.num_bins == 1024
    assert c.options == {"num_bins": 1024, "percentile": 99.9}
    assert isinstance(make_collector(Method.ENTROPY), EntropyCollector)
    assert make_collector("mse").method is Method.MSE
    with pytest.raises(CalibrationError, match="unknown calibration method 'kl'.*entropy"):
        make_collector("kl")
    with pytest.raises(CalibrationError, match="percentile do not apply to calibration method minmax"):
        make_collector("minmax", percentile=99.0)
    with pytest.raises(CalibrationError, match="percentile must be in"):
        make_collector("percentile", percentile=0)


def test_non_power_of_two_bins_still_merge_exactly():
    rng = np.random.default_rng(6)
    batches = [rng.normal(0, s, 3000).astype(np.float32) for s in (1.0, 3.0, 50.0)]
    inc, once = PercentileCollector(num_bins=1000), PercentileCollector(num_bins=1000)
    for b in batches:
        inc.observe("t", b)
    once.observe("t", np.concatenate(batches))
    np.testing.assert_array_equal(inc.histogram("t").counts, once.histogram("t").counts)
    assert inc.histogram("t").counts.sum() == 9000


def test_unobserved_tensor_is_named():
    c = EntropyCollector()
    c.observe("a", np.ones(3))
    with pytest.raises(CalibrationError, match="'b' was never observed"):
        c.histogram("b")


def test_tiny_and_huge_values_stay_finite():
    c = EntropyCollector()
    c.observe("tiny", np.array([1e-40, -3e-39, 0.0], dtype=np.float32))
    c.observe("huge", np.array([3e38, -1.0], dtype=np.float32))
    amax = c.compute()
    assert 0.0 < amax["tiny"] < 1e-29 and c.histogram("tiny").counts.sum() == 3
    assert 1e38 < amax["huge"] < np.inf


@pytest.mark.parametrize("method", list(Method))
def test_observe_scratch_memory_is_bounded_and_state_does_not_grow(method):
    import tracemalloc

    x = np.random.default_rng(8).standard_normal(6_000_000).astype(np.float32)  # 24 MB
    batches = [x, x * 3.0, x * 0.5]  # the second widens the histogram
    c = make_collector(method)
    tracemalloc.start()
    try:
        for batch in batches:
            c.observe("t", batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16e6  # observe works in chunks of 2**20 values (~12 MB of scratch), never a copy of x
    if method is not Method.MINMAX:
        assert c.histogram("t").counts.size == 2048
        assert c.histogram("t").counts.sum() == 3 * x.size
