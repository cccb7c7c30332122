"""Collectors: reduce the activations seen during calibration to one amax (clipping range of |x|) per tensor.

A collector is separate from whatever runs the model: the runner calls :meth:`Collector.observe` once per
tensor per batch, then :meth:`Collector.compute` gives ``{tensor name: amax}`` (symmetric: amax bounds |x|).

Histogram collectors keep a fixed number of bins per tensor, so memory does not grow with the number of
images. The histogram of |x| covers ``[0, R)`` where ``R`` is always a power of two, the smallest one strictly
above every value seen. When a batch exceeds ``R``, the range doubles as often as needed (``k = 2**e``) and
old bin ``j`` merges into new bin ``j // k``; because the bin index is ``floor(|x| * num_bins / R)`` and
``num_bins / R`` only ever changes by powers of two, the merged histogram equals, count for count, the one
that would have been built over the final range from the start. So results do not depend on batch size or
order, and incremental collection equals one-shot collection on the concatenated data. The price: the values
cover between half and all of the bins; thresholds are searched over the occupied bins only.
"""
from __future__ import annotations

import inspect
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

import numpy as np

from calibration.errors import CalibrationError
from calibration import thresholds

log = logging.getLogger(__name__)

# The smallest histogram range, 2**-100: keeps num_bins / range finite in float32 for denormal-sized values.
_MIN_RANGE_EXP = -100
# Elements processed at once by the histogram path: bounds the scratch memory to ~12 MiB per call.
_CHUNK = 1 << 20


class Method(str, Enum):
    """How activations are reduced to a clipping range."""

    MINMAX = "minmax"  # largest |x| seen
    PERCENTILE = "percentile"  # a high percentile of |x| (default 99.99)
    ENTROPY = "entropy"  # TensorRT EntropyCalibration2: the threshold minimising KL divergence
    MSE = "mse"  # the threshold minimising quantization mean squared error


