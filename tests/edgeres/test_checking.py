"""edgeres.check: the gate passes a re-run, fails an injected regression (a slower runner, a worse model), says
inconclusive on overlapping noisy samples or a machine that changed speed, refuses a mismatched baseline; records
the machine-speed probe; side by side by default when the baseline's artifact is on disk; CLI exit codes and JUnit.

Latency tests inject :class:`SleepRunner` artifacts and probes on a virtual clock, so verdicts are deterministic
on a loaded machine; the decision logic itself is tested on synthetic streams in ``test_latency_gate.py``."""
from __future__ import annotations

import dataclasses
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeres.card import ModelCard, Preprocess
from edgeres.checking import BaselineMismatch, GateInputError, LatencyPlan, Tolerances, check, load_baseline
from edgeres.stats import Verdict
from helpers.clocks import VirtualClock
from helpers.colour import CLASSES, WORSE_W, colour_images, colour_model
from helpers.runners import SleepRunner

FAST = {"plan": LatencyPlan(trials=5, trial_iterations=20, warmup_s=0.0), "quiet": True}


def fast(opts: dict = FAST, *, batches: tuple[int, ...] | str | None = None, **plan: object) -> dict:
    """``opts`` with its latency plan changed: other batch sizes, more calls per trial, ..."""
    changes = {**plan, **({"batches": batches} if batches is not None else {})}
    return {**opts, "plan": dataclasses.replace(opts["plan"], **changes)}
CARD = ModelCard(arch="colour", class_names=CLASSES, preprocess=Preprocess.small(size=16))


class SleepProbe(SleepRunner):
    """A machine-speed probe on the virtual clock: a :class:`SleepRunner` with the probe's ``input``."""

    input = np.zeros((1, 1), np.float32)


def probes(clock: VirtualClock, *, ms: float = 2.0, machine: float = 1.0, seed: int = 10,
           batches: tuple[int, ...] = (1, 8)) -> dict[int, SleepProbe]:
    """One probe per batch size, each call ``ms`` times the machine's slowness."""
    return {b: SleepProbe(CARD, ms=ms * machine, clock=clock, jitter=0.05, seed=seed + b) for b in batches}


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    return {"good": colour_model(tmp_path / "good.onnx"),
            "worse": colour_model(tmp_path / "worse.onnx", weights=WORSE_W),
            "data": colour_images(tmp_path / "val"), "baseline": tmp_path / "baseline.json", "tmp": tmp_path}


def _verdicts(result) -> dict[str, Verdict]:
    return {r.metric: r.verdict for r in result.rows}


def _scale_trials(path: Path, factors: list[float]) -> None:
    """Make the baseline's latency trials disagree wildly with each other (a very noisy baseline machine)."""
    data = json.loads(path.read_text())
    for batch, trials in data["latency"]["trials"].items():
        data["latency"]["trials"][batch] = [[x * f for x in t] for t, f in zip(trials, factors)]
    path.write_text(json.dumps(data))


def test_update_baseline_records_identity_environment_and_raw_trials(setup: dict[str, Path]) -> None:
    result = check(setup["good"], baseline=setup["baseline"], data=setup["data"], update_baseline=True,
                   **fast(batches="1,2", trials=3))
    assert result.updated and result.exit_code == 0
    data = json.loads(setup["baseline"].read_text())
    assert data["kind"] == "edgeres.baseline"
    assert data["artifact"]["sha256"] == data["environment"]["artifact_sha256"] and data["artifact"]["model_sha256"]
    assert data["artifact"]["backend"] == "onnxruntime" and data["device"] == data["environment"]["device"]
    assert data["accuracy"]["top1"] == 100.0 and data["accuracy"]["data"]["images"] == 12
    trials = data["latency"]["trials"]
    assert sorted(trials) == ["1", "2"] and all(len(t) == 3 and all(len(s) == 20 for s in t) for t in trials.values())
    assert load_baseline(setup["baseline"]).latency_trials()[2][0] == trials["2"][0]
    assert data["format"] == 2 and data["latency"]["settings"]["spinning"] is False
    probe = data["latency"]["probe"]  # a real probe, sized per batch and timed in the same trials
    assert sorted(probe["specs"]) == ["1", "2"]
    assert all(s["size"] >= 4 and s["depth"] == 4 for s in probe["specs"].values())  # no Conv: the fewest
    assert all(len(t) == 3 and all(len(s) == 20 for s in t) for t in probe["trials"].values())
    machine = data["latency"]["machine"]
    assert machine["before"]["cpu_count"] >= 1 and len(machine["before"]["loadavg"]) == 3
    assert {r.metric for r in result.rows} >= {"machine-speed probe b1", "machine-speed probe b2"}


