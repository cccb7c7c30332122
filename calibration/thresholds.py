"""From a histogram of |x| to a clipping threshold (amax): percentile, entropy (KL divergence) and MSE.

Pure functions on ``counts`` (bin ``k`` holds the values in ``[k * width, (k + 1) * width)``), separate from
the collectors that build the histograms, so each rule can be checked on a known histogram.

The entropy rule is TensorRT's EntropyCalibration2 as NVIDIA publishes it in Python
(``pytorch_quantization/calib/histogram.py``, ``_compute_amax_entropy``): bin 0 takes bin 1's count (ReLU
zeros would dominate), and for every candidate ``i`` from ``start_bin`` to the number of bins, the reference
distribution ``P`` = the first ``i`` bins with everything beyond folded into bin ``i - 1`` is compared with
``Q`` = those ``i`` bins merged into ``num_levels`` groups and spread back evenly over each group's non-empty
bins; the threshold is the upper edge of bin ``i - 1`` for the ``i`` with the smallest KL(P || Q) (the largest
such ``i`` on ties). The loop over candidates is replaced by cumulative sums, so the whole search is a few
array operations on a (candidates x levels) matrix: about 2-4 ms for 2048 bins.
"""
from __future__ import annotations

import numpy as np

# Divergences closer than this to the minimum count as ties (the reference picks the last of exact ties; this
# implementation's rounding differs from the loop's by ~1e-14).
_TIE_TOLERANCE = 1e-12


