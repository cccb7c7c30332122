"""edgeres.stats: pooled statistics against numpy, the hierarchical bootstrap's coverage and the verdict rule; the
trial-level values, their bootstrap and the verdict widened by a machine's change of speed."""
from __future__ import annotations

import numpy as np
import pytest

from edgeres.errors import InputError
from edgeres.stats import (
    RatioCI, Statistic, Verdict, _nan_statistic, judge, judge_band, pooled_statistic, ratio_ci, trial_ratio_ci,
    trial_values,
)

KNOWN = [[3.0, 1.0, 4.0, 1.0, 5.0], [9.0, 2.0, 6.0], [5.0, 3.0, 5.0, 8.0]]


@pytest.mark.parametrize("stat, q", [("median", 50), ("p90", 90), ("p95", 95), ("p99", 99)])
def test_pooled_percentiles_match_numpy(stat: str, q: float) -> None:
    assert pooled_statistic(KNOWN, stat) == pytest.approx(np.percentile(np.concatenate(KNOWN), q))


def test_pooled_mean_and_a_flat_list_as_one_trial() -> None:
    assert pooled_statistic(KNOWN, "mean") == pytest.approx(np.mean(np.concatenate(KNOWN)))
    assert pooled_statistic([4.0, 1.0, 2.0], "median") == 2.0


def test_nan_padded_rows_match_numpy_nanquantile() -> None:
    rng = np.random.default_rng(3)
    rows = rng.random((6, 11))
    for i, keep in enumerate([11, 1, 2, 5, 7, 10]):
        rows[i, keep:] = np.nan
    for stat in Statistic:
        expected = [np.nanmean(r) if stat.quantile is None else np.nanquantile(r, stat.quantile) for r in rows]
        np.testing.assert_allclose(_nan_statistic(rows, stat), expected, rtol=1e-12)


def test_point_ratio_is_the_ratio_of_pooled_statistics() -> None:
    base = [[10.0, 11.0, 12.0], [10.5, 13.0]]
    cur = [[12.0, 13.0], [14.0, 12.5, 13.5]]
    ci = ratio_ci(base, cur, statistic="median", resamples=200)
    assert ci.ratio == pytest.approx(np.median(np.concatenate(cur)) / np.median(np.concatenate(base)))
    assert ci.low <= ci.ratio <= ci.high


def test_seeded_interval_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    base, cur = rng.lognormal(0, 0.2, (4, 50)).tolist(), rng.lognormal(0.1, 0.2, (4, 50)).tolist()
    assert ratio_ci(base, cur, seed=7) == ratio_ci(base, cur, seed=7)
    assert ratio_ci(base, cur, seed=7) != ratio_ci(base, cur, seed=8)


@pytest.mark.parametrize("stat", ["median", "p90"])
def test_interval_covers_the_true_ratio_at_about_the_stated_rate(stat: str) -> None:
    """Synthetic trials: each trial shifts by its own machine-state factor; the true ratio of the population
    statistic is 1.2. A 90 % interval must cover it in most of 40 independent experiments."""
    rng = np.random.default_rng(42)
    covered = 0
    for _ in range(40):
        def side(scale: float) -> list[list[float]]:
            return [(scale * rng.lognormal(rng.normal(0, 0.02), 0.15, 60)).tolist() for _ in range(5)]

        ci = ratio_ci(side(10.0), side(12.0), statistic=stat, confidence=0.90, resamples=400,
                      seed=int(rng.integers(1 << 30)))
        covered += ci.low <= 1.2 <= ci.high
    assert covered >= 32  # >= 80 % observed for a nominal 90 % (binomial sd ~ 1.9 experiments)


def test_trial_to_trial_drift_widens_the_interval() -> None:
    """Pooling hides machine-state drift between trials; the hierarchical bootstrap must not."""
    rng = np.random.default_rng(1)
    steady = [rng.normal(10, 0.3, 100).tolist() for _ in range(5)]
    drifting = [(f * np.asarray(t)).tolist() for f, t in zip([0.8, 0.9, 1.0, 1.1, 1.2], steady)]
    narrow = ratio_ci(steady, steady, resamples=400)
    wide = ratio_ci(drifting, drifting, resamples=400)
    assert (wide.high - wide.low) > 5 * (narrow.high - narrow.low)


def _ci(low: float, high: float) -> RatioCI:
    return RatioCI("median", (low + high) / 2, low, high, 0.95, 100)


@pytest.mark.parametrize("low, high, verdict", [
    (0.95, 1.05, Verdict.PASS), (0.90, 1.10, Verdict.PASS), (1.12, 1.30, Verdict.FAIL),
    (1.05, 1.15, Verdict.INCONCLUSIVE), (0.80, 1.40, Verdict.INCONCLUSIVE),
])
def test_judge_passes_fails_or_says_inconclusive(low: float, high: float, verdict: Verdict) -> None:
    assert judge(_ci(low, high), tolerance=0.10) is verdict


