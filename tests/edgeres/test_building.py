"""The build pipeline on ONNX Runtime: fp32/fp16/int8 artifacts, verification numbers, ranges reuse, checkpoints."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from edgeres.backends import BatchProfile, Precision, sidecar_path
from edgeres.building import Int8Options, build_artifact, build_table
from edgeres.card import ModelCard, Preprocess
from edgeres.errors import InputError
from helpers.models import export_tiny, tiny_resnet20

CLASSES = [f"c{i}" for i in range(4)]
MINMAX, PERCENTILE = Int8Options(calib_method="minmax"), Int8Options(calib_method="percentile")


def _model(seed: int = 0) -> torch.nn.Module:
    return tiny_resnet20(classes=len(CLASSES), seed=seed)


def _card(dataset: dict | None = None) -> ModelCard:
    return ModelCard(arch="resnet20", class_names=CLASSES, preprocess=Preprocess.small(size=32, channels=1),
                     dataset=dataset or {})


def _export(model: torch.nn.Module, path: Path, card: ModelCard) -> Path:
    return export_tiny(model, path, card)


def _images(folder: Path, per_class: int, *, seed: int = 0) -> Path:
    """Class folders of smooth random shapes (not pure noise, so activations look image-like)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cx, cy, r = rng.uniform(8, 24), rng.uniform(8, 24), rng.uniform(3, 10)
            img = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) * (60 * c + 40) + rng.normal(0, 8, (32, 32))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(folder / name / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("build")
    data = root / "data"
    _images(data / "train", 6)
    _images(data / "val", 2, seed=1)
    calib = _images(root / "calib", 5, seed=2)
    plain = _export(_model(), root / "plain.onnx", _card())
    with_data = _export(_model(), root / "withdata.onnx", _card({"root": str(data)}))
    return {"root": root, "calib": calib, "plain": plain, "with_data": with_data, "data": data}


def test_fp32_build_on_auto_says_why_and_verifies(world: dict[str, Path], tmp_path: Path) -> None:
    result = build_artifact(world["plain"], precision="fp32", calib_dir=world["calib"], out_dir=tmp_path,
                            profile=BatchProfile(1, 4, 8), quiet=True)
    assert result.artifact == tmp_path / "plain.fp32.onnx" and result.artifact.is_file()
    assert sidecar_path(result.artifact).is_file()
    assert result.backend == "onnxruntime" and "TensorRT unavailable" in result.backend_reason
    v = result.verification
    assert v is not None and v.source == "calibration images" and v.images == 16 and v.batch == 4
    assert v.top1_agreement == 1.0 and v.max_abs_diff < 1e-4
    rows = dict(build_table(result))
    assert rows["top-1 agreement"] == "100.00%" and rows["backend"].startswith("onnxruntime")
    assert json.loads(json.dumps(result.to_dict()))["verification"]["images"] == 16
    with pytest.raises(InputError, match="already exists; pass --force"):
        build_artifact(world["plain"], precision="fp32", out_dir=tmp_path, quiet=True)


def test_a_users_file_in_the_artifacts_place_is_never_overwritten(world: dict[str, Path], tmp_path: Path) -> None:
    mine = tmp_path / "plain.int8.onnx"  # e.g. written by `edgeres quantize ... --out plain.int8.onnx`
    mine.write_bytes(b"my own quantized model")
    for force in (False, True):
        with pytest.raises(InputError, match="is not an edgeres artifact .* --out"):
            build_artifact(world["plain"], precision="int8", calib_dir=world["calib"], out_dir=tmp_path,
                           force=force, quiet=True)
    assert mine.read_bytes() == b"my own quantized model"


def test_fp16_build_reports_speed_honestly(world: dict[str, Path], tmp_path: Path) -> None:
    result = build_artifact(world["plain"], precision="fp16", calib_dir=world["calib"], out_dir=tmp_path,
                            quiet=True)
    init_types = {i.data_type for i in onnx.load(str(result.artifact)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in init_types
    v = result.verification
    assert v.top1_agreement >= 0.9 and v.max_abs_diff < 0.05
    slower = any("slower than the FP32 ONNX" in n for n in result.notes)
    assert slower == (v.speedup < 1.0)


def test_int8_build_calibrates_then_reuses_only_matching_ranges(world: dict[str, Path], tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for sub in world["calib"].iterdir():
        (calib / sub.name).mkdir()
        for f in sub.iterdir():
            (calib / sub.name / f.name).write_bytes(f.read_bytes())
    first = build_artifact(world["plain"], precision="int8", calib_dir=calib, int8=MINMAX, out_dir=tmp_path,
                           quiet=True)
    assert first.ranges == tmp_path / "plain.minmax.ranges.json" and first.ranges_reused is False
    ops = {n.op_type for n in onnx.load(str(first.artifact)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    sidecar = json.loads(sidecar_path(first.artifact).read_text())
    assert sidecar["precision"] == "int8" and sidecar["int8"]["activations"] == "u8"
    assert sidecar["int8"]["method"] == "minmax" and sidecar["int8"]["num_images"] == 20
    v = first.verification
    assert v.source == "calibration images" and v.top1_agreement >= 0.75 and 0 < v.max_abs_diff < 1.0

    again = build_artifact(world["plain"], precision="int8", calib_dir=calib, int8=MINMAX, out_dir=tmp_path,
                           force=True, quiet=True)
    assert again.ranges_reused is True

    _images(calib / "extra", 1, seed=9)  # a changed calibration set: the old ranges are stale
    stale = build_artifact(world["plain"], precision="int8", calib_dir=calib, int8=MINMAX, out_dir=tmp_path,
                           force=True, quiet=True)
    assert stale.ranges_reused is False
    assert json.loads(stale.ranges.read_text())["manifest_sha256"] != sidecar["int8"]["manifest_sha256"]

    fewer = build_artifact(world["plain"], precision="int8", calib_dir=calib,
                           int8=Int8Options(calib_method="minmax", calib_images=8), out_dir=tmp_path, force=True,
                           quiet=True)
    assert fewer.ranges_reused is False and json.loads(fewer.ranges.read_text())["num_images"] == 8

    other = tmp_path / "other"
    other.mkdir()
    retrained = _export(_model(seed=5), other / "plain.onnx", _card())  # same name, other weights
    moved = tmp_path / "plain.onnx"
    moved.write_bytes(retrained.read_bytes())
    newmodel = build_artifact(moved, precision="int8", calib_dir=calib,
                              int8=Int8Options(calib_method="minmax", calib_images=8), out_dir=tmp_path, force=True,
                              quiet=True)
    assert newmodel.ranges_reused is False


def test_int8_reuses_calibrate_output_beside_the_model_only_with_the_same_options(world: dict[str, Path],
                                                                                    tmp_path: Path) -> None:
    from edgeres.calibrating import calibrate

    model = tmp_path / "m.onnx"
    model.write_bytes(world["plain"].read_bytes())
    calibrate(model, data=world["calib"], method="percentile", batch_size=8, quiet=True).save(tmp_path / "m.ranges.json")
    first = build_artifact(model, precision="int8", calib_dir=world["calib"], int8=PERCENTILE,
                           out_dir=tmp_path / "out", quiet=True)
    assert first.ranges_reused is True and first.ranges == tmp_path / "m.ranges.json"
    other = calibrate(model, data=world["calib"], method="percentile", batch_size=8, quiet=True, percentile=99.0)
    other.save(tmp_path / "m.ranges.json")
    second = build_artifact(model, precision="int8", calib_dir=world["calib"], int8=PERCENTILE,
                            out_dir=tmp_path / "out", force=True, quiet=True)
    assert second.ranges_reused is False and second.ranges == tmp_path / "out" / "m.percentile.ranges.json"


def test_int8_without_calib_uses_the_cards_set_or_says_how(world: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pass --calib DIR"):
        build_artifact(world["plain"], precision="int8", out_dir=tmp_path, quiet=True)
    assert not list(tmp_path.iterdir())  # nothing half-written
    result = build_artifact(world["with_data"], precision="int8", int8=MINMAX, out_dir=tmp_path, quiet=True)
    assert result.ranges_reused is False
    assert json.loads(result.ranges.read_text())["num_images"] == 24  # the card's train/ set: 4 classes x 6
    assert result.verification.source == "calibration images"


def test_checkpoint_is_exported_first(world: dict[str, Path], tmp_path: Path) -> None:
    model = _model(seed=3)
    ckpt = tmp_path / "model.pt"
    card = _card({"root": str(world["data"])})
    torch.save({"format": "edgeres-checkpoint-1", "model": model.state_dict(), "card": card.to_dict()}, ckpt)
    result = build_artifact(ckpt, precision="fp32", out_dir=tmp_path / "out", quiet=True)
    assert result.exported and result.onnx == tmp_path / "out" / "model.onnx" and result.onnx.is_file()
    assert result.artifact == tmp_path / "out" / "model.fp32.onnx"
    assert result.verification.top1_agreement == 1.0
    os.utime(ckpt, (1, 1))  # checkpoint older than its export: reused without --force
    reuse = build_artifact(ckpt, precision="fp16", out_dir=tmp_path / "out", quiet=True)
    assert not reuse.exported


def test_bad_model_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        build_artifact(tmp_path / "missing.onnx", precision="fp32", quiet=True)
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(InputError, match="expected an .onnx model or a .pt checkpoint"):
        build_artifact(tmp_path / "weights.h5", precision="fp32", quiet=True)


def test_cli_build(world: dict[str, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import cli

    runner = CliRunner()
    args = ["build", str(world["plain"]), "--precision", "fp32", "--calib", str(world["calib"]), "--out",
            str(tmp_path), "--batch", "1:4:8"]
    res = runner.invoke(cli, ["-q", *args])
    assert res.exit_code == 0, res.output
    assert "onnxruntime" in res.output and "TensorRT unavailable" in res.output
    assert "top-1 agreement" in res.output and "100.00%" in res.output
    res = runner.invoke(cli, ["-q", *args, "--force", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["backend"] == "onnxruntime" and data["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert data["verification"]["top1_agreement"] == 1.0
    res = runner.invoke(cli, ["-q", "build", str(world["plain"]), "--precision", "int8", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "Error:" in res.output and "--calib DIR" in res.output
    res = runner.invoke(cli, ["-q", *args, "--force", "--batch", "4:2:8"])
    assert res.exit_code == 1 and "min <= opt <= max" in res.output


def test_cli_build_hands_its_tensorrt_flags_over_as_one_options_object(world: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """`edgeres build`'s TensorRT flags arrive in the backend as TensorRTOptions: ONNX Runtime names each one it
    ignores, and builds anyway."""
    from click.testing import CliRunner

    from cli import cli

    args = ["build", str(world["plain"]), "--precision", "fp32", "--backend", "onnxruntime", "--out", str(tmp_path),
            "--verify-images", "0"]
    res = CliRunner().invoke(cli, [*args, "--workspace", "512", "--dla-core", "0", "--no-tf32",
                                   "--int8-mode", "implicit", "--high-precision", "fp32"])
    assert res.exit_code == 0, res.output
    assert ("ONNX Runtime ignores the TensorRT option(s) --workspace, --dla-core, --no-tf32, --int8-mode implicit"
            in res.output)
    assert (tmp_path / "plain.fp32.onnx").is_file()


@pytest.mark.parametrize("kwargs,message", [
    ({"calib_method": "kl"}, "unknown calibration method 'kl'; choose one of: "),
    ({"max_drop": -0.5}, "--max-drop must be 0 or more percentage points, got -0.5"),
    ({"max_drop": float("nan")}, "--max-drop must be 0 or more percentage points, got nan"),  # would fit any drop
    ({"calib_images": 0}, "--calib-images must be at least 1, got 0"),
])
def test_int8_options_refuse_bad_values_where_they_are_made(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError) as err:
        Int8Options(**kwargs)
    assert str(err.value).startswith(message)


def test_int8_options_normalise_and_refuse_float_options_below_int8(tmp_path: Path) -> None:
    from calibration import Method

    options = Int8Options(calib_method=Method.MINMAX, eval_data=str(tmp_path), exclude_layers=["/a/Conv"])
    assert options.calib_method == "minmax" and options.eval_data == tmp_path
    assert options.exclude_layers == ("/a/Conv",)
    assert Int8Options.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    Int8Options(calib_method="mse", calib_images=8).check_applies(Precision.FP16)  # calibration-only: ignored
    for floats in ({"max_drop": 0.0}, {"exclude_layers": ("/a/Conv",)}, {"equalize": True}):
        with pytest.raises(InputError, match="apply to --precision int8 only"):
            Int8Options(**floats).check_applies(Precision.FP32)
    Int8Options(max_drop=0.0, equalize=True).check_applies(Precision.INT8)


def test_the_int8_section_records_the_int8_options_and_gives_them_back(world: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    options = Int8Options(calib_method="minmax", calib_images=8, equalize=True)
    result = build_artifact(world["plain"], precision="int8", calib_dir=world["calib"], int8=options,
                            out_dir=tmp_path, verify_images=0, quiet=True)
    int8 = json.loads(sidecar_path(result.artifact).read_text())["int8"]
    assert int8["options"] == options.to_dict() and int8["num_images"] == 8 and int8["equalized"] is True
    assert Int8Options.from_dict(int8["options"]) == options
    assert result.ranges == tmp_path / "plain.minmax.eq.ranges.json"