def test_rerun_of_the_same_artifact_passes(setup: dict[str, Path], virtual_clock: VirtualClock) -> None:
    """Same artifact, same speed, fresh per-call noise (5 % lognormal, another seed): every row passes."""
    many = fast(trial_iterations=200)  # p99 is judged only from >= 200 calls per trial
    check(setup["good"], baseline=setup["baseline"], data=setup["data"], update_baseline=True,
          runner=SleepRunner(CARD, ms=4.0, clock=virtual_clock, jitter=0.05, seed=1),
          probe=probes(virtual_clock), **fast(many, batches=(1, 8)))
    result = check(setup["good"], baseline=setup["baseline"],
                   runner=SleepRunner(CARD, ms=4.0, clock=virtual_clock, jitter=0.05, seed=2),
                   probe=probes(virtual_clock, seed=20), **many)
    assert _verdicts(result) == {"top-1 accuracy": Verdict.PASS, "top-3 accuracy": Verdict.PASS,
                                 "latency median b1": Verdict.PASS, "latency p99 b1": Verdict.PASS,
                                 "latency median b8": Verdict.PASS, "latency p99 b8": Verdict.PASS}
    assert result.exit_code == 0
    # the baseline's artifact is the one checked: timing it against itself tells nothing, so stored + probe
    assert any("stored samples" in n and "artifact being checked" in n for n in result.notes)
    assert any(n.startswith("machine during latency trials: baseline load") for n in result.notes)
    few = check(setup["good"], baseline=setup["baseline"],
                runner=SleepRunner(CARD, ms=4.0, clock=virtual_clock, jitter=0.05, seed=2),
                probe=probes(virtual_clock, seed=20), **FAST)
    assert _verdicts(few)["latency p99 b1"] is Verdict.INFO and few.exit_code == 0
    assert "p99 not judged" in next(r.message for r in few.rows if r.metric == "latency p99 b1")


def test_slower_runner_is_a_regression(setup: dict[str, Path], virtual_clock: VirtualClock) -> None:
    check(setup["good"], baseline=setup["baseline"], update_baseline=True,
          runner=SleepRunner(CARD, ms=4.0, clock=virtual_clock, jitter=0.05, seed=1),
          probe=probes(virtual_clock, batches=(1,)), **fast(batches=(1,)))
    result = check(setup["good"], baseline=setup["baseline"],
                   runner=SleepRunner(CARD, ms=4.0, extra_ms=1.0, clock=virtual_clock, jitter=0.05, seed=2),
                   probe=probes(virtual_clock, batches=(1,), seed=20), **FAST)
    row = next(r for r in result.rows if r.metric == "latency median b1")
    assert row.verdict is Verdict.FAIL and row.now / row.baseline == pytest.approx(1.25, abs=0.05)
    assert "CI" in row.message and "relative to the machine-speed probe" in row.message and result.exit_code == 1


def test_small_slowdown_within_tolerance_passes_and_near_it_is_inconclusive(
        setup: dict[str, Path], virtual_clock: VirtualClock) -> None:
    check(setup["good"], baseline=setup["baseline"], update_baseline=True,
          runner=SleepRunner(CARD, ms=4.0, clock=virtual_clock, jitter=0.05, seed=1),
          probe=probes(virtual_clock, batches=(1,)), **fast(batches=(1,)))
    slightly = check(setup["good"], baseline=setup["baseline"],
                     runner=SleepRunner(CARD, ms=4.12, clock=virtual_clock, jitter=0.05, seed=2),
                     probe=probes(virtual_clock, batches=(1,), seed=20), **FAST)
    assert _verdicts(slightly)["latency median b1"] is Verdict.PASS  # +3 %, well inside +10 %
    at_limit = check(setup["good"], baseline=setup["baseline"],
                     runner=SleepRunner(CARD, ms=4.4, clock=virtual_clock, jitter=0.05, seed=2),
                     probe=probes(virtual_clock, batches=(1,), seed=20), **FAST)
    assert _verdicts(at_limit)["latency median b1"] is Verdict.INCONCLUSIVE  # +10 %: the data cannot tell