class Collector(ABC):
    """Accumulates per-tensor statistics batch by batch and reduces them to amax values."""

    method: Method

    @abstractmethod
    def observe(self, name: str, values: np.ndarray) -> None:
        """Accumulate one batch of one tensor (any shape, any real dtype)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Return ``{tensor name: amax}`` (amax >= 0) for every tensor observed."""

    @property
    @abstractmethod
    def names(self) -> list[str]:
        """The tensors observed so far, in first-seen order."""

    def observe_batch(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Observe every tensor of one batch (``{tensor name: values}``)."""
        for name, values in outputs.items():
            self.observe(name, values)

    @property
    def options(self) -> dict[str, Any]:
        """The options this collector was made with (recorded in the ranges' provenance)."""
        return {}


def _as_real_array(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        raise CalibrationError(
            f"tensor {name!r} has dtype {arr.dtype}, not a real number type; it cannot be calibrated"
        )
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float32)
    return arr.reshape(-1)


def _non_finite(name: str) -> CalibrationError:
    return CalibrationError(
        f"tensor {name!r} has NaN or infinite values in a calibration batch; check the model and the "
        "preprocessing of the calibration images"
    )


@dataclass
class _MinMax:
    min: float = math.inf
    max: float = -math.inf
    count: int = 0


class MinMaxCollector(Collector):
    """amax = the largest |x| seen. Also keeps each tensor's min and max (see :meth:`stats`)."""

    method = Method.MINMAX

    def __init__(self) -> None:
        self._state: dict[str, _MinMax] = {}

    def observe(self, name: str, values: np.ndarray) -> None:
        arr = _as_real_array(name, values)
        if arr.size == 0:
            return
        lo, hi = float(arr.min()), float(arr.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise _non_finite(name)
        st = self._state.setdefault(name, _MinMax())
        st.min, st.max, st.count = min(st.min, lo), max(st.max, hi), st.count + arr.size

    def compute(self) -> dict[str, float]:
        return {name: max(abs(st.min), abs(st.max)) for name, st in self._state.items()}

    def stats(self) -> dict[str, dict[str, float]]:
        """``{tensor name: {"min", "max", "count"}}`` of the values observed."""
        return {n: {"min": st.min, "max": st.max, "count": st.count} for n, st in self._state.items()}

    @property
    def names(self) -> list[str]:
        return list(self._state)


@dataclass
class Histogram:
    """Counts of |x| in ``num_bins`` equal bins over ``[0, range)``; ``range`` is a power of two (None: no
    non-zero value seen yet, all values so far are zeros held in ``zeros``)."""

    counts: np.ndarray
    range: float | None = None
    zeros: int = 0
    amax: float = 0.0  # largest |x| seen
    count: int = 0

    @property
    def width(self) -> float:
        """Bin width (0.0 before the first non-zero value)."""
        return self.range / self.counts.size if self.range else 0.0

    def occupied(self) -> np.ndarray:
        """The counts up to the last non-empty bin: the histogram over ``[0, len * width)``."""
        nz = np.flatnonzero(self.counts)
        return self.counts[: nz[-1] + 1] if nz.size else self.counts[:0]

    def grow(self, new_max: float) -> None:
        """Widen the range to the smallest power of two above ``new_max``, merging old bins exactly."""
        _, exp = math.frexp(new_max)  # new_max = m * 2**exp with 0.5 <= m < 1, so 2**exp > new_max
        new_range = math.ldexp(1.0, max(exp, _MIN_RANGE_EXP))
        if self.range is None:
            self.range = new_range
            self.counts[0] += self.zeros
            self.zeros = 0
            return
        factor = int(round(new_range / self.range))
        if factor <= 1:
            return
        n = self.counts.size
        merged = np.bincount(np.arange(n) // factor, weights=self.counts, minlength=n)
        self.counts[:] = merged[:n].astype(np.int64)
        self.range = new_range


class HistogramCollector(Collector):
    """Builds a fixed-size histogram of |x| per tensor; subclasses choose the threshold from it.

    Args:
        num_bins: bins per tensor (2048, as TensorRT).
    """

    method: Method

    def __init__(self, *, num_bins: int = 2048) -> None:
        if num_bins < 2:
            raise CalibrationError(f"num_bins must be at least 2, got {num_bins}")
        self.num_bins = int(num_bins)
        # With a power-of-two bin count, num_bins / range is a power of two: |x| * (num_bins / range) is exact
        # in float32, so every value lands in its true bin and stays below num_bins.
        self._exact = self.num_bins & (self.num_bins - 1) == 0
        self._hist: dict[str, Histogram] = {}

    def observe(self, name: str, values: np.ndarray) -> None:
        arr = _as_real_array(name, values)
        hist = self._hist.get(name)
        if hist is None:
            hist = self._hist[name] = Histogram(np.zeros(self.num_bins, dtype=np.int64))
        if arr.size == 0:
            return
        fbuf = np.empty(min(arr.size, _CHUNK), dtype=np.float32)
        ibuf = np.empty(fbuf.size, dtype=np.intp)
        for start in range(0, arr.size, _CHUNK):
            chunk = arr[start:start + _CHUNK]
            a, idx = fbuf[: chunk.size], ibuf[: chunk.size]
            np.abs(chunk, out=a, casting="same_kind")
            top = float(a.max())
            if not math.isfinite(top):
                raise _non_finite(name)
            hist.count += chunk.size
            hist.amax = max(hist.amax, top)
            if top == 0.0:
                if hist.range is None:
                    hist.zeros += chunk.size
                else:
                    hist.counts[0] += chunk.size
                continue
            if hist.range is None or top >= hist.range:
                hist.grow(top)
            np.multiply(a, np.float32(self.num_bins / hist.range), out=a)
            if not self._exact:  # float32 rounding may reach num_bins for values just below the range
                np.minimum(a, np.float32(self.num_bins - 1), out=a)
            idx[...] = a  # truncation == floor for values >= 0
            hist.counts += np.bincount(idx, minlength=self.num_bins)

    def histogram(self, name: str) -> Histogram:
        """The histogram of one observed tensor."""
        try:
            return self._hist[name]
        except KeyError:
            raise CalibrationError(f"tensor {name!r} was never observed; observed: {sorted(self._hist)}") from None

    @property
    def names(self) -> list[str]:
        return list(self._hist)

    @property
    def options(self) -> dict[str, Any]:
        return {"num_bins": self.num_bins}

    def compute(self) -> dict[str, float]:
        out = {}
        for name, hist in self._hist.items():
            counts = hist.occupied()
            out[name] = self._threshold(counts, hist.width) if hist.amax > 0 else 0.0
            log.debug("%s: %s amax %.6g (max |x| %.6g)", name, self.method.value, out[name], hist.amax)
        return out

    @abstractmethod
    def _threshold(self, counts: np.ndarray, width: float) -> float:
        """amax from the occupied histogram (bin k covers [k * width, (k + 1) * width))."""


class PercentileCollector(HistogramCollector):
    """amax = the ``percentile`` of |x| (interpolated within its bin, so within one bin width of exact).

    Args:
        percentile: in (0, 100]; default 99.99.
        num_bins: histogram bins per tensor.
    """

    method = Method.PERCENTILE

    def __init__(self, *, percentile: float = 99.99, num_bins: int = 2048) -> None:
        super().__init__(num_bins=num_bins)
        if not 0.0 < percentile <= 100.0:
            raise CalibrationError(f"percentile must be in (0, 100], got {percentile}; the usual is 99.99")
        self.percentile = float(percentile)

    @property
    def options(self) -> dict[str, Any]:
        return {**super().options, "percentile": self.percentile}

    def _threshold(self, counts: np.ndarray, width: float) -> float:
        return thresholds.amax_percentile(counts, width, percentile=self.percentile)


class EntropyCollector(HistogramCollector):
    """TensorRT's EntropyCalibration2: the threshold minimising KL(P || Q), see :mod:`calibration.thresholds`.

    Args:
        num_bins: histogram bins per tensor (2048).
        start_bin: smallest candidate threshold, in bins (128).
        num_levels: quantized levels Q is built from (128 for signed INT8).
        stride: step between candidate thresholds, in bins.
    """

    method = Method.ENTROPY

    def __init__(self, *, num_bins: int = 2048, start_bin: int = 128, num_levels: int = 128, stride: int = 1) -> None:
        super().__init__(num_bins=num_bins)
        if num_levels < 2 or start_bin < 1 or stride < 1:
            raise CalibrationError(
                f"entropy options must be num_levels >= 2, start_bin >= 1, stride >= 1; got {num_levels}, "
                f"{start_bin}, {stride}"
            )
        self.start_bin, self.num_levels, self.stride = int(start_bin), int(num_levels), int(stride)

    @property
    def options(self) -> dict[str, Any]:
        return {**super().options, "start_bin": self.start_bin, "num_levels": self.num_levels, "stride": self.stride}

    def _threshold(self, counts: np.ndarray, width: float) -> float:
        return thresholds.amax_entropy(
            counts, width, start_bin=self.start_bin, num_levels=self.num_levels, stride=self.stride
        )


class MseCollector(HistogramCollector):
    """The bin centre (from ``start_bin`` up) that minimises the histogram's symmetric-INT8 quantization MSE.

    Args:
        num_bins: histogram bins per tensor (2048).
        start_bin: smallest candidate threshold, in bins (128).
        max_level: the largest quantized level (127 for INT8).
        stride: step between candidate thresholds, in bins.
    """

    method = Method.MSE

    def __init__(self, *, num_bins: int = 2048, start_bin: int = 128, max_level: int = 127, stride: int = 1) -> None:
        super().__init__(num_bins=num_bins)
        if max_level < 1 or start_bin < 0 or stride < 1:
            raise CalibrationError(
                f"mse options must be max_level >= 1, start_bin >= 0, stride >= 1; got {max_level}, {start_bin}, "
                f"{stride}"
            )
        self.start_bin, self.max_level, self.stride = int(start_bin), int(max_level), int(stride)

    @property
    def options(self) -> dict[str, Any]:
        return {**super().options, "start_bin": self.start_bin, "max_level": self.max_level, "stride": self.stride}

    def _threshold(self, counts: np.ndarray, width: float) -> float:
        return thresholds.amax_mse(
            counts, width, start_bin=self.start_bin, max_level=self.max_level, stride=self.stride
        )


_COLLECTORS: dict[Method, type[Collector]] = {
    Method.MINMAX: MinMaxCollector,
    Method.PERCENTILE: PercentileCollector,
    Method.ENTROPY: EntropyCollector,
    Method.MSE: MseCollector,
}


def parse_method(method: Method | str) -> Method:
    """``method`` as a :class:`Method`, or a CalibrationError listing the valid names."""
    try:
        return Method(method)
    except ValueError:
        valid = ", ".join(m.value for m in Method)
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of: {valid}") from None


def make_collector(method: Method | str, **options: Any) -> Collector:
    """A new collector for ``method``, with that method's options (e.g. ``percentile=99.9``, ``num_bins=4096``).

    Raises:
        CalibrationError: unknown method, or an option that method does not take.
    """
    cls = _COLLECTORS[parse_method(method)]
    params = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        accepted = ", ".join(params) or "none"
        raise CalibrationError(
            f"option(s) {', '.join(unknown)} do not apply to calibration method {cls.method.value}; "
            f"it accepts: {accepted}"
        )
    return cls(**options)
