"""Issue 16's principles, one class of failure per test: never deploy the wrong model, never write over the user's
files, clear messages. (Input validation: test_schema.py; I/O faults and signals: test_cli_faults.py.)"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeres.backends import sidecar_path
from edgeres.building import Int8Options, build_artifact
from edgeres.card import ModelCard, Preprocess
from edgeres.errors import BackendError, InputError, WriteError
from helpers.cli import assert_one_line_error, invoke
from helpers.models import TINY_CLASSES, export_tiny, make_tiny_onnx, tiny_resnet20

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def _card(classes: list[str] = TINY_CLASSES, **dataset: str) -> ModelCard:
    return ModelCard(arch="resnet20", class_names=list(classes), preprocess=Preprocess.small(size=32, channels=1),
                     dataset=dict(dataset))


def _images(folder: Path, per_class: int = 2, classes: list[str] = TINY_CLASSES) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 255, (32, 32), dtype=np.uint8)
            Image.fromarray(img, "L").save(folder / name / f"{i}.png")
    return folder


def _checkpoint(path: Path, *, seed: int, nan: bool = False) -> Path:
    model = tiny_resnet20(seed=seed)
    state = model.state_dict()
    if nan:
        state["conv1.weight"] = torch.full_like(state["conv1.weight"], float("nan"))
    torch.save({"format": "edgeres-checkpoint-1", "model": state, "card": _card().to_dict()}, path)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _images(tmp_path_factory.mktemp("rel-images") / "imgs")


# --- 1. never deploy the wrong model ----------------------------------------------------------------------------

def test_build_reuses_an_export_by_checkpoint_content_never_by_file_time(tmp_path: Path, images: Path) -> None:
    ckpt = _checkpoint(tmp_path / "model.pt", seed=1)
    first = build_artifact(ckpt, precision="fp32", calib_dir=images, verify_images=0, quiet=True)
    assert first.exported
    # a new checkpoint arrives with an old time stamp (cp -p, rsync, git checkout): the export is now older... by
    # content, though file time says the ONNX is newer
    _checkpoint(ckpt, seed=2)
    os.utime(ckpt, (1, 1))
    with pytest.raises(InputError, match="exported from another checkpoint .* --force"):
        build_artifact(ckpt, precision="fp16", calib_dir=images, verify_images=0, quiet=True)
    rebuilt = build_artifact(ckpt, precision="fp16", calib_dir=images, verify_images=0, force=True, quiet=True)
    assert rebuilt.exported
    # the same checkpoint, whatever its time stamp (here: newer than the ONNX): reused
    os.utime(ckpt, (2e9, 2e9))
    again = build_artifact(ckpt, precision="int8", calib_dir=images, int8=Int8Options(calib_images=8), verify_images=0,
                           quiet=True)
    assert not again.exported


def test_an_onnx_that_records_no_checkpoint_is_not_taken_for_it(tmp_path: Path, images: Path) -> None:
    ckpt = _checkpoint(tmp_path / "model.pt", seed=1)
    make_tiny_onnx(tmp_path / "model.onnx")  # same name, no record of where it came from
    os.utime(ckpt, (1, 1))
    with pytest.raises(InputError, match="does not record which checkpoint"):
        build_artifact(ckpt, precision="fp32", verify_images=0, quiet=True)


def test_check_refuses_a_reference_that_is_not_the_artifacts_source(tmp_path: Path, images: Path) -> None:
    good = make_tiny_onnx(tmp_path / "good.onnx", seed=0)
    other = make_tiny_onnx(tmp_path / "other.onnx", seed=5)
    art = build_artifact(good, precision="fp32", calib_dir=images, verify_images=0, quiet=True).artifact
    base = tmp_path / "base.json"
    res = invoke("check", art, "--baseline", base, "--data", images, "--reference", other, "--update-baseline",
                 "--no-latency")
    assert_one_line_error(res, "--reference", "is not the model", "built from", exit_code=2)
    assert not base.exists()
    # a quantize output names its FP32 model too
    qdq = tmp_path / "good.qdq.onnx"
    assert invoke("calibrate", good, "--data", images, "--images", "8", "--batch", "4").exit_code == 0
    assert invoke("quantize", good, "--ranges", tmp_path / "good.ranges.json", "--out", qdq).exit_code == 0
    res = invoke("check", qdq, "--baseline", base, "--data", images, "--reference", other, "--update-baseline",
                 "--no-latency")
    assert_one_line_error(res, "is not the model", exit_code=2)
    # the right reference passes
    for artifact in (art, qdq):
        res = invoke("check", artifact, "--baseline", base, "--data", images, "--reference", good,
                     "--update-baseline", "--no-latency")
        assert res.exit_code == 0, res.output


def test_training_that_diverges_stops_with_an_error_and_writes_no_checkpoint(digits_slice: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    res = invoke("train", digits_slice, "--out", out, "--epochs", "2", "--batch-size", "8", "--lr", "1e6",
                 "--threads", "1")
    assert_one_line_error(res, "training diverged", "--lr")
    assert not out.exists()


def test_export_and_build_refuse_non_finite_weights(tmp_path: Path, images: Path) -> None:
    ckpt = _checkpoint(tmp_path / "nan.pt", seed=1, nan=True)
    assert_one_line_error(invoke("export", ckpt, "--out", tmp_path / "nan.onnx"), "non-finite weights", "conv1.weight")
    assert not (tmp_path / "nan.onnx").exists()
    model = tiny_resnet20(seed=1)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("inf")
    onnx_path = export_tiny(model, tmp_path / "inf.onnx", _card())
    before = _files(tmp_path)
    res = invoke("build", onnx_path, "--precision", "fp32", "--calib", images)
    assert_one_line_error(res, "non-finite weights")
    assert _files(tmp_path) == before  # nothing written


def test_json_is_never_written_with_nan(tmp_path: Path) -> None:
    from edgeres.io import write_json_atomic

    with pytest.raises(WriteError, match=r"results\[1\]\.score is not a finite number"):
        write_json_atomic(tmp_path / "r.json", {"results": [{"score": 1.0}, {"score": math.nan}]})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WriteError):
        write_json_atomic(tmp_path / "r.json", [math.inf])


def test_infer_refuses_nan_scores_instead_of_writing_them(tmp_path: Path, images: Path) -> None:
    model = tiny_resnet20(seed=1)
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    onnx_path = export_tiny(model, tmp_path / "nan.onnx", _card())
    out = tmp_path / "r.json"
    res = invoke("infer", onnx_path, images, "--out", out, "--json")
    assert_one_line_error(res, "NaN or infinite scores")
    assert not out.exists() and ": NaN" not in res.output


def test_a_card_whose_class_count_differs_from_the_outputs_is_refused(tmp_path: Path, images: Path) -> None:
    onnx_path = export_tiny(tiny_resnet20(seed=1), tmp_path / "m.onnx", _card(TINY_CLASSES[:3]))
    assert_one_line_error(invoke("build", onnx_path, "--precision", "fp32", "--calib", images, "--out", tmp_path / "o"),
                   "not class scores", "3 classes")
    assert not (tmp_path / "o").exists()
    assert_one_line_error(invoke("infer", onnx_path, images), "10 scores per image", "3 classes")


def test_a_sidecar_whose_class_names_were_edited_is_refused(tmp_path: Path, images: Path) -> None:
    art = build_artifact(make_tiny_onnx(tmp_path / "m.onnx"), precision="fp32", calib_dir=images, verify_images=0,
                         quiet=True).artifact
    side = sidecar_path(art)
    data = json.loads(side.read_text())
    data["card"]["class_names"] = list(reversed(data["card"]["class_names"]))
    side.write_text(json.dumps(data))
    assert_one_line_error(invoke("infer", art, images), "model card", "was edited")
    with pytest.raises(BackendError, match="was edited"):
        from edgeres import backends

        backends.open(art)


# --- 3. never write over the user's files ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, images: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rel-built")
    model = make_tiny_onnx(root / "m.onnx")
    art = build_artifact(model, precision="fp32", calib_dir=images, verify_images=0, quiet=True).artifact
    assert invoke("calibrate", model, "--data", images, "--images", "8", "--batch", "4").exit_code == 0
    ckpt = _checkpoint(root / "c.pt", seed=1)
    base = root / "base.json"
    assert invoke("check", art, "--baseline", base, "--data", images, "--update-baseline", "--no-latency"
                  ).exit_code == 0
    return {"root": root, "model": model, "art": art, "ranges": root / "m.ranges.json", "ckpt": ckpt,
            "base": base}


@pytest.mark.parametrize("args, victim", [
    (["calibrate", "{model}", "--data", "{images}", "--out", "{model}", "--force"], "model"),
    (["calibrate", "{model}", "--data", "{images}", "--out", "{ranges}", "--trt-cache", "{ranges}", "--force"],
     "ranges"),
    (["quantize", "{model}", "--ranges", "{ranges}", "--out", "{ranges}", "--force"], "ranges"),
    (["quantize", "{model}", "--ranges", "{ranges}", "--out", "{model}", "--force"], "model"),
    (["export", "{ckpt}", "--out", "{ckpt}", "--force"], "ckpt"),
    (["infer", "{art}", "{images}", "--out", "{art}.json"], "art"),
    (["bench", "{art}", "--iterations", "1", "--out", "{art}.json"], "art"),
    (["bench", "{art}", "--iterations", "1", "--report", "{art}"], "art"),
    (["check", "{art}", "--baseline", "{base}", "--no-latency", "--junit", "{base}"], "base"),
    (["check", "{art}", "--baseline", "{art}", "--data", "{images}", "--update-baseline"], "art"),
])
def test_no_command_writes_over_its_own_inputs(args: list[str], victim: str, built: dict[str, Path],
                                               images: Path) -> None:
    names = {**built, "images": images}
    watched = {p: p.read_bytes() for p in built["root"].iterdir() if p.is_file()}
    res = invoke(*[a.format(**names) for a in args])
    assert res.exit_code in (1, 2), res.output
    assert_one_line_error(res, exit_code=res.exit_code)
    assert "input of this command" in res.output or "are the same file" in res.output, res.output
    assert {p: p.read_bytes() for p in watched} == watched  # no user file changed, the victim included
    assert not [p for p in built["root"].iterdir() if p.name.endswith(".tmp")]


def test_a_stale_method_ranges_file_is_not_replaced_without_force(built: dict[str, Path], images: Path,
                                                                   tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(built["model"], model)
    stale = tmp_path / "m.minmax.ranges.json"
    shutil.copy(built["ranges"], stale)
    data = json.loads(stale.read_text())
    data["method"], data["num_images"] = "minmax", 3  # another image count: it does not fit this build
    stale.write_text(json.dumps(data))
    before = stale.read_bytes()
    with pytest.raises(InputError, match="m.minmax.ranges.json exists but does not fit this build .* --force"):
        build_artifact(model, precision="int8", calib_dir=images,
                       int8=Int8Options(calib_method="minmax", calib_images=8), verify_images=0, quiet=True)
    assert stale.read_bytes() == before
    assert not (tmp_path / "m.int8.onnx").exists()
    result = build_artifact(model, precision="int8", calib_dir=images,
                            int8=Int8Options(calib_method="minmax", calib_images=8), verify_images=0, force=True,
                            quiet=True)
    assert result.ranges == stale and json.loads(stale.read_text())["num_images"] == 8


def test_a_second_build_into_the_same_out_is_refused_while_the_first_runs(built: dict[str, Path], images: Path,
                                                                          tmp_path: Path) -> None:
    from edgeres.io import exclusive_lock

    target = tmp_path / "m.fp32.onnx"
    with exclusive_lock(target, what="artifact") as lock:  # as the first build holds it
        assert lock.exists()
        with pytest.raises(InputError, match="another edgeres command is writing artifact .* right now"):
            build_artifact(built["model"], precision="fp32", out_dir=tmp_path, verify_images=0, quiet=True)
        assert not target.exists()
    assert not lock.exists()  # removed on exit
    build_artifact(built["model"], precision="fp32", out_dir=tmp_path, verify_images=0, quiet=True)
    assert target.is_file() and not lock.exists()


def test_force_rebuilds_edgeres_artifacts_but_never_a_users_file(built: dict[str, Path], images: Path,
                                                                 tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(built["model"], model)
    art = build_artifact(model, precision="fp32", verify_images=0, quiet=True).artifact
    sidecar_path(art).unlink()  # e.g. lost by an interrupted copy: the marker inside still says edgeres built it
    with pytest.raises(InputError, match="already exists; pass --force"):
        build_artifact(model, precision="fp32", verify_images=0, quiet=True)
    build_artifact(model, precision="fp32", verify_images=0, force=True, quiet=True)
    assert sidecar_path(art).is_file()
    # a quantize output in the artifact's place carries the card but is the user's: never replaced
    mine = tmp_path / "m.int8.onnx"
    assert invoke("quantize", model, "--ranges", built["ranges"], "--out", mine).exit_code == 0
    before = mine.read_bytes()
    with pytest.raises(InputError, match="not an edgeres artifact"):
        build_artifact(model, precision="int8", calib_dir=images, int8=Int8Options(calib_images=8), verify_images=0,
                       force=True, quiet=True)
    assert mine.read_bytes() == before


# --- 2. check before the work: models edgeres cannot serve, refused before anything is written ----------------

def _graph_model(path: Path, inputs: list[tuple[str, list]], outputs: list[tuple[str, list]], nodes: list) -> Path:
    import onnx
    from onnx import TensorProto, helper

    from edgeres.card import attach_card_to_onnx

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    attach_card_to_onnx(model, _card())
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("kind, needle", [
    ("two inputs", "2 inputs"),
    ("channels-last", "channels-last"),
    ("feature map output", "not class scores"),
    ("fixed batch 1", "fixed batch of 1"),
    ("truncated", "is not a readable ONNX model"),
])
def test_models_edgeres_cannot_serve_are_refused_before_anything_is_written(kind: str, needle: str, tmp_path: Path,
                                                                            images: Path) -> None:
    from onnx import helper

    src = tmp_path / "src"
    src.mkdir()
    path = src / "m.onnx"
    if kind == "two inputs":
        _graph_model(path, [("input", ["N", 1, 32, 32]), ("mask", ["N", 1, 32, 32])], [("logits", ["N", 10])],
                     [helper.make_node("Add", ["input", "mask"], ["s"]),
                      helper.make_node("Flatten", ["s"], ["f"]), helper.make_node("Slice", ["f"], ["logits"])])
    elif kind == "channels-last":
        _graph_model(path, [("input", ["N", 32, 32, 1])], [("logits", ["N", 10])],
                     [helper.make_node("Flatten", ["input"], ["logits"])])
    elif kind == "feature map output":
        _graph_model(path, [("input", ["N", 1, 32, 32])], [("logits", ["N", 1, 32, 32])],
                     [helper.make_node("Identity", ["input"], ["logits"])])
    elif kind == "fixed batch 1":  # `edgeres export --batch 1`, then `build` with the default 1:8:32
        export_tiny(tiny_resnet20(seed=1), path, _card(), batch=1)
    else:
        make_tiny_onnx(tmp_path / "whole.onnx")
        data = (tmp_path / "whole.onnx").read_bytes()
        path.write_bytes(data[:len(data) // 2])
    out = tmp_path / "out"
    res = invoke("build", path, "--precision", "fp32", "--calib", images, "--out", out)
    assert_one_line_error(res, needle)
    assert not out.exists() and [p.name for p in src.iterdir()] == ["m.onnx"]
    if kind == "fixed batch 1":  # what to do instead works
        res = invoke("build", path, "--precision", "fp32", "--calib", images, "--out", out, "--batch", "1")
        assert res.exit_code == 0, res.output
        assert json.loads(sidecar_path(out / "m.fp32.onnx").read_text())["profile"] == {"min": 1, "opt": 1, "max": 1}


# --- 5. messages and portability -------------------------------------------------------------------------------

def test_build_names_its_own_calib_option_for_an_empty_folder(built: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    err = assert_one_line_error(invoke("build", built["model"], "--precision", "int8", "--calib", tmp_path / "empty",
                                "--out", tmp_path / "o"), "holds no calibration images", "pass --calib")
    assert "--data" not in err


def test_resume_on_a_flat_folder_uses_the_val_split_it_asks_for(digits_slice: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "m.pt"
    args = ["--out", ckpt, "--batch-size", "16", "--threads", "1"]
    assert invoke("train", digits_slice, *args, "--epochs", "1").exit_code == 0  # train/ + val/: no split
    flat = tmp_path / "flat"
    shutil.copytree(digits_slice / "train", flat)
    res = invoke("train", flat, *args, "--epochs", "2", "--resume", "--val-split", "0.2")
    assert res.exit_code == 0, res.output
    assert "ignoring" not in res.output and "trained resnet20 for 1 epochs" in res.output


def test_an_oversized_image_names_the_option_that_admits_it(built: dict[str, Path], tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100), np.uint8), "L").save(big)
    res = invoke("--max-image-pixels", "5000", "infer", built["model"], big)
    err = assert_one_line_error(res, "decompression bomb", "--max-image-pixels")
    assert "PIL.Image" not in err
    assert invoke("--max-image-pixels", "20000", "infer", built["model"], big).exit_code == 0


def test_an_opset_torch_cannot_write_is_one_short_line(built: dict[str, Path], tmp_path: Path) -> None:
    res = invoke("export", built["ckpt"], "--out", tmp_path / "m.onnx", "--opset", "99")
    assert_one_line_error(res, "--opset must be at most")
    assert len(res.output.splitlines()) == 1 and not (tmp_path / "m.onnx").exists()


def test_shipped_files_carry_no_absolute_paths_and_still_find_their_data(digits_slice: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    data = tmp_path / "data"
    shutil.copytree(digits_slice, data)
    ckpt = runs / "m.pt"
    assert invoke("train", data, "--out", ckpt, "--epochs", "1", "--batch-size", "16", "--threads", "1"
                  ).exit_code == 0
    ship = tmp_path / "ship"
    assert invoke("export", ckpt, "--out", ship / "m.onnx").exit_code == 0
    res = invoke("build", ship / "m.onnx", "--precision", "int8", "--calib-images", "8", "--out", ship / "engines",
                 "--verify-images", "0")  # no --calib: the calibration list recorded in the card
    assert res.exit_code == 0, res.output
    root = str(tmp_path)
    for path in (ship / "m.onnx", ship / "engines" / "m.int8.onnx", ship / "engines" / "m.int8.onnx.json"):
        assert root.encode() not in path.read_bytes(), path  # no absolute path of the training machine
    card = json.loads(sidecar_path(ship / "engines" / "m.int8.onnx").read_text())["card"]
    assert card["dataset"]["root"] == "../../data" and all(
        not Path(p).is_absolute() and p.startswith("train/") for p in card["dataset"]["calibration"])
    # the whole tree moved elsewhere: the relative paths still find the data
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.copytree(tmp_path, moved)
    try:
        res = invoke("calibrate", moved / "ship" / "m.onnx", "--images", "8", "--batch", "4")
        assert res.exit_code == 0, res.output
    finally:
        shutil.rmtree(moved)


def test_the_calibration_set_hash_does_not_depend_on_how_the_path_is_spelled(built: dict[str, Path],
                                                                             images: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeres.calibrating import calibrate

    project = tmp_path / "digits"
    shutil.copytree(images, project / "data" / "train")
    monkeypatch.chdir(tmp_path)
    a = calibrate(built["model"], data="digits/data/train", method="minmax", images=8, batch_size=4, quiet=True)
    monkeypatch.chdir(project)
    b = calibrate(built["model"], data="data/train", method="minmax", images=8, batch_size=4, quiet=True)
    assert a.manifest_sha256 == b.manifest_sha256
    (project / "data" / "train" / "c0" / "0.png").write_bytes((images / "c1" / "1.png").read_bytes())
    c = calibrate(built["model"], data="data/train", method="minmax", images=8, batch_size=4, quiet=True)
    assert c.manifest_sha256 != b.manifest_sha256  # same names, other content: another set


def test_env_says_which_tensorrt_is_imported_and_from_where(tmp_path: Path) -> None:
    import subprocess
    import sys

    fake = tmp_path / "jetpack" / "dist-packages" / "tensorrt"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "10.3.0"\n')
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{fake.parent}"}
    res = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "env", "--json"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    trt = report["packages"]["tensorrt"]
    assert trt["location"] == str(fake) and trt["from"] == "system" and trt["version"] == "10.3.0"
    assert report["packages"]["onnxruntime"]["version"] and report["backend"]["auto"] == "onnxruntime"


def test_quantized_and_fp16_copies_written_elsewhere_still_find_the_dataset(images: Path, tmp_path: Path) -> None:
    from edgeres.calibrating import calibrate
    from edgeres.card import card_for_file, read_onnx_card
    from edgeres.quantization import quantize_qdq, to_fp16

    data = tmp_path / "data"
    shutil.copytree(images, data / "train")
    (tmp_path / "a").mkdir()
    card = card_for_file(_card(root=str(data.resolve())), tmp_path / "a")
    model = export_tiny(tiny_resnet20(seed=1), tmp_path / "a" / "m.onnx", card)
    assert read_onnx_card(model).dataset["root"] == str(data.resolve())
    ranges = calibrate(model, method="minmax", images=8, batch_size=4, quiet=True)  # from the card's data
    for out in (quantize_qdq(model, ranges, out=tmp_path / "b" / "deeper" / "q.onnx"),
                to_fp16(model, tmp_path / "c" / "h.onnx")):
        assert read_onnx_card(out).dataset["root"] == str(data.resolve()), out
        assert str(tmp_path).encode() not in out.read_bytes()
    from edgeres import backends

    with backends.open(model) as runner:  # a plain ONNX run as it is (bench, infer) resolves them too
        assert runner.card.dataset["root"] == str(data.resolve())
