"""Latency statistics against numpy's own percentiles, stage summaries and the table."""
from __future__ import annotations

import numpy as np
import pytest

from edgeres.errors import InputError
from edgeres.timing import LatencyStats, format_table, stage_summary, stats_table, summarize, throughput


def test_summarize_matches_numpy_percentiles() -> None:
    rng = np.random.default_rng(0)
    samples = rng.lognormal(mean=2.0, sigma=0.5, size=997)
    s = summarize(samples.tolist())
    assert s.count == 997
    assert s.min == pytest.approx(samples.min())
    assert s.max == pytest.approx(samples.max())
    assert s.mean == pytest.approx(samples.mean())
    assert s.std == pytest.approx(samples.std())
    for name, q in (("median", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert getattr(s, name) == pytest.approx(np.percentile(samples, q)), name
    assert s.min <= s.median <= s.p90 <= s.p95 <= s.p99 <= s.max


def test_summarize_small_known_values() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.min, s.median, s.max, s.mean) == (1.0, 2.5, 4.0, 2.5)
    assert s.p90 == pytest.approx(3.7)  # linear interpolation: 1 + 0.9 * 3
    one = summarize([5.0])
    assert one.min == one.p99 == one.max == 5.0


def test_summarize_refuses_empty_and_nan() -> None:
    with pytest.raises(InputError, match="no timings"):
        summarize([])
    with pytest.raises(InputError, match="finite"):
        summarize([1.0, float("nan")])


def test_stage_summary_keeps_order_and_drops_unmeasured_stages() -> None:
    stages = stage_summary({"preprocess": [3.0, 1.0], "h2d": [None, None], "inference": [2.0, None, 4.0]})
    assert list(stages) == ["preprocess", "inference"]
    assert stages["inference"].count == 2 and stages["inference"].mean == 3.0


def test_round_trip_and_table() -> None:
    s = summarize([1.0, 2.0])
    assert LatencyStats.from_dict(s.to_dict()) == s
    table = stats_table({"inference": s})
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["stage", "n", "min"]
    assert lines[2].split()[:3] == ["inference", "2", "1.00"]
    assert format_table(["a", "b"], [["x", "10"], ["yy", "2"]]).splitlines()[2] == "x   10"
    assert throughput(10, 2.0) == 5.0 and throughput(3, 0.0) == 0.0
