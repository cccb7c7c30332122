"""edgeres.calibrate and the `edgeres calibrate` / `edgeres quantize` commands, on real PNG folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from calibration import Ranges, trt_cache
from cli import cli
from edgeres.calibrating import calibrate
from edgeres.ranges import load_ranges_for
from edgeres.card import ModelCard, Preprocess, card_from_onnx
from edgeres.errors import DataError, InputError
from edgeres.io import sha256_file
from edgeres.quantization import fold_batchnorm, tensors_to_observe
from helpers.models import export_tiny, tiny_resnet20

SIZE = 16
CLASSES = ["a", "b", "c"]


def _write_pngs(folder: Path, per_class: int, *, size: int = SIZE, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 70 * k, 40, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / name / f"{i:03d}.png")
    return folder


def _export(path: Path, *, dataset: dict | None, card: bool = True, seed: int = 0) -> Path:
    model_card = ModelCard(arch="resnet20", class_names=CLASSES, preprocess=Preprocess.small(size=SIZE, channels=1),
                           dataset=dataset or {})
    return export_tiny(tiny_resnet20(classes=len(CLASSES), seed=seed, size=SIZE, warmup=4), path,
                       model_card if card else None, size=SIZE)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    train = _write_pngs(root / "data" / "train", 8)
    _write_pngs(root / "data" / "val", 2, seed=1)
    model = _export(root / "model.onnx", dataset={"root": str(root / "data")})
    return root, model, train


def test_calibrate_defaults_to_the_cards_training_set(setup):
    root, model, _ = setup
    ranges = calibrate(model, method="minmax", images=12, batch_size=4, quiet=True)
    assert ranges.num_images == 12 and ranges.method == "minmax"
    assert ranges.model_sha256 == sha256_file(model)
    assert set(ranges.amax) == set(tensors_to_observe(fold_batchnorm(onnx.load(str(model)))))
    assert ranges.preprocess == Preprocess.small(size=SIZE, channels=1).to_dict()
    # the graph input's amax is the preprocessing's exact range: pixels in [0, 1], (x - 0.5) / 0.25
    assert ranges.amax["input"] == pytest.approx(2.0)
    assert ranges.options["input_amax"] == "preprocessing"


def test_ranges_equal_an_independent_minmax_over_the_same_images(setup):
    from edgeres.data import load_image

    root, model, train = setup
    paths = sorted(train.rglob("*.png"))
    ranges = calibrate(model, data=train, method="minmax", images=len(paths), batch_size=6, quiet=True)
    folded = fold_batchnorm(onnx.load(str(model)))
    names = [n for n in ranges.amax if n != "input"]
    for name in names:
        folded.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    x = np.stack([load_image(p, card_from_onnx(folded).preprocess) for p in paths])
    outs = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        names, {"input": x})
    for name, value in zip(names, outs):
        assert ranges.amax[name] == pytest.approx(float(np.abs(value).max()), rel=1e-5)
    assert float(np.abs(x).max()) <= ranges.amax["input"] == pytest.approx(2.0)


def test_entropy_is_the_default_and_sampling_is_seeded(setup):
    _, model, train = setup
    a = calibrate(model, data=train, images=9, batch_size=3, seed=1, quiet=True)
    b = calibrate(model, data=train, images=9, batch_size=3, seed=1, quiet=True)
    c = calibrate(model, data=train, images=9, batch_size=3, seed=2, quiet=True)
    assert a.method == "entropy" and a.amax == b.amax and a.manifest_sha256 == b.manifest_sha256
    assert a.manifest_sha256 != c.manifest_sha256


def test_no_data_anywhere_says_how_to_pass_it(tmp_path):
    model = _export(tmp_path / "m.onnx", dataset=None)
    with pytest.raises(InputError, match="--data"):
        calibrate(model, quiet=True)
    moved = _export(tmp_path / "m2.onnx", dataset={"root": str(tmp_path / "gone")})
    with pytest.raises(InputError, match="not on this machine.*--data"):
        calibrate(moved, quiet=True)


def test_empty_or_too_small_folders_are_refused(setup, tmp_path):
    _, model, _ = setup
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no calibration images; pass --data"):
        calibrate(model, data=tmp_path / "empty", quiet=True)
    small = _write_pngs(tmp_path / "small", 1)
    with pytest.raises(InputError, match="fewer than one batch of 32"):
        calibrate(model, data=small, quiet=True)
    with pytest.raises(InputError, match="not found"):
        calibrate(model, data=tmp_path / "missing", quiet=True)


def test_cardless_model_refuses_images_of_another_size(tmp_path):
    model = _export(tmp_path / "bare.onnx", dataset=None, card=False)
    ok = _write_pngs(tmp_path / "ok", 2)
    ranges = calibrate(model, data=ok, method="minmax", batch_size=2, quiet=True)
    assert ranges.amax["input"] == 1.0  # no card: pixels in [0, 1], no normalisation
    big = _write_pngs(tmp_path / "big", 2, size=SIZE * 2)
    with pytest.raises(DataError, match=f"is {2 * SIZE}x{2 * SIZE} but the model .* takes {SIZE}x{SIZE}"):
        calibrate(model, data=big, batch_size=2, quiet=True)


def test_ranges_of_another_model_are_refused_naming_both_hashes(setup, tmp_path):
    _, model, train = setup
    other = _export(tmp_path / "other.onnx", dataset=None, seed=1)
    ranges = calibrate(other, data=train, method="minmax", images=6, batch_size=3, quiet=True)
    path = ranges.save(tmp_path / "other.ranges.json")
    with pytest.raises(InputError) as err:
        load_ranges_for(model, path)
    assert sha256_file(model) in str(err.value) and sha256_file(other) in str(err.value)
    assert load_ranges_for(other, path).amax == ranges.amax


# --- CLI ---------------------------------------------------------------------------------------------------------

def test_cli_calibrate_then_quantize(setup, tmp_path):
    _, model, train = setup
    runner = CliRunner()
    ranges, cache = tmp_path / "r.json", tmp_path / "model.cache"
    args = ["calibrate", str(model), "--data", str(train), "--method", "percentile", "--images", "12", "--batch",
            "4", "--out", str(ranges), "--trt-cache", str(cache), "--trt-version", "8.6"]
    result = runner.invoke(cli, ["-q", *args])
    assert result.exit_code == 0, result.output
    assert "tensors" in result.output and "percentile" in result.output and "12" in result.output
    loaded = Ranges.load(ranges)
    header, scales = trt_cache.read(cache)
    assert header.startswith("TRT-8600-EntropyCalibration2") and set(scales) == set(loaded.amax)
    again = runner.invoke(cli, ["-q", *args])
    assert again.exit_code == 1 and "--force" in again.output

    out = tmp_path / "m.int8.onnx"
    result = runner.invoke(cli, ["quantize", str(model), "--ranges", str(ranges), "--out", str(out),
                                 "--activations", "u8", "--keep-fp32", "Gemm"])
    assert result.exit_code == 0, result.output
    q = onnx.load(str(out))
    onnx.checker.check_model(q)
    assert card_from_onnx(q) == card_from_onnx(onnx.load(str(model)))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    refused = runner.invoke(cli, ["quantize", str(model), "--ranges", str(ranges), "--out", str(out)])
    assert refused.exit_code == 1 and "--force" in refused.output
    forced = runner.invoke(cli, ["quantize", str(model), "--ranges", str(ranges), "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output


def test_cli_calibrate_refuses_a_bad_trt_version_before_calibrating(setup, tmp_path, monkeypatch):
    _, model, train = setup
    import edgeres.calibrating as calibrate_mod

    def must_not_run(*args, **kwargs):
        raise AssertionError("calibration ran before --trt-version was checked")

    monkeypatch.setattr(calibrate_mod, "calibrate", must_not_run)
    result = CliRunner().invoke(cli, ["-q", "calibrate", str(model), "--data", str(train), "--out",
                                      str(tmp_path / "r.json"), "--trt-cache", str(tmp_path / "c.cache"),
                                      "--trt-version", "abc"])
    assert result.exit_code == 1 and result.output.startswith("Error:") and "abc" in result.output
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "c.cache").exists()


def test_cli_quantize_refuses_another_models_ranges(setup, tmp_path):
    _, model, train = setup
    other = _export(tmp_path / "other.onnx", dataset=None, seed=3)
    ranges = calibrate(other, data=train, method="minmax", images=3, batch_size=3, quiet=True)
    path = ranges.save(tmp_path / "r.json")
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(cli, ["quantize", str(model), "--ranges", str(path), "--out", str(out)])
    assert result.exit_code == 1 and "sha256" in result.output and "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".q.onnx*"))  # nothing half-written
    bad = CliRunner().invoke(cli, ["calibrate", str(model), "--data", str(train), "--batch", "1000",
                                   "--out", str(tmp_path / "x.json")])
    assert bad.exit_code == 1 and "fewer than one batch" in bad.output
    assert not (tmp_path / "x.json").exists()