def test_regression_clear_regression_and_overlap_on_synthetic_trials() -> None:
    rng = np.random.default_rng(5)
    base = [rng.normal(10, 0.2, 80).tolist() for _ in range(4)]
    same = [rng.normal(10, 0.2, 80).tolist() for _ in range(4)]
    slower = [rng.normal(13, 0.2, 80).tolist() for _ in range(4)]
    noisy = [(f * rng.normal(10.5, 0.2, 80)).tolist() for f in (0.6, 0.9, 1.3, 1.8)]
    assert judge(ratio_ci(base, same), tolerance=0.10) is Verdict.PASS
    assert judge(ratio_ci(base, slower), tolerance=0.10) is Verdict.FAIL
    assert judge(ratio_ci(base, noisy), tolerance=0.10) is Verdict.INCONCLUSIVE


def test_bad_inputs_raise_input_errors() -> None:
    with pytest.raises(InputError, match="no timing samples"):
        ratio_ci([], [[1.0]])
    with pytest.raises(InputError, match="positive finite"):
        ratio_ci([[1.0, -2.0]], [[1.0]])
    with pytest.raises(InputError, match="confidence"):
        ratio_ci([[1.0]], [[1.0]], confidence=1.5)
    with pytest.raises(ValueError):
        ratio_ci([[1.0]], [[1.0]], statistic="p42")
    with pytest.raises(InputError, match="tolerance"):
        judge(_ci(1.0, 1.0), tolerance=-0.1)


# --- trial-level comparison ------------------------------------------------------------------------------------

def test_trial_values_divide_each_trial_by_its_reference_trial() -> None:
    job = [[3.0, 1.0, 2.0], [10.0, 30.0, 20.0, 40.0]]
    ref = [[1.0, 1.0], [5.0, 5.0, 5.0]]
    np.testing.assert_allclose(trial_values(job, ref, "median"), [2.0, 5.0])
    np.testing.assert_allclose(trial_values(job, None, "median"), [2.0, 25.0])
    np.testing.assert_allclose(trial_values(job, None, "p99"), [np.percentile(j, 99) for j in job])
    with pytest.raises(InputError, match="same rounds"):
        trial_values(job, ref[:1], "median")


def test_trial_ratio_ci_point_pairing_and_seed() -> None:
    rng = np.random.default_rng(2)
    base, cur = rng.lognormal(0, 0.1, 8), 1.3 * rng.lognormal(0, 0.1, 8)
    ci = trial_ratio_ci(base, cur, seed=3)
    assert ci.ratio == pytest.approx(np.median(cur) / np.median(base)) and ci.low < ci.ratio < ci.high
    assert ci == trial_ratio_ci(base, cur, seed=3) != trial_ratio_ci(base, cur, seed=4)
    paired = trial_ratio_ci([], cur / base, paired=True)
    assert paired.ratio == pytest.approx(np.median(cur / base)) and paired.low <= paired.ratio <= paired.high
    with pytest.raises(InputError, match="no trials"):
        trial_ratio_ci([], [1.0])
    with pytest.raises(InputError, match="positive finite"):
        trial_ratio_ci([1.0, 0.0], [1.0])


@pytest.mark.parametrize("low, high, machine, verdict", [
    (0.95, 1.05, 1.0, Verdict.PASS), (1.15, 1.30, 1.0, Verdict.FAIL), (1.05, 1.15, 1.0, Verdict.INCONCLUSIVE),
    (0.95, 1.05, 1.2, Verdict.INCONCLUSIVE),  # within tolerance, but not beyond the machine's change
    (1.15, 1.30, 1.2, Verdict.INCONCLUSIVE),  # beyond tolerance, but not beyond the machine's change
    (1.40, 1.60, 1.2, Verdict.FAIL), (1.40, 1.60, 1 / 1.2, Verdict.FAIL),  # a faster machine widens alike
    (0.80, 0.90, 1 / 1.2, Verdict.PASS),
])
def test_judge_band_widens_by_the_machines_change(low: float, high: float, machine: float, verdict: Verdict) -> None:
    assert judge_band(_ci(low, high), tolerance=0.10, machine=machine) is verdict


def test_judge_band_without_a_machine_change_is_judge() -> None:
    for low, high in [(0.9, 1.0), (1.05, 1.2), (1.2, 1.3)]:
        assert judge_band(_ci(low, high), tolerance=0.1) is judge(_ci(low, high), tolerance=0.1)
    with pytest.raises(InputError, match="machine-speed"):
        judge_band(_ci(1.0, 1.0), tolerance=0.1, machine=0.0)