def test_real_time_regression_is_caught(setup: dict[str, Path]) -> None:
    """Wall-clock timing (no virtual clock): a tenfold slowdown stands out of any scheduler noise."""
    quick = fast(trial_iterations=8)
    check(setup["good"], baseline=setup["baseline"], update_baseline=True,
          runner=SleepRunner(CARD, ms=2.0),
          probe={1: SleepProbe(CARD, ms=2.0)}, **fast(quick, batches=(1,)))
    result = check(setup["good"], baseline=setup["baseline"], runner=SleepRunner(CARD, ms=20.0),
                   probe={1: SleepProbe(CARD, ms=2.0)}, **quick)
    assert _verdicts(result)["latency median b1"] is Verdict.FAIL and result.exit_code == 1


def test_machine_that_changed_speed_is_inconclusive_never_a_regression(
        setup: dict[str, Path], virtual_clock: VirtualClock) -> None:
    """Baseline on a quiet day; today the whole machine runs 1.6x slower (artifact and probe alike). Without the
    probe the unchanged artifact FAILs, which is the false alarm the probe exists for; with it, INCONCLUSIVE, and
    the row says the machine changed. A really slower artifact on today's machine does FAIL, once it stands out of
    the machine's change too."""
    def run(ms: float, machine: float, seed: int, probe: object):
        return SleepRunner(CARD, ms=ms * machine, clock=virtual_clock, jitter=0.05, seed=seed)

    check(setup["good"], baseline=setup["baseline"], update_baseline=True,
          runner=run(4.0, 1.0, 1, None), probe=probes(virtual_clock, batches=(1,)), **fast(batches=(1,)))
    busy = check(setup["good"], baseline=setup["baseline"], runner=run(4.0, 1.6, 2, None),
                 probe=probes(virtual_clock, machine=1.6, batches=(1,), seed=20), **FAST)
    row = next(r for r in busy.rows if r.metric == "latency median b1")
    assert row.verdict is Verdict.INCONCLUSIVE and busy.exit_code == 3
    assert "probe ran 1.6" in row.message and "machine's change of speed" in row.message
    quieter = check(setup["good"], baseline=setup["baseline"], runner=run(4.0, 0.6, 2, None),
                    probe=probes(virtual_clock, machine=0.6, batches=(1,), seed=20), **FAST)
    assert _verdicts(quieter)["latency median b1"] is Verdict.INCONCLUSIVE
    slower = check(setup["good"], baseline=setup["baseline"], runner=run(8.0, 1.6, 2, None),
                   probe=probes(virtual_clock, machine=1.6, batches=(1,), seed=20), **FAST)
    assert _verdicts(slower)["latency median b1"] is Verdict.FAIL and slower.exit_code == 1

    check(setup["good"], baseline=setup["baseline"], update_baseline=True,
          runner=run(4.0, 1.0, 1, None), probe=False, **fast(batches=(1,)))
    unnormalised = check(setup["good"], baseline=setup["baseline"], runner=run(4.0, 1.6, 2, None), probe=False,
                         **FAST)
    assert _verdicts(unnormalised)["latency median b1"] is Verdict.FAIL
    assert any("NOT load-normalised" in n for n in unnormalised.notes)


