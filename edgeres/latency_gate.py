"""The latency half of the regression gate: timed trials of the artifact interleaved with a machine-speed probe
(or with the baseline's artifact, side by side), and the verdict drawn from them.

Why not compare today's samples with the stored ones directly: a bootstrap interval covers the noise *within* one
run, not a machine that is busier today than on the baseline's day, so an unchanged artifact FAILs on a busy CI
runner. What the peers do, and what is taken from each:

* asv ``continuous`` times the base and the candidate revision in one session on one machine (``--interleave-rounds``
  alternates them), and ``asv compare`` calls a change only when it is both beyond ``--factor`` and statistically
  significant (Mann-Whitney, else non-overlapping 99 % intervals), otherwise "not significant". Here: side by side
  is the default whenever the baseline's artifact is still on disk, rounds alternate, and a verdict needs the whole
  interval beyond the tolerance.
* pyperf records the machine's load average, CPU model and frequency beside every result, calibrates its loops
  once and reuses the calibration, warns when a result "may be unstable" (a wide spread), and ``compare_to`` says
  "not significant" rather than guess. Here: the probe is sized once, when the baseline is written, and rebuilt
  from the record; load average, busy and steal fractions are recorded and shown; a spread too wide to decide is
  INCONCLUSIVE with the spread named.
* pytest-benchmark's ``--benchmark-compare-fail=median:10%`` fails on a plain threshold against a stored run and
  warns when the machine info differs; that is exactly the false FAIL this module avoids on a busy machine, so
  only its per-statistic tolerance (median, p99) is kept.

Stored baseline: each round times the artifact at one batch size and, right beside it, the probe sized for that
batch (:mod:`edgeres.probe`); a trial's value is the artifact's statistic over the probe's. The ratio now/baseline
of the median over trials is judged by :func:`edgeres.stats.judge_band`, which widens the bootstrap interval by
how much the probe itself changed (its point estimate), so the normalisation is trusted only as far as it is small.
Measured here, an unchanged ResNet-20 at batch 1 read 1.16 relative to its probe in one run and 0.94 in another
(each within +/-8 % over its trials): contention does not slow every workload alike, so the probe is used to refuse
to blame the artifact for the machine, not to excuse the artifact. As a consequence the normalisation can turn a
FAIL of the plain comparison into INCONCLUSIVE (the machine got slower) but can never create a FAIL or a PASS the
plain comparison would not also give, give or take the bootstrap's noise.

Side by side: each round times the candidate and the baseline's artifact one after the other; a trial's value is
their ratio, the machine's state cancels within the round, and no widening is needed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgeres.backends.base import Runner
from edgeres.baseline import Baseline, find_baseline_artifact
from edgeres.benchmarking import ArtifactInfo, input_batch, parse_batches, time_calls
from edgeres.errors import EdgeresError, GateInputError
from edgeres.probe import ProbeSpec, calibrate_probe, cpu_fractions, machine_state, open_probe
from edgeres.stats import (
    TAIL_MIN_CALLS, TAIL_MIN_TRIALS, RatioCI, Statistic, Verdict, judge_band, trial_ratio_ci, trial_values,
)

log = logging.getLogger(__name__)

TRIAL_MIN_ITERATIONS = 20  # per trial and batch size
TRIAL_MAX_ITERATIONS = 1000  # enough for median and p99; keeps the baseline small
PROBE_DEPTH_RANGE = (4, 24)  # the probe has as many convolutions as the artifact, within this range
PROBE_DEPTH_DEFAULT = 16  # when the artifact's graph cannot be read (an engine)


@dataclass(frozen=True)
class LatencyPlan:
    """How the gate times latency: which batch sizes, how many alternating trials, and how long each.

    Validated when made (:class:`GateInputError` names the bad value), recorded in the baseline's
    ``latency.settings`` from :meth:`to_dict` and read back with :meth:`from_dict`, which fills what an older
    baseline lacks with the defaults::

        plan = LatencyPlan(batches=(1, 8), trials=7, trial_duration_s=1.0)
        check("m.int8.onnx", baseline="b.json", plan=plan)
    """

    batches: tuple[int, ...] | None = None  # None: the baseline's; for a new baseline 1 and the profile's opt
    trials: int = 5  # alternating trials (rounds); more trials narrow the intervals
    trial_duration_s: float | None = 0.5  # timed wall time per trial and batch size (at least 20 calls)
    trial_iterations: int | None = None  # timed calls per trial and batch size, instead of a duration
    warmup_s: float = 0.5  # untimed calls before the trials, shared by every runner and batch size
    transfers: bool = True  # False times the compute stage only (a runner's own stage times)

    def __post_init__(self) -> None:
        if self.batches is not None:
            try:
                object.__setattr__(self, "batches", parse_batches(self.batches))
            except EdgeresError as exc:
                raise GateInputError(f"latency plan: {exc}") from None
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise GateInputError(f"latency plan: trials must be an integer >= 1, got {self.trials!r}")
        if self.trial_iterations is not None and (isinstance(self.trial_iterations, bool)
                                                  or not isinstance(self.trial_iterations, int)
                                                  or self.trial_iterations < 1):
            raise GateInputError(f"latency plan: trial iterations must be an integer >= 1 (or None for a "
                                 f"duration), got {self.trial_iterations!r}")
        duration = self.trial_duration_s
        if self.trial_iterations is None and (duration is None or not 0 < duration < math.inf):
            raise GateInputError(f"latency plan: the trial duration must be > 0 s and finite (or give trial "
                                 f"iterations), got {duration!r}; e.g. --trial-duration 500ms")
        if not self.warmup_s >= 0:
            raise GateInputError(f"latency plan: warmup must be >= 0 s, got {self.warmup_s!r}")

    def with_batches(self, batches: Sequence[int]) -> LatencyPlan:
        """The same plan at these batch sizes (the ones resolved from the baseline or the profile)."""
        return dataclasses.replace(self, batches=tuple(batches))

    def to_dict(self) -> dict[str, Any]:
        return {"batches": list(self.batches) if self.batches is not None else None, "trials": self.trials,
                "trial_duration_s": self.trial_duration_s, "trial_iterations": self.trial_iterations,
                "warmup_s": self.warmup_s, "transfers": self.transfers}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LatencyPlan:
        """A plan from a baseline's ``latency.settings``; keys an older baseline lacks take their defaults and
        keys this plan does not know (``spinning``) are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def differences(self, other: LatencyPlan) -> list[str]:
        """``"trials 5 -> 3"`` for each setting (batch sizes aside) that differs from ``other``."""
        return [f"{name} {getattr(other, name)!r} -> {getattr(self, name)!r}" for name in
                ("trials", "trial_duration_s", "trial_iterations", "warmup_s", "transfers")
                if getattr(self, name) != getattr(other, name)]