def amax_percentile(counts: np.ndarray, width: float, *, percentile: float = 99.99) -> float:
    """The value below which ``percentile`` % of the histogram's mass lies, interpolated inside its bin.

    Args:
        counts: histogram counts of |x|, bin ``k`` covering ``[k * width, (k + 1) * width)``.
        width: bin width.
        percentile: in [0, 100].

    Returns:
        amax, within one bin width of the exact percentile of the values histogrammed (0.0 for no data).
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    counts = np.asarray(counts, dtype=np.float64)
    cdf = np.cumsum(counts)
    total = cdf[-1] if cdf.size else 0.0
    if total <= 0:
        return 0.0
    target = total * (percentile / 100.0)
    k = int(min(np.searchsorted(cdf, target, side="left"), counts.size - 1))
    below = cdf[k - 1] if k > 0 else 0.0
    frac = (target - below) / counts[k] if counts[k] > 0 else 0.0
    return float((k + min(max(frac, 0.0), 1.0)) * width)


def entropy_divergences(
    counts: np.ndarray, *, start_bin: int = 128, num_levels: int = 128, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """KL(P || Q) of TensorRT's EntropyCalibration2 for every candidate number of bins ``i``.

    Args:
        counts: histogram counts of |x| (at least 2 bins).
        start_bin: the first candidate ``i``.
        num_levels: the number of quantized levels Q is merged into (128 for signed INT8).
        stride: step between candidates.

    Returns:
        ``(candidates, divergences)``: candidates ``i`` in ``[start_bin, len(counts)]`` and KL(P || Q) for each;
        ``inf`` where Q is 0 where P is not (the reference's ``scipy.stats.entropy`` gives ``inf`` there too).
    """
    b = np.array(counts, dtype=np.float64)  # a copy: bin 0 is overwritten below
    n = b.size
    if n < 2:
        raise ValueError(f"entropy calibration needs at least 2 histogram bins, got {n}")
    b[0] = b[1]
    total = b.sum()
    cum = np.concatenate(([0.0], np.cumsum(b)))
    nonzero = np.concatenate(([0], np.cumsum(b > 0)))
    blogb = np.zeros(n)
    np.multiply(b, np.log(b, out=np.zeros(n), where=b > 0), out=blogb)
    cum_blogb = np.concatenate(([0.0], np.cumsum(blogb)))

    cand = np.arange(start_bin, n + 1, stride, dtype=np.int64)
    if cand.size == 0 or total <= 0:
        return cand, np.full(cand.size, np.inf)
    # Bin j of the first i falls into level floor(j * L / i): level q spans bins [ceil(q*i/L), ceil((q+1)*i/L)).
    levels = np.arange(num_levels + 1, dtype=np.int64)
    bounds = (levels[None, :] * cand[:, None] + num_levels - 1) // num_levels
    mass = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]  # per level: sum of its bins (exact: integer counts)
    used = nonzero[bounds[:, 1:]] - nonzero[bounds[:, :-1]]  # per level: number of non-empty bins
    has = mass > 0
    per_bin = np.divide(mass, used, out=np.ones_like(mass), where=has)  # Q on each non-empty bin of a level
    p_log_q = (mass * np.log(per_bin)).sum(axis=1)

    outliers = total - cum[cand]
    last = b[cand - 1]
    p_last = last + outliers
    # Bin i-1 also carries the outliers in P; in Q it holds its level's per-bin value.
    last_q = per_bin[:, -1]
    p_log_q += np.where(last > 0, outliers * np.log(last_q), 0.0)
    p_log_p = cum_blogb[cand - 1] + p_last * np.log(np.where(p_last > 0, p_last, 1.0))
    q_total = cum[cand]
    with np.errstate(divide="ignore"):
        kl = (p_log_p - p_log_q) / total + np.log(q_total / total)
    kl[((outliers > 0) & (last == 0)) | (q_total <= 0)] = np.inf
    return cand, kl


def amax_entropy(
    counts: np.ndarray, width: float, *, start_bin: int = 128, num_levels: int = 128, stride: int = 1
) -> float:
    """TensorRT EntropyCalibration2 threshold: the upper edge of the candidate bin with the smallest KL(P || Q).

    Args:
        counts: histogram counts of |x|, bin ``k`` covering ``[k * width, (k + 1) * width)``.
        width: bin width.
        start_bin: the first candidate number of bins (128 in TensorRT).
        num_levels: quantized levels (128 for signed INT8).
        stride: step between candidates.

    Returns:
        amax = ``i * width`` for the chosen ``i``; the histogram's upper edge when there are fewer than
        ``start_bin`` bins or no finite divergence; 0.0 for no data.
    """
    counts = np.asarray(counts)
    n = counts.size
    if n == 0 or not np.any(counts):
        return 0.0
    if n <= start_bin or n < 2:
        return float(n * width)
    cand, kl = entropy_divergences(counts, start_bin=start_bin, num_levels=num_levels, stride=stride)
    finite = np.isfinite(kl)
    if not finite.any():
        return float(n * width)
    best = kl[finite].min()
    chosen = np.flatnonzero(finite & (kl <= best + _TIE_TOLERANCE))[-1]
    return float(cand[chosen] * width)


def mse_errors(counts: np.ndarray, thresholds: np.ndarray, *, width: float = 1.0, max_level: int = 127) -> np.ndarray:
    """Squared quantization error of the histogram for each threshold (symmetric, ``max_level`` levels).

    Each bin is represented by its centre ``c``; with scale ``s = amax / max_level`` it quantizes to
    ``s * min(round(c / s), max_level)``, so values beyond amax clip to amax. Computed per level from prefix
    sums of ``count``, ``count * c`` and ``count * c**2`` (level ``k`` takes the bins whose centres lie in
    ``[(k - 0.5) s, (k + 0.5) s)``, the last level everything from ``(max_level - 0.5) s`` up), so the cost is
    (thresholds x levels), not (thresholds x bins).

    Args:
        counts: histogram counts of |x|, bin ``k`` covering ``[k * width, (k + 1) * width)``.
        thresholds: candidate amax values, all > 0.
        width: bin width.
        max_level: the largest quantized level (127 for INT8).

    Returns:
        The sum over bins of ``count * (quantized(c) - c) ** 2`` for each threshold.
    """
    w = np.asarray(counts, dtype=np.float64)
    n = w.size
    centre = np.arange(n) + 0.5  # in units of the bin width
    p0 = np.concatenate(([0.0], np.cumsum(w)))
    p1 = np.concatenate(([0.0], np.cumsum(w * centre)))
    p2 = np.concatenate(([0.0], np.cumsum(w * centre * centre)))
    step = np.asarray(thresholds, dtype=np.float64)[:, None] / (width * max_level)  # scale, in bins
    levels = np.arange(max_level + 1, dtype=np.float64)
    # Level k starts at the first bin whose centre j + 0.5 >= (k - 0.5) * step.
    lower = np.ceil((levels - 0.5) * step - 0.5)
    lower[:, 0] = 0
    np.clip(lower, 0, n, out=lower)
    edges = np.concatenate((lower.astype(np.intp), np.full((step.shape[0], 1), n, dtype=np.intp)), axis=1)
    m0 = np.diff(p0[edges], axis=1)
    m1 = np.diff(p1[edges], axis=1)
    m2 = np.diff(p2[edges], axis=1)
    value = levels * step  # the quantized value of level k
    err = m2 - 2.0 * value * m1 + value * value * m0
    return err.sum(axis=1) * (width * width)


def amax_mse(
    counts: np.ndarray, width: float, *, start_bin: int = 128, max_level: int = 127, stride: int = 1
) -> float:
    """The bin centre, from bin ``start_bin`` up, whose use as amax gives the smallest quantization MSE.

    Args:
        counts: histogram counts of |x|, bin ``k`` covering ``[k * width, (k + 1) * width)``.
        width: bin width.
        start_bin: the first candidate bin (as NVIDIA's ``_compute_amax_mse``).
        max_level: the largest quantized level (127 for INT8).
        stride: step between candidates.

    Returns:
        amax = ``(k + 0.5) * width`` for the best bin ``k`` (the first on ties); 0.0 for no data.
    """
    counts = np.asarray(counts)
    n = counts.size
    if n == 0 or not np.any(counts):
        return 0.0
    first = min(start_bin, n - 1)
    thresholds = (np.arange(first, n, stride) + 0.5) * width
    errors = mse_errors(counts, thresholds, width=width, max_level=max_level)
    return float(thresholds[int(np.argmin(errors))])
