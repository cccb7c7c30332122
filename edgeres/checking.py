"""The regression gate: measure an artifact (or a served model) again and compare it with a stored baseline.

Accuracy (top-1/top-5 on a labelled folder, and, given the FP32 reference model, MLPerf's rule that the artifact
keeps at least 99 % of the reference's top-1) is deterministic, so it is compared directly. Latency is noisy and the
machine may be busier than on the baseline's day, so it is measured in trials that alternate with a machine-speed
probe, or with the baseline's artifact itself when it is still on disk (side by side, the default then), and
judged by :mod:`edgeres.latency_gate`: FAIL only when a regression stands out of both the noise and the machine's
change of speed, PASS only when the artifact is within tolerance beyond both, else INCONCLUSIVE with the reason.
How latency is timed (batch sizes, trials, their length) is one :class:`LatencyPlan`, recorded in the baseline.

A model served by ``edgeres serve`` is gated the same way (``check(server=URL, model=NAME, ...)``): accuracy runs
the same labelled images through the server (the same rows); its identity is the served artifact's sha256 and
source model as the served repository recorded them, with backend ``triton/<backend>`` and the server's host as
the device, so a baseline of another model, or of the artifact run locally, is refused without
``allow_mismatch``. Its latency is the client's wall time per request (one in flight), compared with the stored
samples and NOT load-normalised: the machine-speed probe would time the client's machine, not the server's. A
served FAIL therefore says "answers slower from this client than at baseline", which may be the model, the server
or the network; compare runs made from the same client. When the same server still serves the baseline's model
(its name, its artifact sha256) beside the one checked, e.g. v1 and v2, the two are timed side by side instead,
request by request, and the server's and the network's drift cancel out as they do for local side by side.

Exit codes (:attr:`CheckResult.exit_code`, and :attr:`GateInputError.exit_code` for a gate that cannot run):
0 pass, 1 regression, 2 usage/input error, 3 inconclusive::

    result = check("m.int8.onnx", baseline="baseline.json", data="digits/val", update_baseline=True)
    result = check("m.int8.onnx", baseline="baseline.json", junit="junit.xml", report="check.md")
    result = check(server="http://127.0.0.1:8000", model="m_int8", baseline="served.json")
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
from edgeres.benchmarking import parse_batches, split_by_profile
from edgeres.errors import EdgeresError, GateInputError  # GateInputError: re-exported
from edgeres.io import outputs_safe, sha256_file
from edgeres.latency_gate import (  # LatencyPlan, measure_latency: re-exported
    OLD_BASELINE, SERVED, Judgement, LatencyPlan, choose_side_by_side, gate_probes, judge_latency, latency_notes,
    measure_latency, spec_record, spinning_for,
)
from edgeres.probe import ProbeSpec
from edgeres.provenance import check_reference
from edgeres.stats import Verdict, pooled_statistic
from edgeres.subject import (  # Subject: re-exported
    Subject, open_runner, open_subject, refuse_bad_subject, served_reference, served_side_by_side,
)
from edgeres.verdict import CheckResult, Row  # re-exported

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
            if not getattr(self, name) >= 0:  # NaN too: every comparison with it is False, so it would pass all
                raise GateInputError(f"tolerance {name} must be a number >= 0, got {getattr(self, name)}")
        if not 0 < self.reference_ratio <= 1:
            raise GateInputError(f"reference ratio must be in (0, 1], got {self.reference_ratio}")


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
             reference_batch: int | None = None, threads: int | None = None, quiet: bool = False,
             runner: Runner | None = None) -> dict[str, Any]:
    """Top-1/top-5 accuracy (percent) of ``artifact`` on a labelled folder ``data/<class>/*`` (its ``val/`` when it
    holds ``train/`` and ``val/``), via :func:`edgeres.inference.infer_folder`; with a reference model, also the
    reference's top-1 and the top-1 agreement between the two.

    Raises:
        GateInputError: when no image is labelled with one of the model's classes.
        DataError: when an image cannot be decoded.
    """
    from edgeres.comparison import count_matches
    from edgeres.inference import infer_folder

    folder = _accuracy_folder(data)
    digest, count = _digest(folder)
    mine = infer_folder(artifact, folder, batch=batch, top_k=5, threads=threads, strict=True, quiet=quiet,
                        runner=runner)  # runner: e.g. a served model's RemoteRunner (artifact is then its URL)
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
        same = count_matches([p.topk[0][0] for p in mine.predictions],
                             [theirs.get(p.path) for p in mine.predictions])
        result["reference"] = {"top1": 100.0 * ref_acc.get("top1", 0.0)}
        result["agreement"] = 100.0 * same / len(mine.predictions)
    return result


# --- the gate -------------------------------------------------------------------------------------------------

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


# --- the gate, step by step -------------------------------------------------------------------------------------

@dataclass
class _Run:
    """One run of the gate: what is gated, the stored baseline (None when writing one), what is measured now,
    and the notes gathered on the way."""

    subject: Subject
    base: Baseline | None
    now: Baseline
    notes: list[str]
    spinning: bool
    stack: contextlib.ExitStack


def _measure_accuracy(run: _Run, data: Path, reference: str | Path | None, *, allow_mismatch: bool,
                      threads: int | None, quiet: bool) -> None:
    """Accuracy on ``data`` (and the reference's rules) into ``run.now.accuracy``; the dataset matched with the
    baseline's."""
    subject, base = run.subject, run.base
    reference = _resolve_reference(reference, base, run.notes)
    if reference is not None:  # an unrelated model must never make the gate pass
        run.notes += (served_reference(subject, reference, allow_mismatch=allow_mismatch) if subject.served
                      else check_reference(subject.artifact, reference, allow_mismatch=allow_mismatch))
    run.now.accuracy = evaluate(subject.artifact or subject.server, data, batch=_accuracy_batch(subject.runner),
                                reference=reference, threads=threads, quiet=quiet,
                                runner=subject.runner if subject.served else None)
    if reference is not None:
        run.now.accuracy["reference"].update(path=str(Path(reference).resolve()), sha256=sha256_file(reference))
        budget = None if subject.served else _int8_budget(subject.artifact)
        if budget is not None:
            run.now.accuracy["budget"] = budget
    if base is not None:
        run.notes += match_accuracy_inputs(base, run.now, allow_mismatch=allow_mismatch)


def _latency_runners(run: _Run, plan: LatencyPlan, *, side_by_side: bool | None, baseline_runner: Runner | None,
                     probe: bool | Mapping[int, Any], threads: int | None) -> tuple[list[Any], dict[int, Any],
                                                                                    bool, str]:
    """The runners to time (the subject's, then the baseline's artifact's when side by side), the probes, and
    whether (and why) side by side."""
    subject, base = run.subject, run.base
    if subject.served:
        sbs, why, partner = served_side_by_side(side_by_side, base, subject, baseline_runner, run.stack)
        return [subject.runner] + ([partner] if partner is not None else []), {}, sbs, why
    sbs, why = choose_side_by_side(side_by_side, base, subject.info)
    runners: list[Any] = [subject.runner]
    if sbs:
        runners.append(baseline_runner or run.stack.enter_context(
            open_runner(baseline_artifact(base), threads, spinning=run.spinning)))
    probes = {} if sbs else gate_probes(probe, base, subject.runner, list(plan.batches or ()), subject.artifact,
                                        run.stack, run.spinning)
    return runners, probes, sbs, why


def _measure_latency(run: _Run, plan: LatencyPlan, tolerances: Tolerances, *, side_by_side: bool | None,
                     baseline_runner: Runner | None, probe: bool | Mapping[int, Any], threads: int | None,
                     seed: int, quiet: bool) -> list[Judgement]:
    """Latency trials into ``run.now.latency`` (with the plan they followed), judged against the baseline."""
    base = run.base
    plan = plan.with_batches(_latency_batches(plan.batches, base, run.subject.runner))
    runners, probes, sbs, why = _latency_runners(run, plan, side_by_side=side_by_side,
                                                 baseline_runner=baseline_runner, probe=probe, threads=threads)
    measured = measure_latency(runners, plan, probes=probes, quiet=quiet)
    run.now.latency = {"trials": {str(b): t for b, t in measured.runners[0].items()},
                       "settings": {**plan.to_dict(), "spinning": run.spinning,
                                    **({"served": True} if run.subject.served else {})},
                       "machine": measured.machine}
    if measured.probe is not None:
        run.now.latency["probe"] = {"specs": {str(b): spec_record(p) for b, p in probes.items()},
                                    "trials": {str(b): t for b, t in measured.probe.items()}}
    if base is None:
        return []
    run.notes += latency_notes(sbs, why, base, plan.trials, measured.machine, served=run.subject.served)
    run.notes += _plan_notes(plan, base)
    return judge_latency(
        measured.runners[1] if sbs else base.latency_trials(), measured.runners[0],
        base_probe=None if sbs else base.probe_trials(), now_probe=measured.probe, side_by_side=sbs,
        tolerances={"median": tolerances.latency_median, "p99": tolerances.latency_p99},
        confidence=tolerances.confidence, seed=seed, unnormalised=SERVED if run.subject.served else OLD_BASELINE)


def _plan_notes(plan: LatencyPlan, base: Baseline) -> list[str]:
    """A note when the trials were planned differently from the baseline's (an older baseline records only
    some settings: the others are compared with their defaults)."""
    try:
        recorded = LatencyPlan.from_dict((base.latency or {}).get("settings"))
    except GateInputError:
        return []
    changed = plan.differences(recorded)
    return [f"latency plan differs from the baseline's: {', '.join(changed)}"] if changed else []


def _verdict(run: _Run, judgements: list[Judgement], tolerances: Tolerances, baseline: str | Path) -> CheckResult:
    """The verdict rows, and the notes that say why a latency row failed or could not be judged."""
    base, now, notes = run.base, run.now, run.notes
    rows: list[Row] = []
    if base is not None and base.accuracy and now.accuracy is not None:
        rows += _accuracy_rows(base.accuracy, now.accuracy, tolerances)
    rows += _latency_rows(judgements)
    notes += [f"{j.metric} {j.verdict.value}: {j.reason}" for j in judgements
              if j.verdict in (Verdict.FAIL, Verdict.INCONCLUSIVE)]  # the table shows no messages: say why here
    untold = [j.metric for j in judgements if j.verdict is Verdict.INFO]
    if untold:
        notes.append(f"{', '.join(untold)}: {next(j.reason for j in judgements if j.verdict is Verdict.INFO)}")
    return CheckResult(run.subject.info, str(baseline), rows, notes, now)


def _gate(artifact: str | Path | None, baseline: str | Path, *, server: str | None, model: str | None,
          data: str | Path | None, reference: str | Path | None, tolerances: Tolerances, update_baseline: bool,
          allow_mismatch: bool, latency: bool, plan: LatencyPlan, threads: int | None, seed: int,
          side_by_side: bool | None, runner: Runner | None, baseline_runner: Runner | None,
          probe: bool | Mapping[int, Any], quiet: bool) -> CheckResult:
    """Measure, then write the baseline or compare with it (see :func:`check`)."""
    if side_by_side and update_baseline:
        raise GateInputError("--side-by-side compares with an existing baseline; it cannot be combined with "
                             "--update-baseline")
    base = None if update_baseline else load_baseline(baseline)
    judgements: list[Judgement] = []
    with contextlib.ExitStack() as stack:
        spinning = spinning_for(base)
        subject = open_subject(artifact, server=server, model=model, runner=runner, threads=threads,
                               spinning=spinning, stack=stack)
        run = _Run(subject, base, Baseline(artifact=subject.info, environment=subject.environment), [], spinning,
                   stack)
        if base is not None:
            run.notes += match_identity(base, run.now, allow_mismatch=allow_mismatch, path=baseline)
        data = _resolve_data(data, base, reference)
        if data is not None:
            _measure_accuracy(run, data, reference, allow_mismatch=allow_mismatch, threads=threads, quiet=quiet)
        if latency and (base is None or base.latency):
            judgements = _measure_latency(run, plan, tolerances, side_by_side=side_by_side,
                                          baseline_runner=baseline_runner, probe=probe, threads=threads, seed=seed,
                                          quiet=quiet)
        elif latency:
            run.notes.append("the baseline has no latency; latency not compared (rewrite it without --no-latency)")
    if run.now.accuracy is None and run.now.latency is None:
        raise GateInputError("nothing to measure: pass --data DIR for accuracy, or leave out --no-latency"
                             if base is None else "nothing to compare: the baseline holds only what --no-latency "
                             "skips; leave it out, or rewrite the baseline with --data DIR")
    if update_baseline:
        save_baseline(run.now, baseline)
        log.info("wrote baseline %s", baseline)
        return CheckResult(subject.info, str(baseline), _measured_rows(run.now), run.notes, run.now, updated=True)
    return _verdict(run, judgements, tolerances, baseline)


def _refuse_unsafe_outputs(artifact: str | Path | None, baseline: str | Path, *, data: str | Path | None,
                           reference: str | Path | None, update_baseline: bool, junit: str | Path | None,
                           report: str | Path | None) -> None:
    """Before any work: no output (JUnit, report, a baseline being written) is an input or another output, and
    each output's folder can be written."""
    from edgeres.backends.base import artifact_inputs

    inputs = {**(artifact_inputs(artifact) if artifact is not None else {}), "--reference": reference,
              "--data": data, "--baseline": None if update_baseline else baseline}
    outputs_safe(inputs, {"--junit": junit, "--report": report, "--baseline": baseline if update_baseline else None})


def write_reports(result: CheckResult, *, junit: str | Path | None = None, report: str | Path | None = None,
                  label: str | None = None) -> None:
    """Write the verdict as JUnit XML (one test case per row, for CI) and/or as Markdown (for a pull request)."""
    from edgeres.junit import write_junit
    from edgeres.report import check_markdown, write_markdown

    if junit is not None:
        write_junit(junit, result.rows, properties={"artifact": label or result.artifact.path,
                                                    "baseline": result.baseline_path,
                                                    "verdict": result.verdict.value})
    if report is not None:
        write_markdown(report, check_markdown(result))


def check(artifact: str | Path | None = None, *, baseline: str | Path, server: str | None = None,
          model: str | None = None, data: str | Path | None = None, reference: str | Path | None = None,
          tolerances: Tolerances = Tolerances(), update_baseline: bool = False, allow_mismatch: bool = False,
          latency: bool = True, plan: LatencyPlan = LatencyPlan(), threads: int | None = None, seed: int = 0,
          side_by_side: bool | None = None, runner: Runner | None = None, baseline_runner: Runner | None = None,
          probe: bool | Mapping[int, Any] = True, junit: str | Path | None = None, report: str | Path | None = None,
          quiet: bool = False) -> CheckResult:
    """Measure ``artifact`` (or the model served at ``server``) and compare it with ``baseline`` (or write it).

    Args:
        artifact: the artifact to gate; None with ``server``.
        baseline: the baseline JSON.
        server: gate the model that ``edgeres serve`` serves at this URL instead of an artifact file: accuracy
            through the server, latency as the client sees it (see the module docstring for what that verdict
            promises), identity from the served artifact's recorded sha256.
        model: with ``server``, the served tensor model; None = the only edgeres model there.
        data: a labelled folder ``<class>/<image>`` for accuracy; None = the baseline's folder, if it has one.
        reference: the FP32 model for MLPerf's 99 % rule and top-1 agreement (needs ``data``).
        tolerances: what still passes.
        update_baseline: measure and (over)write the baseline instead of comparing.
        allow_mismatch: compare with a baseline from another artifact, model or device (with a note) instead of
            refusing it.
        latency: False skips latency (accuracy only, fast).
        plan: batch sizes, trials, trial duration or iterations, warmup, transfers (:class:`LatencyPlan`); batch
            sizes None = the baseline's (for a new baseline: 1 and the profile's opt). Recorded in the baseline.
        threads: backend worker threads.
        seed: seeds the bootstrap.
        side_by_side: time the baseline's artifact (still on disk, unchanged) in alternating trials with
            ``artifact`` and compare with those timings instead of the stored samples: machine drift between the
            baseline's day and today cancels out. Accuracy still compares with the baseline. None (default): side
            by side whenever the baseline's artifact is on disk, unchanged, and is another file than ``artifact``
            (timing a file against itself tells nothing); else the stored samples, normalised by the probe. With
            ``server``: the baseline's served model, when the same server still serves it unchanged beside the one
            checked (``baseline_runner``: an open runner for it).
        runner: an already open runner for ``artifact`` to time latency with (not closed here); accuracy always
            runs ``artifact`` itself through :func:`edgeres.inference.infer_folder`. With ``server``, an open
            :class:`edgeres.serve.client.RemoteRunner` used for both.
        baseline_runner: with ``side_by_side``, an already open runner for the baseline's artifact.
        probe: time the machine-speed probe (:mod:`edgeres.probe`) beside the artifact, sized when the baseline
            is written and rebuilt from it at check time; False leaves it out (the verdict is then not
            load-normalised); a mapping ``{batch: runner}`` supplies probe runners instead (tests). Never with
            ``server``: the probe would measure this machine, not the server's.
        junit: write the verdict here as JUnit XML.
        report: write the verdict here as Markdown.
        quiet: no progress output.

    Returns:
        The verdict rows; :attr:`CheckResult.exit_code` is 0 pass, 1 regression, 3 inconclusive.

    Raises:
        GateInputError: (exit 2) any error that stops the gate: a missing or unreadable baseline, a baseline
            from another artifact/model/device without ``allow_mismatch``, a metric asked for that the baseline
            lacks, bad options, an output that would overwrite an input, an unreachable server, an unreadable
            image. A gate that cannot run never reads as a regression.
    """
    try:
        refuse_bad_subject(artifact, server=server, model=model)
        _refuse_unsafe_outputs(artifact, baseline, data=data, reference=reference, update_baseline=update_baseline,
                               junit=junit, report=report)
        result = _gate(artifact, baseline, server=server, model=model, data=data, reference=reference,
                       tolerances=tolerances, update_baseline=update_baseline, allow_mismatch=allow_mismatch,
                       latency=latency, plan=plan, threads=threads, seed=seed, side_by_side=side_by_side,
                       runner=runner, baseline_runner=baseline_runner, probe=probe, quiet=quiet)
        write_reports(result, junit=junit, report=report, label=str(artifact) if artifact is not None else None)
    except EdgeresError as exc:
        if exc.exit_code == 2:
            raise
        raise GateInputError(str(exc)) from exc  # any error that stops the gate is exit 2, never "regression"
    except OSError as exc:  # e.g. the disk filled while writing the reports
        from edgeres.io import describe_os_error

        raise GateInputError(describe_os_error(exc)) from exc
    return result


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


def _latency_batches(batches: Sequence[int] | None, base: Baseline | None, runner: Runner) -> list[int]:
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
