"""Per-layer INT8 sensitivity, the accuracy budget and cross-layer range equalisation, on a trained ResNet-20 whose
one Conv-ReLU-Conv chain was made imbalanced (FP32 unchanged, per-tensor INT8 ruined)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeres.card import read_onnx_card
from edgeres.data import load_batch, open_dataset
from edgeres.errors import InputError
from edgeres.quantization import fold_batchnorm, quantize_model
from edgeres.quantization.equalize import equalizable_pairs, equalize, imbalance
from edgeres.sensitivity import check_layer_names, fit_budget, measure_sensitivity, quantizable_layers

FACTOR = 1000.0


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def labelled(tiny_onnx: Path, digits_slice: Path) -> tuple[np.ndarray, np.ndarray]:
    """The held-out val images of the digits slice (never the calibration list), preprocessed per the card."""
    val = open_dataset(digits_slice).val
    return load_batch(val.paths, read_onnx_card(str(tiny_onnx)).preprocess), np.array(val.labels)


@pytest.fixture(scope="module")
def damaged(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny model with chain 0 imbalanced by FACTOR; and the name of the Conv that reads the ruined tensor."""
    from edgeres.card import rebase_onnx_card

    model = fold_batchnorm(onnx.load(str(tiny_onnx)))
    pair = imbalance(model, factor=FACTOR, pair=0)
    path = tmp_path_factory.mktemp("damaged") / "damaged.onnx"
    rebase_onnx_card(model, source=tiny_onnx, out=path)  # its card still finds the dataset from the new folder
    onnx.save(model, str(path))
    return path, pair.second


@pytest.fixture(scope="module")
def damaged_ranges(damaged):
    return _ranges(damaged[0])


@pytest.fixture(scope="module")
def report(damaged, damaged_ranges, labelled):
    x, y = labelled
    return measure_sensitivity(damaged[0], damaged_ranges, x, y, quiet=True)


def _ranges(path: Path, equalize_graph: bool = False):
    from edgeres.calibrating import calibrate

    return calibrate(path, method="minmax", images=20, batch_size=10, quiet=True, equalize=equalize_graph)


def _top1(path: Path, ranges, x, y, **kw) -> float:
    qmodel = quantize_model(onnx.load(str(path)), ranges.amax, equalize=ranges.options.get("equalize", False), **kw)
    return 100.0 * float((_run(qmodel, x).argmax(1) == y).mean())


def test_equalize_keeps_fp32_and_evens_out_the_chains(tiny_onnx, damaged, labelled) -> None:
    x, _ = labelled
    path, _ = damaged
    model = onnx.load(str(path))
    before = _run(model, x)
    folded = fold_batchnorm(model)
    pairs = equalize(folded)
    assert len(pairs) == 9 and pairs == equalizable_pairs(folded), "ResNet-20: one Conv-ReLU-Conv chain per block"
    np.testing.assert_allclose(_run(folded, x), before, rtol=1e-3, atol=1e-4)  # ReLU is positively homogeneous
    again = fold_batchnorm(onnx.load(str(tiny_onnx)))
    imbalance(again, factor=FACTOR, pair=0)
    equalize(again)
    same = [(a.name, a.raw_data) for a in folded.graph.initializer]
    assert same == [(a.name, a.raw_data) for a in again.graph.initializer], "deterministic: the writer and " \
                                                                           "calibration see the same graph"


def test_the_imbalance_ruins_int8_and_equalisation_repairs_it_with_every_layer_int8(tiny_onnx, damaged,
                                                                                      damaged_ranges, labelled) -> None:
    x, y = labelled
    path, _ = damaged
    fp32 = 100.0 * float((_run(onnx.load(str(path)), x).argmax(1) == y).mean())
    healthy = _top1(tiny_onnx, _ranges(tiny_onnx), x, y)
    broken = _top1(path, damaged_ranges, x, y)
    repaired = _top1(path, _ranges(path, equalize_graph=True), x, y)
    assert fp32 - broken >= 5.0, f"plain INT8 should lose several points: FP32 {fp32:.1f}, INT8 {broken:.1f}"
    assert repaired >= healthy - 1.0 and fp32 - repaired <= 2.0, (fp32, healthy, broken, repaired)


