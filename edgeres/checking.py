"""The regression gate: measure an artifact again and compare it with a stored baseline.

Accuracy (top-1/top-5 on a labelled folder, and, given the FP32 reference model, MLPerf's rule that the artifact
keeps at least 99 % of the reference's top-1) is deterministic, so it is compared directly. Latency is noisy and the
machine may be busier than on the baseline's day, so it is measured in trials that alternate with a machine-speed
probe, or with the baseline's artifact itself when it is still on disk (side by side, the default then), and
judged by :mod:`edgeres.latency_gate`: FAIL only when a regression stands out of both the noise and the machine's
change of speed, PASS only when the artifact is within tolerance beyond both, else INCONCLUSIVE with the reason.

Exit codes (:attr:`CheckResult.exit_code`): 0 pass, 1 regression, 2 usage/input error, 3 inconclusive::

    result = check("m.int8.onnx", baseline="baseline.json", data="digits/val", update_baseline=True)
    result = check("m.int8.onnx", baseline="baseline.json")
    print(edgeres.report.check_table(result)); sys.exit(result.exit_code)
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgeres.backends.base import Runner
from edgeres.baseline import (  # Baseline, BASELINE_FORMAT, BaselineMismatch, load_baseline: re-exported
    BASELINE_FORMAT, Baseline, BaselineMismatch, baseline_artifact, load_baseline, match_accuracy_inputs,
    match_identity, save_baseline,
)
from edgeres.benchmarking import ArtifactInfo, describe_artifact, parse_batches, runner_environment, split_by_profile
from edgeres.errors import GateInputError  # re-exported
from edgeres.io import sha256_file
from edgeres.latency_gate import (  # measure_latency: re-exported
    Judgement, choose_side_by_side, gate_probes, judge_latency, latency_notes, measure_latency, spec_record,
    spinning_for,
)
from edgeres.probe import ProbeSpec
from edgeres.provenance import check_reference
from edgeres.stats import Verdict, pooled_statistic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerances:
    """How much worse than the baseline still passes."""

    accuracy_pp: float = 0.5  # top-1/top-5 may drop at most this many percentage points
    reference_ratio: float = 0.99  # top-1 must be >= this fraction of the FP32 reference's (MLPerf)
    latency_median: float = 0.10  # median latency may grow at most 10 %
    latency_p99: float = 0.10  # p99 latency may grow at most 10 %
    confidence: float = 0.95  # coverage of the bootstrap interval

    def __post_init__(self) -> None:
        for name in ("accuracy_pp", "latency_median", "latency_p99"):
            if getattr(self, name) < 0:
                raise GateInputError(f"tolerance {name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.reference_ratio <= 1:
            raise GateInputError(f"reference ratio must be in (0, 1], got {self.reference_ratio}")


@dataclass
class Row:
    """One line of the verdict table."""

    metric: str
    baseline: float | None
    now: float | None
    unit: str  # "%" or "ms"
    change_text: str
    tolerance_text: str
    verdict: Verdict
    message: str = ""

    def _fmt(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}%" if self.unit == "%" else f"{value:.3f} ms"

    @property
    def baseline_text(self) -> str:
        return self._fmt(self.baseline)

    @property
    def now_text(self) -> str:
        return self._fmt(self.now)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline": self.baseline, "now": self.now, "unit": self.unit,
                "change": self.change_text, "tolerance": self.tolerance_text, "verdict": self.verdict.value,
                "message": self.message}


# --- accuracy -------------------------------------------------------------------------------------------------

def _accuracy_folder(data: str | Path) -> Path:
    root = Path(data)
    if not root.is_dir():
        raise GateInputError(f"--data {root} is not a folder; pass a labelled folder <class>/<image>")
    if (root / "val").is_dir() and (root / "train").is_dir():
        log.info("%s has train/ and val/; checking accuracy on %s", root, root / "val")
        root = root / "val"
    return root


def _digest(folder: Path) -> tuple[str, int]:
    """A hash of the folder's image list (relative paths and sizes), and the image count."""
    from edgeres.data import list_images

    files = list_images(folder)
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.relative_to(folder).as_posix()}:{path.stat().st_size}\n".encode())
    return h.hexdigest(), len(files)