@dataclass
class LatencyTrials:
    """Per-call latencies (ms) as ``{batch: [trial samples, ...]}``: one dict per runner, and the probe's."""

    runners: list[dict[int, list[list[float]]]]
    probe: dict[int, list[list[float]]] | None
    machine: dict[str, Any]  # machine_state() before and after, and the busy/steal fractions between


def _conv_count(artifact: str | Path | None) -> int | None:
    if artifact is None or Path(artifact).suffix != ".onnx":
        return None
    try:
        import onnx

        graph = onnx.load(str(artifact), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - the count only sizes the probe
        log.debug("cannot count the convolutions of %s: %s", artifact, exc)
        return None
    return sum(n.op_type in ("Conv", "QLinearConv", "ConvInteger") for n in graph.node)


def size_probes(runner: Runner, batches: Sequence[int], *, artifact: str | Path | None = None,
                spinning: bool = False) -> dict[int, ProbeSpec]:
    """One probe per batch size, each as deep as the artifact has convolutions and as large as makes one call
    take about as long as one call of the artifact at that batch: a call much shorter than the scheduler's time
    slice is barely slowed by a busy neighbour (only its tail is), a longer one is slowed throughout."""
    count = _conv_count(artifact)
    depth = int(np.clip(count, *PROBE_DEPTH_RANGE)) if count is not None else PROBE_DEPTH_DEFAULT
    threads = getattr(runner, "threads", None)
    specs = {}
    for b in batches:
        calls = time_calls(runner, input_batch(runner.card, b), duration_s=0.2, min_iterations=7, warmup_s=0.1)
        target = statistics.median(calls.latency_ms)
        specs[b] = calibrate_probe(target_ms=target, threads=threads, depth=depth, spinning=spinning)
        log.info("probe for batch %d: %s (artifact %.3f ms per call)", b, specs[b].label, target)
    return specs


def measure_latency(runners: Sequence[Runner], plan: LatencyPlan, *, probes: Mapping[int, Any] | None = None,
                    quiet: bool = False) -> LatencyTrials:
    """Time every runner (and the probe of that batch size, when given) at each of ``plan``'s batch sizes,
    ``plan.trials`` times.

    Within a trial of one batch size the runners and the probe alternate call by call (the order flipping every
    call), so a burst of contention lands on all of them alike; trials of different batch sizes alternate their
    order round by round, so slow drifts of the machine touch every batch size alike.

    Raises:
        GateInputError: ``plan`` names no batch sizes (resolve them first, :meth:`LatencyPlan.with_batches`).
    """
    from edgeres.progress import Progress

    if not plan.batches:
        raise GateInputError("the latency plan names no batch sizes to time")
    batches, trials, warmup_s = list(plan.batches), plan.trials, plan.warmup_s
    probes = dict(probes or {})
    inputs = {b: input_batch(runners[0].card, b) for b in batches}

    def group(b: int) -> list[tuple[Any, np.ndarray]]:
        return [(r, inputs[b]) for r in runners] + ([(probes[b], probes[b].input)] if b in probes else [])

    for b in batches:  # warm every runner, probe and shape
        for target in group(b):
            time_calls(*target, iterations=1, warmup_s=warmup_s / max(1, len(batches) * len(group(b))))
    out: list[dict[int, list[list[float]]]] = [{b: [] for b in batches} for _ in runners]
    probe_out: dict[int, list[list[float]]] = {b: [] for b in probes}
    before = machine_state()
    with Progress(trials * len(batches), "latency trials", unit="trial", quiet=quiet) as bar:
        for t in range(trials):
            for b in (batches if t % 2 == 0 else list(reversed(batches))):
                samples = _time_group(group(b), duration_s=None if plan.trial_iterations else plan.trial_duration_s,
                                      iterations=plan.trial_iterations, transfers=plan.transfers)
                for i in range(len(runners)):
                    out[i][b].append(samples[i])
                if b in probes:
                    probe_out[b].append(samples[-1])
                bar.update(1, batch=b)
    after = machine_state()
    machine = {"before": before, "after": after, "fractions": cpu_fractions(before, after)}
    return LatencyTrials(runners=out, probe=probe_out or None, machine=machine)


def _time_group(targets: list[tuple[Any, np.ndarray]], *, duration_s: float | None, iterations: int | None,
                transfers: bool) -> list[list[float]]:
    """Per-call latencies (ms) of each target, calling them in turn (order flipped every round) until
    ``iterations`` rounds, or ``duration_s`` and at least :data:`TRIAL_MIN_ITERATIONS` rounds, have passed."""
    from edgeres import benchmarking as bench

    clock = bench._clock  # the timing loops' clock, looked up now (tests swap in a virtual one)
    out: list[list[float]] = [[] for _ in targets]
    order = list(range(len(targets)))
    begin = clock()
    while True:
        for k in order:
            runner, batch = targets[k]
            t0 = clock()
            runner.infer(batch)
            ms = (clock() - t0) * 1e3
            st = getattr(runner, "last_stage_times", None)
            out[k].append(round(ms if transfers or st is None else st.compute_ms, 5))
        order.reverse()
        n = len(out[0])
        if iterations is not None:
            if n >= iterations:
                break
        elif (clock() - begin >= duration_s and n >= TRIAL_MIN_ITERATIONS) or n >= TRIAL_MAX_ITERATIONS:
            break
    return out


# --- what the gate times, and how -----------------------------------------------------------------------------

def choose_side_by_side(asked: bool | None, base: Baseline | None, info: ArtifactInfo) -> tuple[bool, str]:
    """Whether to time the baseline's artifact beside ``info``'s, and why (for the notes)."""
    if base is None:
        return False, ""
    if asked is not None:
        return asked, "asked for" if asked else "--no-side-by-side"
    path, why = find_baseline_artifact(base)
    if path is not None and base.artifact.sha256 == info.sha256:
        return False, f"{why}, but it is the artifact being checked (a file timed against itself tells nothing)"
    return path is not None, why


def spinning_for(base: Baseline | None) -> bool:
    """Whether ONNX Runtime's idle threads spin while latency is timed: not for a new baseline (on a shared
    machine spinning pools fight each other and any neighbour: one artifact measured 2.0-2.4 ms per call without
    spinning and 2-11 ms with it, alone, under the same load); as recorded for an older baseline (which spun)."""
    if base is None or not base.latency:
        return False
    return bool((base.latency.get("settings") or {}).get("spinning", True))


def gate_probes(probe: bool | Mapping[int, Any], base: Baseline | None, runner: Runner, sizes: list[int],
            artifact: str | Path, stack: contextlib.ExitStack, spinning: bool) -> dict[int, Any]:
    """The probe runner of each batch size: given, sized now (new baseline), or rebuilt from the baseline's."""
    if probe is False:
        return {}
    if probe is not True:
        return {b: probe[b] for b in sizes}
    if base is None:
        specs = size_probes(runner, sizes, artifact=artifact, spinning=spinning)
    else:
        recorded = base.probe_specs()
        if not recorded:
            return {}  # an old baseline: nothing to normalise against
        specs = {b: ProbeSpec.from_dict(recorded[b]) for b in sizes if b in recorded}
    return {b: stack.enter_context(open_probe(spec)) for b, spec in specs.items()}


def spec_record(probe: Any) -> dict[str, Any]:
    spec = getattr(probe, "spec", None)
    return spec.to_dict() if isinstance(spec, ProbeSpec) else {"label": type(probe).__name__}


def latency_notes(sbs: bool, why: str, base: Baseline, trials: int, machine: dict[str, Any], *,
                  served: bool = False) -> list[str]:
    if served and sbs:
        notes = [f"latency of the served model (the client's wall time per request) measured side by side with the "
                 f"baseline's model on the same server in {trials} alternating rounds ({why}); the stored samples "
                 f"were not used"]
    elif served:
        notes = [f"latency of the served model is the client's wall time per request (one request in flight: the "
                 f"network, the server's queue and the model together), compared with the stored samples"
                 f"{f' ({why})' if why else ''}, NOT load-normalised: {SERVED}. A FAIL says it answers slower from "
                 f"this client than at baseline; compare runs made from the same client against the same server "
                 f"placement"]
    elif sbs:
        notes = [f"latency measured side by side with the baseline's artifact {base.artifact.path} in {trials} "
                 f"alternating rounds ({why}); the stored samples were not used"]
    elif base.probe_trials() is None:
        notes = [f"latency compared with the stored samples{f' ({why})' if why else ''}; the baseline has no "
                 "machine-speed probe (written by an older edgeres), so the verdict is NOT load-normalised: "
                 "rewrite it with --update-baseline"]
    else:
        notes = [f"latency compared with the stored samples{f' ({why})' if why else ''}, relative to the "
                 "machine-speed probe timed beside the artifact in both runs"]
    line = machine_note((base.latency or {}).get("machine"), machine)
    return notes + ([line] if line else [])


# --- the verdict ----------------------------------------------------------------------------------------------

OLD_BASELINE = "the baseline has no machine-speed probe; rewrite it with --update-baseline"
SERVED = ("a served model is timed as the client sees it, and a probe on the client does not measure the server's "
          "machine")


@dataclass(frozen=True)
class Judgement:
    """The verdict on one latency statistic at one batch size, and why."""

    metric: str  # "latency median b1"
    baseline_ms: float | None  # median over trials of the statistic (the baseline's artifact, or the stored one)
    now_ms: float | None
    ci: RatioCI | None  # of the (normalised) ratio now / baseline; None when not judged
    machine: float  # how much slower the probe ran now than at baseline (1.0 side by side or without a probe)
    tolerance: float
    verdict: Verdict
    reason: str


def _spread(values: np.ndarray) -> str:
    return f"+/-{50 * (values.max() - values.min()) / np.median(values):.0f}%"


def _tail_judgeable(*sides: Sequence[Sequence[float]] | None) -> str | None:
    """Why the p99 cannot be judged from these trials, or None when it can."""
    present = [s for s in sides if s is not None]
    trials = min(len(s) for s in present)
    calls = min(len(t) for s in present for t in s)
    if trials >= TAIL_MIN_TRIALS and calls >= TAIL_MIN_CALLS:
        return None
    return (f"p99 not judged: it needs >= {TAIL_MIN_CALLS} calls in each of >= {TAIL_MIN_TRIALS} trials per side "
            f"(so no single slow call sets a trial's p99, and the median over trials outvotes two disturbed "
            f"trials); had {trials} trials of >= {calls} calls. Raise --trials or --trial-duration to judge it")


def judge_latency(base: Mapping[int, Sequence[Sequence[float]]], now: Mapping[int, Sequence[Sequence[float]]], *,
                  base_probe: Mapping[int, Sequence[Sequence[float]]] | None = None,
                  now_probe: Mapping[int, Sequence[Sequence[float]]] | None = None, side_by_side: bool = False,
                  tolerances: Mapping[str, float], confidence: float = 0.95, seed: int = 0,
                  unnormalised: str = OLD_BASELINE) -> list[Judgement]:
    """Judge median and p99 latency at every batch size of ``now``.

    Args:
        base: the baseline's trials (stored), or the baseline's artifact's trials of the same rounds
            (``side_by_side``).
        now: the artifact's trials.
        base_probe: the probe's trials stored in the baseline (None: an old baseline, not normalised).
        now_probe: the probe's trials measured now beside ``now``.
        side_by_side: ``base`` was timed now, round by round with ``now``: per-round ratios, no probe.
        tolerances: ``{"median": 0.10, "p99": 0.10}``.
        confidence: coverage of the bootstrap interval.
        seed: seeds the bootstrap.
        unnormalised: why the comparison with the stored samples is not load-normalised, when it is not.
    """
    out = []
    for b in sorted(now):
        normalised = not side_by_side and b in (base_probe or {}) and b in (now_probe or {})
        for stat in (Statistic.MEDIAN, Statistic.P99):
            metric, tol = f"latency {stat.value} b{b}", tolerances[stat.value]
            now_stat = float(np.median(trial_values(now[b], None, stat)))
            base_stat = float(np.median(trial_values(base[b], None, stat)))
            if stat is Statistic.P99:
                why_not = _tail_judgeable(base[b], now[b], *((base_probe[b], now_probe[b]) if normalised else ()))
                if why_not:
                    out.append(Judgement(metric, base_stat, now_stat, None, 1.0, tol, Verdict.INFO, why_not))
                    continue
            if side_by_side:
                per_round = trial_values(now[b], base[b], stat)
                ci = trial_ratio_ci([], per_round, paired=True, confidence=confidence, seed=seed)
                machine = 1.0
                what = (f"{stat.value} of the artifact over the baseline's artifact, timed side by side in "
                        f"{len(per_round)} alternating rounds (per-round ratios {_spread(per_round)})")
            elif normalised:
                vb = trial_values(base[b], base_probe[b], stat)
                vn = trial_values(now[b], now_probe[b], stat)
                ci = trial_ratio_ci(vb, vn, confidence=confidence, seed=seed)
                probe_ci = trial_ratio_ci(trial_values(base_probe[b], None, stat),
                                          trial_values(now_probe[b], None, stat), confidence=confidence, seed=seed)
                machine = probe_ci.ratio
                what = (f"{stat.value} relative to the machine-speed probe: {np.median(vn):.3f} now ({len(vn)} trials, "
                        f"{_spread(vn)}) vs {np.median(vb):.3f} at baseline ({len(vb)} trials, {_spread(vb)}); the "
                        f"probe ran {_speed(probe_ci.ratio)} than at baseline ({100 * confidence:g}% CI "
                        f"[{probe_ci.low:.2f}, {probe_ci.high:.2f}])")
            else:
                vb, vn = trial_values(base[b], None, stat), trial_values(now[b], None, stat)
                ci = trial_ratio_ci(vb, vn, confidence=confidence, seed=seed)
                machine = 1.0
                what = (f"{stat.value} against the stored samples, NOT load-normalised ({unnormalised}): "
                        f"{len(vn)} trials now ({_spread(vn)}), {len(vb)} at baseline ({_spread(vb)})")
            verdict = judge_band(ci, tolerance=tol, machine=machine)
            out.append(Judgement(metric, base_stat, now_stat, ci, machine, tol, verdict,
                                 f"{what}. {_because(ci, machine, tol, verdict)}"))
    return out


def _speed(machine: float) -> str:
    if abs(machine - 1) < 0.005:
        return "at the same speed"
    return f"{machine:.2f}x slower" if machine > 1 else f"{1 / machine:.2f}x faster"


def _because(ci: RatioCI, machine: float, tol: float, verdict: Verdict) -> str:
    band = max(machine, 1 / machine)
    limit = 1 + tol
    interval = f"ratio {ci.ratio:.3f}, {100 * ci.confidence:g}% CI [{ci.low:.3f}, {ci.high:.3f}]"
    if band > 1.0005:
        interval += (f", widened by the machine's change (x{band:.2f}) to [{ci.low / band:.3f}, "
                     f"{ci.high * band:.3f}]")
    if verdict is Verdict.PASS:
        return f"{interval}: within the limit {limit:.3f}"
    if verdict is Verdict.FAIL:
        return f"{interval}: all beyond the limit {limit:.3f}, a regression"
    if ci.low <= limit < ci.high:
        cause = "the run-to-run noise alone straddles it"
    else:
        cause = "the machine's change of speed since the baseline makes it straddle it"
    return (f"{interval} straddles the limit {limit:.3f}: {cause}. Cannot decide; rerun on a quieter machine or with "
            f"more --trials; for a new build, keep the baseline's artifact on disk so the two are timed side by side")


def machine_note(base: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> str | None:
    """One line on the machine at baseline and now: load averages, busy and steal fractions, CPU."""
    def describe(m: Mapping[str, Any] | None) -> str:
        if not m:
            return "not recorded"
        load = (m.get("before") or {}).get("loadavg")
        frac = m.get("fractions") or {}
        cpus = (m.get("before") or {}).get("cpu_count")
        parts = [f"load {load[0]:.2f}" if load else "load ?", f"on {cpus} CPUs" if cpus else ""]
        if frac:
            parts.append(f"busy {100 * frac['busy']:.0f}%, steal {100 * frac['steal']:.0f}%")
        return " ".join(p for p in parts if p)

    if base is None and now is None:
        return None
    text = f"machine during latency trials: baseline {describe(base)}; now {describe(now)}"
    old = ((base or {}).get("before") or {}).get("cpu_model")
    new = ((now or {}).get("before") or {}).get("cpu_model")
    if old and new and old != new:
        text += f"; CPU {old!r} -> {new!r}"
    return text