def test_sensitivity_ranks_the_damaged_layer_first(damaged, report) -> None:
    path, victim = damaged
    layers = quantizable_layers(onnx.load(str(path)))
    assert len(report.layers) == len(layers) == 20, "19 Conv + 1 Gemm in a ResNet-20"
    first = report.layers[0]
    assert first.node == victim and first.tensor == next(layer.tensor for layer in layers if layer.node == victim)
    assert first.only_top1_drop_pp > 3.0 and first.only_logit_error > 3 * report.layers[1].only_logit_error
    assert report.fp32_top1 - report.int8_top1 > 3.0
    data = report.to_dict()
    assert [entry["node"] for entry in data["layers"]] == report.ranking()


def test_a_budget_keeps_the_fewest_layers_in_float(damaged, damaged_ranges, report, labelled) -> None:
    x, y = labelled
    path, victim = damaged
    ranges = damaged_ranges
    plan = fit_budget(path, ranges, x, y, max_drop_pp=0.5 + _healthy_drop(path, ranges, x, y, victim),
                      order=report.ranking(), quiet=True)
    assert victim in plan.kept and plan.int8_layers >= 0.8 * plan.layers_total
    assert plan.top1_drop_pp <= plan.max_drop_pp
    measured = plan.fp32_top1 - _top1(path, ranges, x, y, keep_fp32=plan.kept)
    assert measured == pytest.approx(plan.top1_drop_pp), "the plan's drop is what the Q/DQ model gives"


def _healthy_drop(path, ranges, x, y, victim) -> float:
    """The drop with only the damaged layer in float: the budget floor this tiny, briefly trained model has."""
    fp32 = 100.0 * float((_run(onnx.load(str(path)), x).argmax(1) == y).mean())
    return max(0.0, fp32 - _top1(path, ranges, x, y, keep_fp32=[victim]))


def test_budget_and_layer_names_are_checked(damaged, damaged_ranges, labelled) -> None:
    x, y = labelled
    path, victim = damaged
    ranges = damaged_ranges
    with pytest.raises(InputError, match="--max-drop must be 0 or more"):
        fit_budget(path, ranges, x, y, max_drop_pp=-1, order=[victim])
    with pytest.raises(InputError, match="no labelled images"):
        fit_budget(path, ranges, x[:0], y[:0], max_drop_pp=1, order=[victim])
    with pytest.raises(InputError, match="--exclude-layers: nope is not a quantizable layer"):
        check_layer_names(onnx.load(str(path)), ["nope"])
    assert check_layer_names(onnx.load(str(path)), [victim]) == [victim]


def test_a_budget_missed_with_every_layer_in_float_is_one_line(damaged, damaged_ranges, labelled) -> None:
    """When what the budget cannot give back (residual Adds) alone breaks accuracy, say so and what to do."""
    from edgeres.quantization.graph import GraphIndex, residual_adds

    x, y = labelled
    path, victim = damaged
    folded = fold_batchnorm(onnx.load(str(path)))
    index = GraphIndex.of(folded.graph)
    skips = {t for _, (_, inputs) in residual_adds(index).items() for t in inputs}
    ruined = type(damaged_ranges)(**{**damaged_ranges.__dict__, "path": None,
                                     "amax": {k: (1e-4 if k in skips else v) for k, v in damaged_ranges.amax.items()}})
    with pytest.raises(InputError, match=r"even with all 20 layers in float .* raise the budget"):
        fit_budget(path, ruined, x, y, max_drop_pp=0.0, order=[victim], quiet=True)


# --- the CLI --------------------------------------------------------------------------------------------------

def _invoke(*args: object):
    from click.testing import CliRunner

    from cli import cli

    return CliRunner().invoke(cli, ["-q", *[str(a) for a in args]])