def test_old_baseline_without_probe_is_judged_and_says_so(setup: dict[str, Path],
                                                           virtual_clock: VirtualClock) -> None:
    """A format-1 baseline (no probe, no machine record, spinning ORT threads) still gates: un-normalised,
    with a note saying so, and its runner settings kept."""
    check(setup["good"], baseline=setup["baseline"], update_baseline=True,
          runner=SleepRunner(CARD, ms=4.0, clock=virtual_clock, jitter=0.05, seed=1),
          probe=probes(virtual_clock, batches=(1,)), **fast(batches=(1,)))
    data = json.loads(setup["baseline"].read_text())
    data["format"] = 1
    for key in ("probe", "machine"):
        del data["latency"][key]
    del data["latency"]["settings"]["spinning"]
    setup["baseline"].write_text(json.dumps(data))
    base = load_baseline(setup["baseline"])
    assert base.probe_trials() is None and base.probe_specs() == {}
    same = check(setup["good"], baseline=setup["baseline"],
                 runner=SleepRunner(CARD, ms=4.0, clock=virtual_clock, jitter=0.05, seed=2), **FAST)
    assert _verdicts(same)["latency median b1"] is Verdict.PASS
    assert any("NOT load-normalised" in n and "--update-baseline" in n for n in same.notes)
    assert same.measured.latency["settings"]["spinning"] is True  # timed as the old baseline was
    slower = check(setup["good"], baseline=setup["baseline"],
                   runner=SleepRunner(CARD, ms=8.0, clock=virtual_clock, jitter=0.05, seed=2), **FAST)
    assert _verdicts(slower)["latency median b1"] is Verdict.FAIL


def test_overlapping_noisy_samples_are_inconclusive(setup: dict[str, Path], virtual_clock: VirtualClock) -> None:
    check(setup["good"], baseline=setup["baseline"], update_baseline=True,
          runner=SleepRunner(CARD, ms=2.0, clock=virtual_clock, jitter=0.05, seed=1),
          probe=probes(virtual_clock, batches=(1,)), **fast(batches=(1,)))
    _scale_trials(setup["baseline"], [0.6, 0.8, 1.0, 1.3, 1.6])
    result = check(setup["good"], baseline=setup["baseline"],
                   runner=SleepRunner(CARD, ms=2.0, clock=virtual_clock, jitter=0.05, seed=2),
                   probe=probes(virtual_clock, batches=(1,), seed=20), **FAST)
    assert _verdicts(result)["latency median b1"] is Verdict.INCONCLUSIVE
    assert result.exit_code == 3


def test_worse_model_fails_accuracy_and_the_reference_rule(setup: dict[str, Path]) -> None:
    check(setup["good"], baseline=setup["baseline"], data=setup["data"], reference=setup["good"],
          update_baseline=True, latency=False, quiet=True)
    same = check(setup["good"], baseline=setup["baseline"], reference=setup["good"], latency=False, quiet=True)
    assert set(_verdicts(same).values()) == {Verdict.PASS} and len(same.rows) == 4
    worse = check(setup["worse"], baseline=setup["baseline"], reference=setup["good"], latency=False,
                  allow_mismatch=True, quiet=True)
    verdicts = _verdicts(worse)
    assert verdicts["top-1 accuracy"] is Verdict.FAIL  # only green stays right: 33 %
    assert verdicts["top-1 vs FP32 reference"] is Verdict.FAIL
    assert verdicts["top-1 agreement with reference"] is Verdict.FAIL
    assert worse.exit_code == 1
    assert any("artifact sha256" in n for n in worse.notes)  # the allowed mismatch is said out loud


def test_accuracy_tolerance_is_overridable(setup: dict[str, Path]) -> None:
    check(setup["good"], baseline=setup["baseline"], data=setup["data"], update_baseline=True, latency=False,
          quiet=True)
    lenient = check(setup["worse"], baseline=setup["baseline"], latency=False, allow_mismatch=True, quiet=True,
                    tolerances=Tolerances(accuracy_pp=70.0))
    assert lenient.exit_code == 0
    with pytest.raises(GateInputError):
        Tolerances(accuracy_pp=-1)


def test_baseline_of_another_artifact_or_device_is_refused(setup: dict[str, Path]) -> None:
    check(setup["good"], baseline=setup["baseline"], data=setup["data"], update_baseline=True, latency=False,
          quiet=True)
    with pytest.raises(BaselineMismatch, match="artifact sha256") as info:
        check(setup["worse"], baseline=setup["baseline"], latency=False, quiet=True)
    assert info.value.exit_code == 2
    data = json.loads(setup["baseline"].read_text())
    data["environment"]["device"] = "NVIDIA Jetson Orin Nano"
    setup["baseline"].write_text(json.dumps(data))
    with pytest.raises(BaselineMismatch, match="device 'NVIDIA Jetson Orin Nano' ->"):
        check(setup["good"], baseline=setup["baseline"], latency=False, quiet=True)


