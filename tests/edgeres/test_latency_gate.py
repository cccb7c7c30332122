"""edgeres.latency_gate: the latency verdict on synthetic timing streams, each with the verdict it must give.

A stream is what the gate records: per trial, the artifact's per-call latencies and its probe's, both scaled by
that trial's machine state (the machine's speed times a per-trial drift) and by per-call noise. ``sensitivity``
is how strongly the artifact reacts to the machine's state compared with the probe (1: alike).
"""
from __future__ import annotations

import numpy as np
import pytest

from edgeres.latency_gate import judge_latency
from edgeres.stats import Verdict

TOL = {"median": 0.10, "p99": 0.10}


def stream(seed: int, *, ms: float = 2.0, machine: float = 1.0, sensitivity: float = 1.0, trials: int = 8,
           calls: int = 300, jitter: float = 0.05, drift: float = 0.02, tail: float = 0.0,
           outliers: int = 0) -> tuple[list[list[float]], list[list[float]]]:
    """(artifact trials, probe trials) in ms.

    Args:
        tail: fraction of calls (both artifact and probe) slowed by a heavy-tailed factor 1 + Pareto(1.5).
        outliers: calls of the artifact, in each of its first two trials, made 20x slower (a handful of hiccups).
    """
    rng = np.random.default_rng(seed)
    art, probe = [], []
    for t in range(trials):
        state = machine * rng.lognormal(0.0, drift)
        a = ms * state ** sensitivity * rng.lognormal(0.0, jitter, calls)
        p = 1.5 * state * rng.lognormal(0.0, jitter, calls)
        if tail:
            for x in (a, p):
                hit = rng.random(calls) < tail
                x[hit] *= 1.0 + rng.pareto(1.5, hit.sum())
        if t < 2 and outliers:
            a[:outliers] *= 20.0
        art.append(a.tolist())
        probe.append(p.tolist())
    return art, probe


def verdicts(base: tuple, now: tuple, *, normalised: bool = True) -> dict[str, Verdict]:
    out = judge_latency({1: base[0]}, {1: now[0]}, base_probe={1: base[1]} if normalised else None,
                        now_probe={1: now[1]} if normalised else None, tolerances=TOL)
    return {j.metric.split()[1]: j.verdict for j in out}


def test_stationary_noise_passes() -> None:
    assert verdicts(stream(1), stream(2)) == {"median": Verdict.PASS, "p99": Verdict.PASS}


@pytest.mark.parametrize("machine", [1.6, 0.6])
@pytest.mark.parametrize("sensitivity", [1.0, 0.5, 1.5])
def test_step_change_of_machine_speed_never_fails_an_unchanged_artifact(machine: float, sensitivity: float) -> None:
    """The machine is 1.6x slower (or faster) today; the artifact reacts to it like the probe, half as much, or
    half again as much. It never FAILs; when it reacts like the probe the change is seen and said."""
    got = verdicts(stream(1), stream(2, machine=machine, sensitivity=sensitivity))
    assert Verdict.FAIL not in got.values(), got
    if sensitivity == 1.0:
        assert got == {"median": Verdict.INCONCLUSIVE, "p99": Verdict.INCONCLUSIVE}


def test_step_change_fails_without_the_probe() -> None:
    """Why the probe exists: compared with the stored samples alone, a 1.6x slower machine reads as a
    regression of an unchanged artifact."""
    assert verdicts(stream(1), stream(2, machine=1.6), normalised=False)["median"] is Verdict.FAIL


def test_step_change_is_explained() -> None:
    base, now = stream(1), stream(2, machine=1.6)
    row = judge_latency({1: base[0]}, {1: now[0]}, base_probe={1: base[1]}, now_probe={1: now[1]},
                        tolerances=TOL)[0]
    assert row.machine > 1.4 and "the probe ran 1.6" in row.reason
    assert "machine's change of speed since the baseline" in row.reason and "8 trials" in row.reason


def test_heavy_tailed_stream_does_not_fail() -> None:
    """Both runs have a heavy (Pareto) tail; and, separately, 15 calls 20x slower in each of two of eight trials
    (1.25 % of all calls)."""
    heavy = verdicts(stream(1, tail=0.03), stream(2, tail=0.03))
    assert heavy["median"] is Verdict.PASS and heavy["p99"] is not Verdict.FAIL
    hiccups = verdicts(stream(1), stream(2, outliers=15))  # the two hit trials widen the interval: no FAIL
    assert hiccups["median"] is Verdict.PASS and hiccups["p99"] is not Verdict.FAIL
    pooled_p99 = np.percentile(np.concatenate(stream(2, outliers=15)[0]), 99) / np.percentile(
        np.concatenate(stream(1)[0]), 99)
    assert pooled_p99 > 1.5  # whereas the p99 of all calls pooled, as the gate used to judge, jumps


def test_p99_is_not_judged_from_few_calls() -> None:
    row = judge_latency({1: stream(1, calls=150)[0]}, {1: stream(2, calls=150, ms=4.0)[0]}, tolerances=TOL)[1]
    assert row.verdict is Verdict.INFO and row.ci is None and ">= 200 calls" in row.reason
    few_trials = judge_latency({1: stream(1, trials=4)[0]}, {1: stream(2, trials=4)[0]}, tolerances=TOL)[1]
    assert few_trials.verdict is Verdict.INFO and "had 4 trials" in few_trials.reason


@pytest.mark.parametrize("slower", [1.3, 2.0])
def test_true_regression_fails(slower: float) -> None:
    got = verdicts(stream(1), stream(2, ms=2.0 * slower))
    assert got == {"median": Verdict.FAIL, "p99": Verdict.FAIL}


def test_large_regression_fails_on_a_changed_machine_and_a_small_one_cannot_be_told() -> None:
    """2x stands out of a 1.3x machine change; +30% on a 1.6x slower machine cannot be told from the change."""
    assert verdicts(stream(1), stream(2, ms=4.0, machine=1.3))["median"] is Verdict.FAIL
    assert verdicts(stream(1), stream(2, ms=2.6, machine=1.6))["median"] is Verdict.INCONCLUSIVE


def test_side_by_side_under_heavy_load() -> None:
    """Side by side, each round's load (here up to ~3x, varying round to round) hits both artifacts: the same
    artifact passes, a 2x slower one fails."""
    rng = np.random.default_rng(7)
    loads = rng.lognormal(0.4, 0.4, 8)

    def run(ms: float, seed: int) -> list[list[float]]:
        r = np.random.default_rng(seed)
        return [(ms * load * r.lognormal(0.0, 0.1, 300)).tolist() for load in loads]

    same = judge_latency({1: run(2.0, 1)}, {1: run(2.0, 2)}, side_by_side=True, tolerances=TOL)
    assert [j.verdict for j in same] == [Verdict.PASS, Verdict.PASS]
    slower = judge_latency({1: run(2.0, 1)}, {1: run(4.0, 2)}, side_by_side=True, tolerances=TOL)
    assert [j.verdict for j in slower] == [Verdict.FAIL, Verdict.FAIL]
    assert slower[0].machine == 1.0 and "side by side" in slower[0].reason
