"""Comparison statistics for the regression gate: a seeded bootstrap confidence interval of the ratio of two
latency statistics (median, p99, ...) measured in several trials, and the three-way verdict drawn from it.

Per-sample summaries (min/mean/median/p90/p95/p99/max) live in :mod:`edgeres.timing`; this module only compares.

Timings of one trial share the machine's state of that moment (clocks, other processes), so samples are not
independent across trials. The bootstrap is therefore hierarchical: each resample draws trials with replacement,
then samples with replacement inside each drawn trial, pools them and takes the statistic. With one trial per
side it reduces to the ordinary bootstrap::

    ci = ratio_ci(baseline_trials, current_trials, statistic="median", seed=0)
    ci.ratio, ci.low, ci.high          # e.g. 1.02, 0.99, 1.05  (current / baseline)
    judge(ci, tolerance=0.10)          # Verdict.PASS: the whole interval lies within +10%
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgeres.errors import InputError


class Verdict(str, enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    INFO = "INFO"  # shown, not gated (e.g. a value a new baseline records)


class Statistic(str, enum.Enum):
    """Which statistic of the pooled samples a comparison uses."""

    MEDIAN = "median"
    MEAN = "mean"
    P90 = "p90"
    P95 = "p95"
    P99 = "p99"

    @property
    def quantile(self) -> float | None:
        """The quantile in [0, 1] for percentile statistics, None for the mean."""
        return {"median": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}.get(self.value)


@dataclass(frozen=True)
class RatioCI:
    """``current / baseline`` of one statistic, with its bootstrap interval at ``confidence``."""

    statistic: str
    ratio: float
    low: float
    high: float
    confidence: float
    resamples: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {"statistic": self.statistic, "ratio": self.ratio, "low": self.low, "high": self.high,
                "confidence": self.confidence, "resamples": self.resamples}


def _trials(groups: Sequence[Sequence[float]] | Sequence[float], name: str) -> list[np.ndarray]:
    """Normalise one side to a list of 1-D float arrays (a flat list of numbers is one trial)."""
    if len(groups) and np.isscalar(groups[0]):
        groups = [groups]  # type: ignore[list-item]
    out = [np.asarray(g, dtype=np.float64).ravel() for g in groups]
    out = [g for g in out if g.size]
    if not out:
        raise InputError(f"{name} has no timing samples; measure at least one trial with one call")
    for g in out:
        if not np.all(np.isfinite(g)) or np.any(g <= 0):
            raise InputError(f"{name} timings must be positive finite numbers, got e.g. {g[:3].tolist()}")
    return out


def _stat(values: np.ndarray, statistic: Statistic, axis: int = -1) -> np.ndarray:
    q = statistic.quantile
    if q is None:
        return values.mean(axis=axis)
    return np.quantile(values, q, axis=axis)


def pooled_statistic(groups: Sequence[Sequence[float]] | Sequence[float], statistic: Statistic | str) -> float:
    """The statistic of all samples of all trials pooled (percentiles interpolate linearly, as numpy's default)."""
    trials = _trials(groups, "samples")
    return float(_stat(np.concatenate(trials), Statistic(statistic)))


def _resample(trials: list[np.ndarray], statistic: Statistic, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` bootstrap replicates of the pooled statistic: trials drawn with replacement, then samples within."""
    k = len(trials)
    sizes = np.array([t.size for t in trials])
    picks = rng.integers(0, k, size=(n, k))  # which trial fills each slot of each replicate
    # Each replicate pools k trials; pad to the largest trial so one array holds all replicates, and mask the
    # padding with NaN so the quantile ignores it.
    width = int(sizes.max())
    out = np.empty(n)
    chunk = max(1, 2_000_000 // max(1, k * width))
    padded = np.full((k, width), np.nan)
    for i, t in enumerate(trials):
        padded[i, : t.size] = t
    for start in range(0, n, chunk):
        sel = picks[start:start + chunk]  # (c, k)
        c = sel.shape[0]
        idx = (rng.random((c, k, width)) * sizes[sel][..., None]).astype(np.int64)  # within-trial draws
        drawn = padded[sel[..., None], idx]  # (c, k, width)
        mask = np.arange(width)[None, None, :] >= sizes[sel][..., None]
        drawn[mask] = np.nan
        out[start:start + c] = _nan_statistic(drawn.reshape(c, k * width), statistic)
    return out


def _nan_statistic(rows: np.ndarray, statistic: Statistic) -> np.ndarray:
    """The statistic of each row, ignoring NaN padding; numpy's linear percentile, vectorised (nanquantile
    loops row by row)."""
    valid = (~np.isnan(rows)).sum(axis=1)
    q = statistic.quantile
    if q is None:
        return np.nansum(rows, axis=1) / valid
    ordered = np.sort(rows, axis=1)  # NaN sorts last
    pos = q * (valid - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, valid - 1)
    r = np.arange(rows.shape[0])
    return ordered[r, lo] + (pos - lo) * (ordered[r, hi] - ordered[r, lo])


def ratio_ci(baseline: Sequence[Sequence[float]] | Sequence[float],
             current: Sequence[Sequence[float]] | Sequence[float], *,
             statistic: Statistic | str = Statistic.MEDIAN, confidence: float = 0.95, resamples: int = 2000,
             seed: int = 0) -> RatioCI:
    """Bootstrap confidence interval of ``statistic(current) / statistic(baseline)``.

    Args:
        baseline: timings of the baseline, one list per trial (a flat list is one trial).
        current: timings measured now, the same way.
        statistic: median, mean, p90, p95 or p99 of the pooled samples.
        confidence: two-sided coverage of the percentile interval, in (0, 1).
        resamples: bootstrap replicates per side.
        seed: seeds the generator, so the same inputs always give the same interval.

    Returns:
        The point ratio (from all samples) and the interval's bounds.

    Raises:
        InputError: on an empty side, non-positive timings, or a confidence outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 10:
        raise InputError(f"resamples must be at least 10, got {resamples}")
    stat = Statistic(statistic)
    base, cur = _trials(baseline, "baseline"), _trials(current, "current")
    rng = np.random.default_rng(seed)
    ratios = _resample(cur, stat, resamples, rng) / _resample(base, stat, resamples, rng)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    point = pooled_statistic(cur, stat) / pooled_statistic(base, stat)
    return RatioCI(statistic=stat.value, ratio=float(point), low=float(low), high=float(high),
                   confidence=confidence, resamples=resamples)


def judge(ci: RatioCI, *, tolerance: float) -> Verdict:
    """The verdict for "current is no more than ``tolerance`` (0.10 = 10 %) slower than baseline".

    FAIL only when the whole interval lies beyond ``1 + tolerance``; PASS only when it lies entirely within it;
    INCONCLUSIVE when the interval straddles the limit (the data cannot tell).
    """
    if tolerance < 0:
        raise InputError(f"latency tolerance must be >= 0, got {tolerance}")
    limit = 1.0 + tolerance
    if ci.low > limit:
        return Verdict.FAIL
    if ci.high <= limit:
        return Verdict.PASS
    return Verdict.INCONCLUSIVE