def _accuracy_batch(runner: Runner) -> int:
    p = runner.profile
    return max(p.min, min(p.opt, p.max, 32))


def evaluate(artifact: str | Path, data: str | Path, *, batch: int = 8, reference: str | Path | None = None,
             reference_batch: int | None = None, threads: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Top-1/top-5 accuracy (percent) of ``artifact`` on a labelled folder ``data/<class>/*`` (its ``val/`` when it
    holds ``train/`` and ``val/``), via :func:`edgeres.inference.infer_folder`; with a reference model, also the
    reference's top-1 and the top-1 agreement between the two.

    Raises:
        GateInputError: when no image is labelled with one of the model's classes.
        DataError: when an image cannot be decoded.
    """
    from edgeres.inference import infer_folder

    folder = _accuracy_folder(data)
    digest, count = _digest(folder)
    mine = infer_folder(artifact, folder, batch=batch, top_k=5, threads=threads, strict=True, quiet=quiet)
    acc = mine.summary.get("accuracy")
    if not acc or not acc.get("labelled"):
        raise GateInputError(f"{folder}: no image sits in a folder named after one of the model's classes; pass a "
                             "labelled folder <class>/<image> of the dataset the model was trained on")
    k = min(5, len(mine.predictions[0].topk)) if mine.predictions else 1
    result: dict[str, Any] = {
        "data": {"root": str(folder.resolve()), "images": count, "labelled": acc["labelled"], "digest": digest},
        "top1": 100.0 * acc["top1"], "top5": 100.0 * acc["top5"], "top_k": k, "reference": None, "agreement": None,
    }
    if reference is not None:
        ref = infer_folder(reference, folder, batch=reference_batch or batch, top_k=1, threads=threads,
                           strict=True, quiet=quiet)
        ref_acc = ref.summary.get("accuracy") or {}
        theirs = {p.path: p.topk[0][0] for p in ref.predictions}
        same = [theirs.get(p.path) == p.topk[0][0] for p in mine.predictions]
        result["reference"] = {"top1": 100.0 * ref_acc.get("top1", 0.0)}
        result["agreement"] = 100.0 * sum(same) / max(1, len(same))
    return result


# --- the gate -------------------------------------------------------------------------------------------------

@dataclass
class CheckResult:
    """The verdict table and what was measured now."""

    artifact: ArtifactInfo
    baseline_path: str
    rows: list[Row]
    notes: list[str]
    measured: Baseline
    updated: bool = False

    @property
    def verdict(self) -> Verdict:
        verdicts = {r.verdict for r in self.rows}
        if Verdict.FAIL in verdicts:
            return Verdict.FAIL
        if Verdict.INCONCLUSIVE in verdicts:
            return Verdict.INCONCLUSIVE
        return Verdict.PASS

    @property
    def exit_code(self) -> int:
        return {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.INCONCLUSIVE: 3}[self.verdict]

    @property
    def verdict_text(self) -> str:
        if self.updated:
            return f"baseline written to {self.baseline_path}"
        return {Verdict.PASS: "PASS", Verdict.FAIL: "FAIL (regression)",
                Verdict.INCONCLUSIVE: "INCONCLUSIVE (latency not told apart from the noise or the machine's change "
                                      "of speed, see the notes; rerun on a quieter machine, with more --trials, or "
                                      "side by side with the baseline's artifact)"}[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact.to_dict(), "baseline": self.baseline_path, "verdict": self.verdict.value,
                "exit_code": self.exit_code, "updated": self.updated, "rows": [r.to_dict() for r in self.rows],
                "notes": self.notes}


def _accuracy_rows(base: dict[str, Any], now: dict[str, Any], tol: Tolerances) -> list[Row]:
    rows = []
    keys = [("top1", "top-1 accuracy")] + ([("top5", f"top-{now['top_k']} accuracy")] if now["top_k"] > 1 else [])
    for key, label in keys:
        drop = base[key] - now[key]
        verdict = Verdict.FAIL if drop > tol.accuracy_pp + 1e-9 else Verdict.PASS
        rows.append(Row(label, base[key], now[key], "%", f"{now[key] - base[key]:+.2f} pp",
                        f"drop <= {tol.accuracy_pp:g} pp", verdict,
                        f"{label} {now[key]:.2f}% vs baseline {base[key]:.2f}% (limit: {tol.accuracy_pp:g} pp drop)"))
    ref = now.get("reference")
    if ref:
        ratio = now["top1"] / ref["top1"] if ref["top1"] > 0 else float("inf")
        verdict = Verdict.PASS if ratio >= tol.reference_ratio - 1e-12 else Verdict.FAIL
        rows.append(Row("top-1 vs FP32 reference", ref["top1"], now["top1"], "%", f"{100 * ratio:.2f}% of ref",
                        f">= {100 * tol.reference_ratio:g}% of ref", verdict,
                        f"top-1 {now['top1']:.2f}% is {100 * ratio:.2f}% of the reference's {ref['top1']:.2f}%"))
        before = base.get("agreement")
        agree = now["agreement"]
        if before is None:
            rows.append(Row("top-1 agreement with reference", None, agree, "%", "-", "shown only", Verdict.INFO,
                            f"{agree:.2f}% of images get the reference's top-1 class"))
        else:
            verdict = Verdict.FAIL if before - agree > tol.accuracy_pp + 1e-9 else Verdict.PASS
            rows.append(Row("top-1 agreement with reference", before, agree, "%", f"{agree - before:+.2f} pp",
                            f"drop <= {tol.accuracy_pp:g} pp", verdict,
                            f"agreement {agree:.2f}% vs baseline {before:.2f}%"))
    return rows + _budget_row(now)


def _budget_row(now: dict[str, Any]) -> list[Row]:
    """The artifact's own accuracy budget (``build --max-drop``), checked against the FP32 reference here."""
    budget, ref = now.get("budget"), now.get("reference")
    if not budget or not ref:
        return []
    drop, limit = ref["top1"] - now["top1"], float(budget["max_drop_pp"])
    verdict = Verdict.PASS if drop <= limit + 1e-9 else Verdict.FAIL
    return [Row("top-1 drop vs FP32 (build budget)", ref["top1"], now["top1"], "%", f"{-drop:+.2f} pp",
                f"drop <= {limit:g} pp", verdict,
                f"the build kept {len(budget.get('high_precision_layers') or [])} layer(s) in float for a budget of "
                f"{limit:g} pp (measured {budget.get('measured_top1_drop_pp')} pp then); here the drop is {drop:.2f} pp")]


def _int8_budget(artifact: str | Path) -> dict[str, Any] | None:
    """The accuracy budget recorded in the artifact's sidecar by ``build --max-drop``, if any."""
    from edgeres.backends.base import read_sidecar_for, sidecar_path

    if not sidecar_path(Path(artifact)).is_file():
        return None
    int8 = read_sidecar_for(Path(artifact)).int8 or {}
    if int8.get("max_drop_pp") is None:
        return None
    return {key: int8.get(key) for key in ("max_drop_pp", "measured_top1_drop_pp", "high_precision_layers")}


def _latency_rows(judgements: list[Judgement]) -> list[Row]:
    rows = []
    for j in judgements:
        if j.ci is None:
            change = "-"
        else:
            change = f"{100 * (j.ci.ratio - 1):+.1f}% [{100 * (j.ci.low - 1):+.1f}, {100 * (j.ci.high - 1):+.1f}]"
        band = max(j.machine, 1 / j.machine)
        tolerance = f"<= +{100 * j.tolerance:g}%" + (f" x{band:.2f} machine" if band > 1.0005 else "")
        rows.append(Row(j.metric, j.baseline_ms, j.now_ms, "ms", change, tolerance, j.verdict, j.reason))
    return rows


def _open(artifact: str | Path, threads: int | None, *, spinning: bool = True) -> Runner:
    from edgeres import backends

    return backends.open(artifact, threads=threads, spinning=spinning)


def check(artifact: str | Path, *, baseline: str | Path, data: str | Path | None = None,
          reference: str | Path | None = None, tolerances: Tolerances = Tolerances(), update_baseline: bool = False,
          allow_mismatch: bool = False, latency: bool = True, batches: Sequence[int] | str | None = None,
          trials: int = 5, trial_duration_s: float | None = 0.5, trial_iterations: int | None = None,
          warmup_s: float = 0.5, transfers: bool = True, threads: int | None = None, seed: int = 0,
          side_by_side: bool | None = None, runner: Runner | None = None, baseline_runner: Runner | None = None,
          probe: bool | Mapping[int, Any] = True, quiet: bool = False) -> CheckResult:
    """Measure ``artifact`` and compare it with ``baseline`` (or write the baseline).

    Args:
        artifact: the artifact to gate.
        baseline: the baseline JSON.
        data: a labelled folder ``<class>/<image>`` for accuracy; None = the baseline's folder, if it has one.
        reference: the FP32 model for MLPerf's 99 % rule and top-1 agreement (needs ``data``).
        tolerances: what still passes.
        update_baseline: measure and (over)write the baseline instead of comparing.
        allow_mismatch: compare with a baseline from another artifact, model or device (with a note) instead of
            refusing it.
        latency: False skips latency (accuracy only, fast).
        batches: batch sizes for latency; None = the baseline's (for a new baseline: 1 and the profile's opt).
        trials: alternating latency trials.
        trial_duration_s: timed wall time per trial and batch size (or ``trial_iterations`` calls each).
        trial_iterations: timed calls per trial and batch size, instead of a duration.
        warmup_s: untimed calls before the trials.
        transfers: False times the compute stage only.
        threads: backend worker threads.
        seed: seeds the bootstrap.
        side_by_side: time the baseline's artifact (still on disk, unchanged) in alternating trials with
            ``artifact`` and compare with those timings instead of the stored samples: machine drift between the
            baseline's day and today cancels out. Accuracy still compares with the baseline. None (default): side
            by side whenever the baseline's artifact is on disk, unchanged, and is another file than ``artifact``
            (timing a file against itself tells nothing); else the stored samples, normalised by the probe.
        runner: an already open runner for ``artifact`` to time latency with (not closed here); accuracy always
            runs ``artifact`` itself through :func:`edgeres.inference.infer_folder`.
        baseline_runner: with ``side_by_side``, an already open runner for the baseline's artifact.
        probe: time the machine-speed probe (:mod:`edgeres.probe`) beside the artifact, sized when the baseline
            is written and rebuilt from it at check time; False leaves it out (the verdict is then not
            load-normalised); a mapping ``{batch: runner}`` supplies probe runners instead (tests).
        quiet: no progress output.

    Returns:
        The verdict rows; :attr:`CheckResult.exit_code` is 0 pass, 1 regression, 3 inconclusive.

    Raises:
        GateInputError: (exit 2) a missing or unreadable baseline, a baseline from another artifact/model/device
            without ``allow_mismatch``, a metric asked for that the baseline lacks, bad options.
    """
    if side_by_side and update_baseline:
        raise GateInputError("--side-by-side compares with an existing baseline; it cannot be combined with "
                             "--update-baseline")
    base = None if update_baseline else load_baseline(baseline)
    notes: list[str] = []
    judgements: list[Judgement] = []
    spinning = spinning_for(base)
    with contextlib.ExitStack() as stack:
        if runner is None:
            runner = stack.enter_context(_open(artifact, threads, spinning=spinning))
        info = describe_artifact(artifact, runner=runner)
        now = Baseline(artifact=info, environment=runner_environment(runner, info))
        if base is not None:
            notes += match_identity(base, now, allow_mismatch=allow_mismatch, path=baseline)
        data = _resolve_data(data, base, reference)
        if data is not None:
            reference = _resolve_reference(reference, base, notes)
            if reference is not None:  # an unrelated model must never make the gate pass
                notes += check_reference(artifact, reference, allow_mismatch=allow_mismatch)
            now.accuracy = evaluate(artifact, data, batch=_accuracy_batch(runner), reference=reference,
                                    threads=threads, quiet=quiet)
            if reference is not None:
                now.accuracy["reference"].update(path=str(Path(reference).resolve()), sha256=sha256_file(reference))
                budget = _int8_budget(artifact)
                if budget is not None:
                    now.accuracy["budget"] = budget
            if base is not None:
                notes += match_accuracy_inputs(base, now, allow_mismatch=allow_mismatch)
        if latency and (base is None or base.latency):
            sizes = _latency_batches(batches, base, runner)
            sbs, why = choose_side_by_side(side_by_side, base, info)
            runners = [runner]
            if sbs:
                runners.append(baseline_runner or stack.enter_context(_open(baseline_artifact(base), threads,
                                                                            spinning=spinning)))
            probes = {} if sbs else gate_probes(probe, base, runner, sizes, artifact, stack, spinning)
            measured = measure_latency(runners, batches=sizes, probes=probes, trials=trials,
                                       trial_duration_s=trial_duration_s, trial_iterations=trial_iterations,
                                       warmup_s=warmup_s, transfers=transfers, quiet=quiet)
            now.latency = {"trials": {str(b): t for b, t in measured.runners[0].items()},
                           "settings": {"trials": trials, "trial_duration_s": trial_duration_s,
                                        "trial_iterations": trial_iterations, "transfers": transfers,
                                        "spinning": spinning},
                           "machine": measured.machine}
            if measured.probe is not None:
                now.latency["probe"] = {"specs": {str(b): spec_record(p) for b, p in probes.items()},
                                        "trials": {str(b): t for b, t in measured.probe.items()}}
            if base is not None:
                notes += latency_notes(sbs, why, base, trials, measured.machine)
                judgements = judge_latency(
                    measured.runners[1] if sbs else base.latency_trials(), measured.runners[0],
                    base_probe=None if sbs else base.probe_trials(), now_probe=measured.probe, side_by_side=sbs,
                    tolerances={"median": tolerances.latency_median, "p99": tolerances.latency_p99},
                    confidence=tolerances.confidence, seed=seed)
        elif latency:
            notes.append("the baseline has no latency; latency not compared (rewrite it without --no-latency)")
    if now.accuracy is None and now.latency is None:
        raise GateInputError("nothing to measure: pass --data DIR for accuracy, or leave out --no-latency"
                             if base is None else "nothing to compare: the baseline holds only what --no-latency "
                             "skips; leave it out, or rewrite the baseline with --data DIR")
    if update_baseline:
        save_baseline(now, baseline)
        log.info("wrote baseline %s", baseline)
        return CheckResult(info, str(baseline), _measured_rows(now), notes, now, updated=True)
    rows: list[Row] = []
    if base is not None and base.accuracy and now.accuracy is not None:
        rows += _accuracy_rows(base.accuracy, now.accuracy, tolerances)
    rows += _latency_rows(judgements)
    notes += [f"{j.metric} {j.verdict.value}: {j.reason}" for j in judgements
              if j.verdict in (Verdict.FAIL, Verdict.INCONCLUSIVE)]  # the table shows no messages: say why here
    untold = [j.metric for j in judgements if j.verdict is Verdict.INFO]
    if untold:
        notes.append(f"{', '.join(untold)}: {next(j.reason for j in judgements if j.verdict is Verdict.INFO)}")
    return CheckResult(info, str(baseline), rows, notes, now)


def _resolve_data(data: str | Path | None, base: Baseline | None, reference: str | Path | None) -> Path | None:
    if data is not None:
        if base is not None and not base.accuracy:
            raise GateInputError(f"the baseline has no accuracy to compare {data} with; rewrite it with "
                                 f"--update-baseline --data {data}")
        return Path(data)
    if base is not None and base.accuracy:
        root = Path(base.accuracy["data"]["root"])
        if not root.is_dir():
            raise GateInputError(f"the baseline's data folder {root} is gone; pass --data with the same images")
        return root
    if reference is not None:
        raise GateInputError("--reference needs labelled images: pass --data DIR")
    return None


def _resolve_reference(reference: str | Path | None, base: Baseline | None, notes: list[str]) -> Path | None:
    """The reference model: the one given, else the baseline's when its file is still there."""
    if reference is not None:
        return Path(reference)
    stored = ((base.accuracy or {}).get("reference") or {}) if base is not None else {}
    if not stored.get("path"):
        return None
    if Path(stored["path"]).is_file():
        notes.append(f"reference model from the baseline: {stored['path']}")
        return Path(stored["path"])
    notes.append(f"the baseline's reference {stored['path']} is gone; the reference rule was not checked "
                 "(pass --reference)")
    return None


def _latency_batches(batches: Sequence[int] | str | None, base: Baseline | None, runner: Runner) -> list[int]:
    if batches is not None:
        sizes = list(parse_batches(batches))
    elif base is not None:
        sizes = sorted(base.latency_trials())
    else:
        sizes = sorted({max(1, runner.profile.min), runner.profile.opt})
    ok, skipped = split_by_profile(sizes, runner)
    if skipped:
        raise GateInputError("; ".join(f"batch {s['batch']}: {s['reason']}" for s in skipped))
    if base is not None:
        missing = [b for b in ok if b not in base.latency_trials()]
        if missing:
            raise GateInputError(f"the baseline has no latency for batch {missing}; it has "
                                 f"{sorted(base.latency_trials())}: rewrite it with --update-baseline")
    return ok


def _measured_rows(now: Baseline) -> list[Row]:
    """Rows showing what a new baseline holds (verdict INFO)."""
    rows = []
    if now.accuracy:
        rows.append(Row("top-1 accuracy", None, now.accuracy["top1"], "%", "-", "-", Verdict.INFO))
        if now.accuracy["top_k"] > 1:
            rows.append(Row(f"top-{now.accuracy['top_k']} accuracy", None, now.accuracy["top5"], "%", "-", "-",
                            Verdict.INFO))
        if now.accuracy.get("reference"):
            rows.append(Row("FP32 reference top-1", None, now.accuracy["reference"]["top1"], "%", "-", "-",
                            Verdict.INFO))
            rows.append(Row("top-1 agreement with reference", None, now.accuracy["agreement"], "%", "-", "-",
                            Verdict.INFO))
    probe = (now.latency or {}).get("probe") or {}
    for b, trials in now.latency_trials().items():
        for stat in ("median", "p99"):
            rows.append(Row(f"latency {stat} b{b}", None, pooled_statistic(trials, stat), "ms", "-", "-",
                            Verdict.INFO))
        spec = probe.get("specs", {}).get(str(b))
        if spec and "size" in spec:
            rows.append(Row(f"machine-speed probe b{b}", None, pooled_statistic(probe["trials"][str(b)], "median"),
                            "ms", "-", "-", Verdict.INFO, ProbeSpec.from_dict(spec).label))
    return rows
