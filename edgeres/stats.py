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

The gate itself judges trial-level values (:func:`trial_values`, :func:`trial_ratio_ci`, :func:`judge_band`): each
trial's statistic of the artifact, divided by the same trial's statistic of a machine-speed probe timed right beside
it (or of the baseline's artifact, side by side), the median over trials, and a bootstrap over trials. A trial is
the unit that shares the machine's state, so resampling trials (a cluster bootstrap) carries both the noise inside a
trial and the drift between trials; the median over trials is what a burst of contention confined to a minority of
trials cannot move.
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


# --- trial-level comparison (the gate's latency verdict) -------------------------------------------------------

TAIL_MIN_TRIALS = 5  # the median over >= 5 trials outvotes two trials hit by a burst of contention
TAIL_MIN_CALLS = 200  # per trial: a trial's p99 then sits below >= 2 slower calls, so no single call sets it


def trial_values(job: Sequence[Sequence[float]], reference: Sequence[Sequence[float]] | None,
                 statistic: Statistic | str) -> np.ndarray:
    """Each trial's ``statistic`` of ``job``, divided by the same statistic of ``reference``'s trial of the same
    round (a probe, or the baseline's artifact side by side); without a reference, the statistic itself.

    Raises:
        InputError: on an empty trial, non-positive timings, or trial counts that differ.
    """
    stat = Statistic(statistic)
    mine = _trials(job, "job")
    values = np.array([float(_stat(t, stat)) for t in mine])
    if reference is None:
        return values
    ref = _trials(reference, "reference")
    if len(ref) != len(mine):
        raise InputError(f"{len(mine)} trials of the job but {len(ref)} of its reference; time them in the same rounds")
    return values / np.array([float(_stat(t, stat)) for t in ref])


def trial_ratio_ci(baseline: Sequence[float], current: Sequence[float], *, paired: bool = False,
                   confidence: float = 0.95, resamples: int = 4000, seed: int = 0) -> RatioCI:
    """Bootstrap interval of ``median(current) / median(baseline)`` over per-trial values.

    Args:
        baseline: one value per trial of the baseline (e.g. from :func:`trial_values`).
        current: one value per trial measured now.
        paired: ``current`` already holds per-round ratios (side by side: the candidate over the baseline's
            artifact of the same round); ``baseline`` is then ignored and the ratio is ``median(current)``.
        confidence: two-sided coverage of the percentile interval, in (0, 1).
        resamples: bootstrap replicates.
        seed: seeds the generator, so the same inputs always give the same interval.

    Raises:
        InputError: on an empty side, non-positive values, or a confidence outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    cur = _values(current, "current")
    rng = np.random.default_rng(seed)

    def replicates(v: np.ndarray) -> np.ndarray:
        return np.median(v[rng.integers(0, v.size, size=(resamples, v.size))], axis=1)

    if paired:
        point, ratios = float(np.median(cur)), replicates(cur)
    else:
        base = _values(baseline, "baseline")
        point = float(np.median(cur) / np.median(base))
        ratios = replicates(cur) / replicates(base)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return RatioCI(statistic="median over trials", ratio=point, low=float(low), high=float(high),
                   confidence=confidence, resamples=resamples)


def _values(values: Sequence[float], name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if not v.size:
        raise InputError(f"{name} has no trials; measure at least one")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InputError(f"{name} trial values must be positive finite numbers, got e.g. {v[:3].tolist()}")
    return v


def judge_band(ci: RatioCI, *, tolerance: float, machine: float = 1.0) -> Verdict:
    """The verdict for "no more than ``tolerance`` slower", when the ratio was normalised by a machine that ran
    ``machine`` times slower now than at baseline (the probe's ratio; 1.0 side by side or when unknown).

    Contention does not slow every workload alike, so a normalisation by ``machine`` is trusted only to within
    its own size: the interval is widened by the factor ``max(machine, 1/machine)`` on both sides. FAIL when even
    the widened interval lies beyond ``1 + tolerance``, PASS when it lies within, else INCONCLUSIVE. With
    ``machine == 1`` this is :func:`judge`.
    """
    if tolerance < 0:
        raise InputError(f"latency tolerance must be >= 0, got {tolerance}")
    if not machine > 0 or not np.isfinite(machine):
        raise InputError(f"the machine-speed ratio must be a positive number, got {machine}")
    band = max(machine, 1.0 / machine)
    limit = 1.0 + tolerance
    if ci.low / band > limit:
        return Verdict.FAIL
    if ci.high * band <= limit:
        return Verdict.PASS
    return Verdict.INCONCLUSIVE
