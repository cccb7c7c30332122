"""Threshold rules on known histograms, against direct, slow implementations written here from NVIDIA's
published Python reference (pytorch-quantization ``calib/histogram.py``)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from calibration import thresholds


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """scipy.stats.entropy(p, q) semantics: normalise both; 0 where p == 0; inf where p > 0 and q == 0."""
    p = p / p.sum()
    q = q / q.sum()
    total = 0.0
    for pi, qi in zip(p, q):
        if pi > 0:
            if qi == 0:
                return float("inf")
            total += pi * np.log(pi / qi)
    return total


def _slow_entropy(hist: np.ndarray, edges: np.ndarray, start_bin: int = 128, nbins: int = 128):
    """A loop-by-loop transcription of the reference ``_compute_amax_entropy`` (8 bits, signed, stride 1)."""
    bins = np.array(hist, dtype=np.int64)
    bins[0] = bins[1]
    divergences, arguments = [], []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        level_sum = np.zeros(nbins)
        level_cnt = np.zeros(nbins)
        for idx, d in enumerate(digitized):
            if d != -1:
                level_sum[d] += bins[idx]
                level_cnt[d] += 1
        q = np.zeros(i)
        for idx, d in enumerate(digitized):
            if d != -1:
                q[idx] = level_sum[d] / level_cnt[d]
        p = np.array(bins[:i], dtype=np.float64)
        p[-1] += bins[i:].sum()
        divergences.append(_kl(p, q))
        arguments.append(i)
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return float(edges[last_argmin + start_bin]), np.array(arguments), divergences


def _known_histograms():
    rng = np.random.default_rng(7)
    relu = np.maximum(rng.standard_normal(200_000), 0)
    heavy = np.abs(rng.standard_t(3, 100_000))
    h1, e1 = np.histogram(relu, bins=400, range=(0, relu.max() * 1.001))
    h2, e2 = np.histogram(heavy, bins=300, range=(0, heavy.max() * 1.001))
    h3 = rng.integers(0, 50, 260)  # with empty bins and a gap before the top bins
    h3[150:250] = 0
    return [(h1, e1), (h2, e2), (h3, np.arange(261) * 0.5)]


@pytest.mark.parametrize("case", range(3))
def test_entropy_matches_the_slow_reference(case):
    hist, edges = _known_histograms()[case]
    expected_amax, args, expected_kl = _slow_entropy(hist, edges)
    cand, kl = thresholds.entropy_divergences(hist)
    np.testing.assert_array_equal(cand, args)
    assert np.array_equal(np.isinf(kl), np.isinf(expected_kl))
    finite = np.isfinite(expected_kl)
    np.testing.assert_allclose(kl[finite], expected_kl[finite], rtol=1e-9, atol=1e-12)
    width = edges[1] - edges[0]
    assert thresholds.amax_entropy(hist, width) == pytest.approx(expected_amax, rel=1e-12)


def test_entropy_chooses_a_clip_for_a_long_tail_and_keeps_a_compact_range():
    # A long sparse tail makes KL prefer clipping it; a histogram filled up to its last bin keeps (almost) all.
    rng = np.random.default_rng(1)
    tail = np.histogram(np.abs(rng.laplace(size=300_000)), bins=2048, range=(0, 16))[0]
    amax_tail = thresholds.amax_entropy(tail, 16 / 2048)
    assert 3.0 < amax_tail < 14.0
    flat = np.full(2048, 100)
    assert thresholds.amax_entropy(flat, 1.0) >= 2040


def test_entropy_and_mse_are_fast_for_2048_bins():
    rng = np.random.default_rng(2)
    hist = np.histogram(np.maximum(rng.standard_normal(1_000_000), 0), bins=2048)[0]
    thresholds.amax_entropy(hist, 1.0)  # warm-up
    for rule in (thresholds.amax_entropy, thresholds.amax_mse):
        times = []
        for _ in range(5):  # best of 5: other processes share these cores
            start = time.perf_counter()
            rule(hist, 1.0)
            times.append(time.perf_counter() - start)
        assert min(times) < 0.05, f"{rule.__name__} took {min(times) * 1e3:.1f} ms"


def _brute_force_mse(counts: np.ndarray, width: float, start_bin: int = 128, max_level: int = 127):
    centres = (np.arange(counts.size) + 0.5) * width
    errors = []
    for k in range(start_bin, counts.size):
        scale = centres[k] / max_level
        quantized = np.minimum(np.rint(centres / scale), max_level) * scale
        errors.append(float(np.sum(counts * (quantized - centres) ** 2)))
    errors = np.array(errors)
    return centres[start_bin + int(np.argmin(errors))], errors


@pytest.mark.parametrize("case", range(3))
def test_mse_matches_brute_force(case):
    hist, edges = _known_histograms()[case]
    width = edges[1] - edges[0]
    expected, errors = _brute_force_mse(hist, width)
    cands = (np.arange(128, hist.size) + 0.5) * width
    np.testing.assert_allclose(thresholds.mse_errors(hist, cands, width=width), errors, rtol=1e-9)
    amax = thresholds.amax_mse(hist, width)
    assert amax == pytest.approx(expected, rel=1e-12)


def test_percentile_of_a_known_histogram_interpolates_within_the_bin():
    counts = np.array([10, 20, 30, 40])  # cumulative 10, 30, 60, 100
    assert thresholds.amax_percentile(counts, 2.0, percentile=45.0) == pytest.approx((2 + 15 / 30) * 2.0)
    assert thresholds.amax_percentile(counts, 2.0, percentile=100.0) == pytest.approx(8.0)
    assert thresholds.amax_percentile(np.zeros(4), 1.0, percentile=50.0) == 0.0
    with pytest.raises(ValueError, match="percentile"):
        thresholds.amax_percentile(counts, 1.0, percentile=101.0)


def test_rules_on_empty_histograms_give_zero():
    for rule in (thresholds.amax_entropy, thresholds.amax_mse, thresholds.amax_percentile):
        assert rule(np.zeros(2048, dtype=np.int64), 1.0) == 0.0


def test_entropy_ties_go_to_the_largest_threshold_as_in_the_reference():
    # Only bins 0 and 1 hold data: every candidate reproduces P exactly (KL 0), and the reference keeps the last.
    hist = np.zeros(256, dtype=np.int64)
    hist[:2] = 5
    expected, _, divergences = _slow_entropy(hist, np.arange(257) * 0.25)
    assert np.all(divergences == 0) and expected == 64.0
    assert thresholds.amax_entropy(hist, 0.25) == 64.0