def test_changed_dataset_is_refused(setup: dict[str, Path]) -> None:
    check(setup["good"], baseline=setup["baseline"], data=setup["data"], update_baseline=True, latency=False,
          quiet=True)
    shutil.copy(setup["data"] / "red" / "0.png", setup["data"] / "red" / "extra.png")
    with pytest.raises(BaselineMismatch, match="dataset differs.*12 images.*13"):
        check(setup["good"], baseline=setup["baseline"], latency=False, quiet=True)


def test_input_errors(setup: dict[str, Path]) -> None:
    with pytest.raises(GateInputError, match="not found"):
        check(setup["good"], baseline=setup["baseline"], latency=False, quiet=True)
    setup["baseline"].write_text('{"kind": "edgeres.bench"}')
    with pytest.raises(GateInputError, match="not an edgeres baseline"):
        check(setup["good"], baseline=setup["baseline"], latency=False, quiet=True)
    check(setup["good"], baseline=setup["baseline"], update_baseline=True,
          runner=SleepRunner(CARD, ms=0.1),
          probe=False, **fast(batches=(1,)))
    with pytest.raises(GateInputError, match="no accuracy"):
        check(setup["good"], baseline=setup["baseline"], data=setup["data"], latency=False, quiet=True)
    with pytest.raises(GateInputError, match="no latency for batch"):
        check(setup["good"], baseline=setup["baseline"], runner=SleepRunner(CARD, ms=0.1), **fast(batches=(2,)))
    with pytest.raises(GateInputError, match="needs labelled images"):
        check(setup["good"], baseline=setup["baseline"], reference=setup["good"], update_baseline=True,
              latency=False, quiet=True)
    with pytest.raises(GateInputError, match="nothing to compare"):
        check(setup["good"], baseline=setup["baseline"], latency=False, quiet=True)
    with pytest.raises(GateInputError, match="nothing to measure"):
        check(setup["good"], baseline=setup["baseline"], update_baseline=True, latency=False, quiet=True)


# --- CLI ------------------------------------------------------------------------------------------------------

def _cli(*args: str):
    from cli import cli

    return CliRunner().invoke(cli, ["-q", "check", *map(str, args)])


def test_cli_pass_fail_and_junit(setup: dict[str, Path]) -> None:
    junit = setup["tmp"] / "junit.xml"
    res = _cli(setup["good"], "--baseline", setup["baseline"], "--data", setup["data"], "--update-baseline",
               "--no-latency")
    assert res.exit_code == 0, res.output
    assert "baseline written" in res.output
    res = _cli(setup["good"], "--baseline", setup["baseline"], "--no-latency", "--junit", junit)
    assert res.exit_code == 0, res.output
    assert "verdict: PASS" in res.output
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and len(suite.findall("testcase")) == 2
    res = _cli(setup["worse"], "--baseline", setup["baseline"], "--no-latency", "--allow-mismatch", "--junit", junit,
               "--report", setup["tmp"] / "check.md")
    assert res.exit_code == 1, res.output
    assert "FAIL (regression)" in res.output and "baseline mismatch allowed" in res.output
    failures = ET.parse(junit).getroot().findall(".//testcase/failure")
    assert len(failures) == 1 and "top-1" in failures[0].get("message", "")
    assert "| top-1 accuracy | 100.00% | 33.33% |" in (setup["tmp"] / "check.md").read_text()


def test_cli_mismatch_and_missing_baseline_exit_2(setup: dict[str, Path]) -> None:
    res = _cli(setup["good"], "--baseline", setup["baseline"], "--no-latency")
    assert res.exit_code == 2 and "Error:" in res.output and "not found" in res.output
    assert _cli(setup["good"], "--baseline", setup["baseline"], "--data", setup["data"], "--update-baseline",
                "--no-latency").exit_code == 0
    res = _cli(setup["worse"], "--baseline", setup["baseline"], "--no-latency")
    assert res.exit_code == 2 and "--allow-mismatch" in res.output
    assert _cli(setup["good"], "--baseline", setup["baseline"], "--tol-latency", "-1").exit_code == 2