def test_cli_sensitivity_writes_a_ranking_a_table_and_a_plot(damaged, digits_slice, tmp_path) -> None:
    import json

    path, victim = damaged
    result = _invoke("sensitivity", path, "--data", digits_slice, "--images", 40, "--calib-method", "minmax",
                     "--calib-images", 20,
                     "--out", tmp_path / "sens.json", "--plot", tmp_path / "sens.png")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "sens.json").read_text())
    assert report["layers"][0]["node"] == victim and report["layers"][0]["tensor"]
    assert report["images"] == 40 and (tmp_path / "sens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = result.output.splitlines()
    first_row = lines[next(i for i, line in enumerate(lines) if line.startswith("--")) + 1]
    assert victim in first_row, "the table starts with the most sensitive layer"


def test_cli_build_with_a_budget_records_what_it_kept_in_float(damaged, digits_slice, tmp_path) -> None:
    import json

    path, victim = damaged
    out = tmp_path / "out"
    result = _invoke("build", path, "--precision", "int8", "--backend", "onnxruntime", "--calib-method", "minmax",
                     "--calib-images", 20, "--max-drop", 30, "--eval-data", digits_slice, "--exclude-layers", victim, "--out", out,
                     "--verify-images", 0, "--json")
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out / f"{path.stem}.int8.onnx.json").read_text())
    int8 = sidecar["int8"]
    assert int8["high_precision_layers"][0] == victim and int8["measured_top1_drop_pp"] <= 30
    assert int8["eval_data"].endswith(f"{digits_slice}/val") or "val" in int8["eval_data"]
    artifact = onnx.load(str(out / f"{path.stem}.int8.onnx"))
    consumers = [n for n in artifact.graph.node if n.name == victim or victim in n.name]
    assert consumers, "the layer left in float keeps its name"
    # `edgeres check` verifies the recorded budget against the FP32 reference
    built, baseline = out / f"{path.stem}.int8.onnx", tmp_path / "baseline.json"
    first = _invoke("check", built, "--baseline", baseline, "--data", digits_slice, "--reference", path,
                    "--update-baseline", "--no-latency")
    assert first.exit_code == 0, first.output
    again = _invoke("check", built, "--baseline", baseline, "--data", digits_slice, "--reference", path,
                    "--no-latency", "--json")
    assert again.exit_code == 0, again.output
    rows = {row["metric"]: row for row in json.loads(again.output)["rows"]}
    assert rows["top-1 drop vs FP32 (build budget)"]["verdict"] == "PASS"


def test_the_budget_row_fails_a_drop_beyond_the_budget() -> None:
    from edgeres.checking import Verdict, _budget_row

    now = {"top1": 90.0, "reference": {"top1": 92.0},
           "budget": {"max_drop_pp": 1.0, "measured_top1_drop_pp": 0.4, "high_precision_layers": ["a"]}}
    assert _budget_row(now)[0].verdict is Verdict.FAIL
    assert _budget_row({**now, "top1": 91.5})[0].verdict is Verdict.PASS
    assert _budget_row({**now, "budget": None}) == [] and _budget_row({**now, "reference": None}) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--max-drop", "-1"], "--max-drop must be 0 or more"),
    (["--exclude-layers", "nope"], "nope is not a quantizable layer"),
])
def test_cli_build_refuses_bad_budget_input_in_one_line(damaged, digits_slice, tmp_path, args, message) -> None:
    path, _ = damaged
    result = _invoke("build", path, "--precision", "int8", "--backend", "onnxruntime", "--calib-method", "minmax",
                     "--calib-images", 20, "--eval-data", digits_slice, "--out", tmp_path / "o", "--verify-images", 0, *args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1
    assert not (tmp_path / "o").exists(), "refused before calibrating: nothing written"


def test_cli_build_refuses_int8_options_for_float_builds(damaged, tmp_path) -> None:
    path, _ = damaged
    result = _invoke("build", path, "--precision", "fp32", "--backend", "onnxruntime", "--equalize",
                     "--out", tmp_path / "o", "--verify-images", 0)
    assert result.exit_code != 0 and "apply to --precision int8 only" in result.output


@pytest.mark.parametrize("activations", ["s8", "u8"])
def test_a_layer_kept_in_float_reads_its_input_unquantized_in_both_forms(damaged, damaged_ranges,
                                                                         activations) -> None:
    """The u8 form quantizes the outputs of quantized ops too; a kept layer must still read the float tensor,
    or the ONNX Runtime artifact keeps the very damage the budget left in float."""
    path, victim = damaged
    qmodel = quantize_model(onnx.load(str(path)), damaged_ranges.amax, activations=activations, keep_fp32=[victim])
    dq_outputs = {o for n in qmodel.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    node = next(n for n in qmodel.graph.node if n.name == victim)
    assert not any(name in dq_outputs for name in node.input)
    assert sum(n.op_type == "QuantizeLinear" for n in qmodel.graph.node) > 10, "the rest is still quantized"


def test_evaluation_never_uses_the_calibration_images(damaged, digits_slice, tmp_path) -> None:
    """The card lists calibration images relative to the dataset root; a folder holding them is refused."""
    from edgeres.card import calibration_images, read_onnx_card
    from edgeres.sensitivity import labelled_images

    path, _ = damaged
    listed = calibration_images(read_onnx_card(str(path)))
    assert listed and all(p.is_file() for p in listed)
    x, y, where = labelled_images(path, limit=30)
    assert len(x) == 30 and "validation split" in where
    with pytest.raises(InputError, match="of the calibration images"):
        labelled_images(path, data=listed[0].parents[1])  # the training folder the calibration list comes from
