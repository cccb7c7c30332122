"""Latency statistics: min/mean/median/p90/p95/p99/max of a list of timings, per stage, plus a text table.

Numpy only, so `infer`, `bench` and `check` all summarise timings the same way::

    stats = summarize([12.1, 11.8, 13.0])            # LatencyStats(count=3, min_ms=11.8, ...)
    stages = stage_summary({"preprocess": pre_ms, "inference": inf_ms})
    print(stats_table(stages))
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from edgeres.errors import InputError

STAT_FIELDS = ("min", "mean", "median", "p90", "p95", "p99", "max")


@dataclass(frozen=True)
class LatencyStats:
    """Summary of ``count`` timings in milliseconds (percentiles interpolate linearly, as numpy's default)."""

    count: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyStats:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def summarize(samples_ms: Iterable[float]) -> LatencyStats:
    """Summarise timings in milliseconds.

    Args:
        samples_ms: one value per timed call; at least one.

    Returns:
        The statistics, all in milliseconds.

    Raises:
        InputError: when there are no samples or a sample is not finite.
    """
    values = np.asarray(list(samples_ms), dtype=np.float64)
    if values.size == 0:
        raise InputError("no timings to summarise; time at least one call")
    if not np.all(np.isfinite(values)):
        raise InputError(f"timings must be finite numbers, got {values[~np.isfinite(values)][:3].tolist()}")
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    return LatencyStats(
        count=int(values.size), min=float(values.min()), mean=float(values.mean()), median=float(p50),
        p90=float(p90), p95=float(p95), p99=float(p99), max=float(values.max()), std=float(values.std()),
    )


def stage_summary(stages: Mapping[str, Sequence[float | None]]) -> dict[str, LatencyStats]:
    """Summarise several stages at once, keeping their order.

    A stage whose samples are all None (the backend cannot measure it) is left out; a stage with some None
    values is summarised over the measured ones.
    """
    out: dict[str, LatencyStats] = {}
    for name, samples in stages.items():
        measured = [float(v) for v in samples if v is not None]
        if measured:
            out[name] = summarize(measured)
    return out


def throughput(items: int, seconds: float) -> float:
    """Items per second; 0 when no time has passed."""
    return items / seconds if seconds > 0 else 0.0


def stats_table(stages: Mapping[str, LatencyStats], *, unit: str = "ms") -> str:
    """A fixed-width text table: one row per stage, columns n and min ... max."""
    headers = ["stage", "n", *(f"{f} {unit}" for f in STAT_FIELDS)]
    rows = [[name, str(s.count), *(f"{getattr(s, f):.2f}" for f in STAT_FIELDS)] for name, s in stages.items()]
    return format_table(headers, rows)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-align the first column, right-align the others; columns as wide as their widest cell."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])