def test_cli_inconclusive_latency_exit_3(setup: dict[str, Path]) -> None:
    res = _cli(setup["good"], "--baseline", setup["baseline"], "--update-baseline", "--batch", "1", "--trials", "5",
               "--trial-duration", "20ms")
    assert res.exit_code == 0, res.output
    _scale_trials(setup["baseline"], [0.1, 0.3, 1.0, 3.0, 10.0])
    res = _cli(setup["good"], "--baseline", setup["baseline"], "--trials", "5", "--trial-duration", "20ms", "--json")
    assert res.exit_code == 3, res.output
    verdict = json.loads(res.stdout)
    assert verdict["verdict"] == "INCONCLUSIVE" and verdict["exit_code"] == 3
    assert {r["metric"] for r in verdict["rows"]} == {"latency median b1", "latency p99 b1"}


def test_tensorrt_engine_gate_is_bound_to_its_gpu(setup: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the TensorRT 10.13 test double: accuracy of an engine, and a baseline from another GPU refused."""
    from trt_double import FakeDevice, FakeGpu, install

    from edgeres.backends import tensorrt as trt_backend
    from edgeres.backends.base import BatchProfile, Precision
    from edgeres.io import sha256_file

    install(monkeypatch, "10.13.3")
    engine = setup["tmp"] / "good.fp32.engine"
    trt_backend.build_engine(setup["good"], out=engine, precision=Precision.FP32, card=CARD,
                             source_onnx_sha256=sha256_file(setup["good"]), profile=BatchProfile(1, 4, 8),
                             progress=False)
    check(engine, baseline=setup["baseline"], data=setup["data"], update_baseline=True, latency=False, quiet=True)
    baseline = json.loads(setup["baseline"].read_text())
    assert baseline["device"] == "NVIDIA Jetson AGX Orin (fake)"
    assert baseline["artifact"]["model_sha256"] == sha256_file(setup["good"]) != baseline["artifact"]["sha256"]
    assert check(engine, baseline=setup["baseline"], latency=False, quiet=True).exit_code == 0
    other = FakeDevice(name="NVIDIA Jetson AGX Orin 64GB (fake)")  # same compute capability: the engine runs
    install(monkeypatch, "10.13.3", gpu=FakeGpu(devices=[other]))
    with pytest.raises(BaselineMismatch, match=r"device 'NVIDIA Jetson AGX Orin \(fake\)' -> 'NVIDIA Jetson AGX"):
        check(engine, baseline=setup["baseline"], latency=False, quiet=True)


def test_side_by_side_cancels_machine_drift(setup: dict[str, Path], virtual_clock: VirtualClock) -> None:
    """Baseline written on a quiet day (4 ms); today everything runs 30 % slower. Against the stored samples the
    unchanged speed looks like a regression; timed side by side with the baseline's artifact it passes, and a
    really slower candidate still fails."""
    check(setup["good"], baseline=setup["baseline"], update_baseline=True,
          runner=SleepRunner(CARD, ms=4.0, clock=virtual_clock, jitter=0.05, seed=1),
          probe=probes(virtual_clock, batches=(1,)), **fast(batches=(1,)))

    def today(ms: float, seed: int) -> SleepRunner:
        return SleepRunner(CARD, ms=ms * 1.3, clock=virtual_clock, jitter=0.05, seed=seed)

    stored = check(setup["worse"], baseline=setup["baseline"], allow_mismatch=True, side_by_side=False,
                   runner=today(4.0, 2), probe=probes(virtual_clock, machine=1.3, batches=(1,), seed=20), **FAST)
    assert _verdicts(stored)["latency median b1"] is Verdict.INCONCLUSIVE  # the probe saw the machine change
    side = check(setup["worse"], baseline=setup["baseline"], allow_mismatch=True, side_by_side=True,
                 runner=today(4.0, 2), baseline_runner=today(4.0, 3), **FAST)
    assert _verdicts(side)["latency median b1"] is Verdict.PASS
    assert any("side by side" in n for n in side.notes)
    assert "timed side by side" in next(r.message for r in side.rows if r.metric == "latency median b1")
    slower = check(setup["worse"], baseline=setup["baseline"], allow_mismatch=True, side_by_side=True,
                   runner=today(5.0, 2), baseline_runner=today(4.0, 3), **FAST)
    assert _verdicts(slower)["latency median b1"] is Verdict.FAIL and slower.exit_code == 1


def test_side_by_side_needs_the_unchanged_baseline_artifact(setup: dict[str, Path]) -> None:
    copy = setup["tmp"] / "copy.onnx"
    shutil.copy(setup["good"], copy)
    check(copy, baseline=setup["baseline"], update_baseline=True,
          runner=SleepRunner(CARD, ms=0.1),
          probe=False, **fast(batches=(1,)))
    with pytest.raises(GateInputError, match="cannot be combined"):
        check(copy, baseline=setup["baseline"], update_baseline=True, side_by_side=True, **FAST)
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(GateInputError, match="changed since the baseline"):
        check(setup["good"], baseline=setup["baseline"], allow_mismatch=True, side_by_side=True, **FAST)
    copy.unlink()
    with pytest.raises(GateInputError, match="which is gone"):
        check(setup["good"], baseline=setup["baseline"], allow_mismatch=True, side_by_side=True, **FAST)


def test_cli_side_by_side_is_the_default_when_the_baseline_artifact_is_on_disk(setup: dict[str, Path]) -> None:
    assert _cli(setup["good"], "--baseline", setup["baseline"], "--update-baseline", "--batch", "1", "--trials", "3",
                "--trial-duration", "20ms").exit_code == 0
    for flag in ("--side-by-side", None):
        res = _cli(setup["worse"], "--baseline", setup["baseline"], "--allow-mismatch", "--trials", "3",
                   "--trial-duration", "20ms", "--json", *([flag] if flag else []))
        assert res.exit_code in (0, 1, 3), res.output
        verdict = json.loads(res.stdout)
        assert any("side by side" in n for n in verdict["notes"]), verdict["notes"]
        assert [r["metric"] for r in verdict["rows"]] == ["latency median b1", "latency p99 b1"]
    res = _cli(setup["worse"], "--baseline", setup["baseline"], "--allow-mismatch", "--no-side-by-side", "--trials",
               "3", "--trial-duration", "20ms", "--json")
    assert res.exit_code in (0, 1, 3), res.output
    assert any("relative to the machine-speed probe" in n for n in json.loads(res.stdout)["notes"])
    setup["good"].unlink()  # the baseline's artifact is gone: the stored samples, and a note saying why
    res = _cli(setup["worse"], "--baseline", setup["baseline"], "--allow-mismatch", "--trials", "3",
               "--trial-duration", "20ms", "--json")
    assert res.exit_code in (0, 1, 3), res.output
    assert any("is not on disk" in n and "stored samples" in n for n in json.loads(res.stdout)["notes"])


# --- the latency plan, and the rules the CLI used to hold ------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    ({"trials": 0}, "trials must be an integer >= 1, got 0"),
    ({"trials": 2.5}, "trials must be an integer >= 1, got 2.5"),
    ({"trial_duration_s": 0.0}, "trial duration must be > 0 s"),
    ({"trial_duration_s": None}, "trial duration must be > 0 s"),
    ({"trial_duration_s": float("inf")}, "trial duration must be > 0 s and finite"),
    ({"trial_duration_s": float("nan")}, "trial duration must be > 0 s"),
    ({"trial_iterations": 0}, "trial iterations must be an integer >= 1"),
    ({"warmup_s": -1.0}, "warmup must be >= 0 s, got -1.0"),
    ({"batches": "1,x"}, "batch sizes must be integers"),
    ({"batches": (0,)}, "batch sizes must be at least 1"),
])
def test_latency_plan_refuses_bad_settings(bad: dict, message: str) -> None:
    with pytest.raises(GateInputError, match="latency plan: ") as info:
        LatencyPlan(**bad)
    assert message in str(info.value) and info.value.exit_code == 2


def test_latency_plan_round_trips_and_reads_old_baselines() -> None:
    plan = LatencyPlan(batches="8,1,8", trials=7, trial_iterations=40, warmup_s=0.0, transfers=False)
    assert plan.batches == (8, 1) and LatencyPlan.from_dict(plan.to_dict()) == plan
    assert LatencyPlan(trial_duration_s=None, trial_iterations=5).trial_iterations == 5  # iterations, no duration
    old = {"trials": 3, "trial_duration_s": 0.2, "trial_iterations": None, "transfers": True, "spinning": True}
    assert LatencyPlan.from_dict(old) == LatencyPlan(trials=3, trial_duration_s=0.2)  # batches, warmup: defaults
    assert LatencyPlan.from_dict(None) == LatencyPlan()
    assert LatencyPlan(trials=3).differences(LatencyPlan()) == ["trials 5 -> 3"]


def test_baseline_records_the_plan_and_a_changed_plan_is_noted(setup: dict[str, Path]) -> None:
    check(setup["good"], baseline=setup["baseline"], update_baseline=True, runner=SleepRunner(CARD, ms=0.1),
          probe=False, **fast(batches=(1,)))
    settings = json.loads(setup["baseline"].read_text())["latency"]["settings"]
    assert settings == {**FAST["plan"].with_batches((1,)).to_dict(), "spinning": False}
    again = check(setup["good"], baseline=setup["baseline"], runner=SleepRunner(CARD, ms=0.1), probe=False,
                  **fast(trials=3))
    assert "latency plan differs from the baseline's: trials 5 -> 3" in again.notes
    assert again.measured.latency["settings"]["batches"] == [1]  # the baseline's batch sizes, resolved


def test_check_writes_its_reports_and_any_stopping_error_is_exit_2(setup: dict[str, Path]) -> None:
    junit, report = setup["tmp"] / "ci" / "junit.xml", setup["tmp"] / "check.md"
    check(setup["good"], baseline=setup["baseline"], data=setup["data"], update_baseline=True, latency=False,
          quiet=True)
    result = check(setup["worse"], baseline=setup["baseline"], latency=False, allow_mismatch=True, quiet=True,
                   junit=junit, report=report)
    assert result.exit_code == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "1" and suite.find("properties/property[@name='artifact']").get("value") == str(
        setup["worse"])
    assert "| top-1 accuracy | 100.00% | 33.33% |" in report.read_text()
    with pytest.raises(GateInputError, match="--junit") as info:  # an output over an input: refused before work
        check(setup["good"], baseline=setup["baseline"], latency=False, junit=setup["baseline"], quiet=True)
    assert info.value.exit_code == 2
    (setup["data"] / "red" / "0.png").write_bytes(b"not a png")  # an error that stops the gate (DataError, 1) ...
    with pytest.raises(GateInputError) as info:
        check(setup["good"], baseline=setup["baseline"], latency=False, allow_mismatch=True, quiet=True)
    assert info.value.exit_code == 2 and "0.png" in str(info.value)  # ... is exit 2, never a "regression"
    with pytest.raises(GateInputError, match="give ARTIFACT or --server URL"):
        check(setup["good"], baseline=setup["baseline"], server="http://127.0.0.1:9", quiet=True)
    with pytest.raises(GateInputError, match="nothing to check"):
        check(baseline=setup["baseline"], quiet=True)


def test_cli_refuses_a_bad_plan_with_exit_2(setup: dict[str, Path]) -> None:
    res = _cli(setup["good"], "--baseline", setup["baseline"], "--update-baseline", "--trial-duration", "0")
    assert res.exit_code == 2 and "trial duration must be > 0" in res.output and "Traceback" not in res.output
    res = _cli("--baseline", setup["baseline"], "--update-baseline")
    assert res.exit_code == 2 and "give ARTIFACT or --server URL" in res.output
    res = _cli(setup["good"], "--baseline", setup["baseline"], "--update-baseline", "--model", "good")
    assert res.exit_code == 2 and "--model names a served model" in res.output
    res = _cli("--server", "http://127.0.0.1:9", "--baseline", setup["baseline"], "--update-baseline")
    assert res.exit_code == 2 and "cannot reach the server" in res.output  # exit 2: the gate could not run


@pytest.mark.parametrize("name", ["accuracy_pp", "latency_median", "latency_p99"])
def test_a_nan_tolerance_is_refused_instead_of_passing_everything(name: str) -> None:
    # every comparison with NaN is False: "drop > nan" would never fail a row
    with pytest.raises(GateInputError, match=f"tolerance {name} must be a number >= 0, got nan"):
        Tolerances(**{name: float("nan")})


def test_artifact_or_server_is_checked_before_the_baseline_is_read(tmp_path: Path) -> None:
    missing = tmp_path / "no-baseline.json"
    with pytest.raises(GateInputError, match="nothing to check: give ARTIFACT or --server URL"):
        check(None, baseline=missing)
    with pytest.raises(GateInputError, match="--model names a served model"):
        check(tmp_path / "m.onnx", baseline=missing, model="resnet")
