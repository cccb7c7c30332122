"""Tests of edgeres.exporting: a tiny trained ResNet-20 exported to ONNX, checked independently with ONNX Runtime."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeres import exporting as export_mod
from edgeres import models
from edgeres.card import ModelCard, Preprocess, read_onnx_card
from edgeres.data import list_images, load_batch
from edgeres.errors import InputError, ModelError, ParityError
from edgeres.exporting import export_onnx, parity_inputs
from edgeres.training import load_checkpoint


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread: on 2 busy cores, two are several times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- the default export -----------------------------------------------------------------------------------------

def test_export_reports_parity_on_real_images(tiny_export) -> None:
    assert tiny_export.opset == 17
    assert tiny_export.parity_source == "dataset"
    assert tiny_export.batch_sizes == (1, export_mod.ODD_BATCH)
    assert tiny_export.batch_sizes[1] % 2 == 1
    assert tiny_export.parity_images == 2 * 2 * export_mod.ODD_BATCH  # 10 images at batch 1, 10 at batch 5
    assert 0.0 <= tiny_export.max_abs_diff <= 1e-4
    assert tiny_export.top1_agreement == 1.0


def test_onnx_file_passes_the_checker_and_carries_the_card(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    proto = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    card = read_onnx_card(str(tiny_onnx))
    assert card == load_checkpoint(tiny_checkpoint)[1]  # dataset paths resolved from where each file lies
    assert card.arch == "resnet20" and card.num_classes == 10
    assert [i.name for i in proto.graph.input] == [card.input_name]
    assert [o.name for o in proto.graph.output] == [card.output_name]
    assert _dims(proto.graph.input[0]) == ["batch", 1, 32, 32]  # dynamic batch axis
    assert _dims(proto.graph.output[0]) == ["batch", 10]
    assert not any(n.op_type in ("Dropout", "BatchNormalization") for n in proto.graph.node)  # eval mode, folded
    assert _files(tiny_onnx.parent) == ["model.onnx", "model.pt"]  # no temporary file left


def test_onnx_matches_pytorch_on_val_images_at_other_batch_sizes(tiny_onnx: Path, tiny_checkpoint: Path,
                                                                  digits_slice: Path) -> None:
    """Independent of the exporter's own check: other batch sizes, val images of every class."""
    model, card = load_checkpoint(tiny_checkpoint)
    images = load_batch(list_images(digits_slice / "val")[::4], card.preprocess)
    session = _session(tiny_onnx)
    worst = 0.0
    for bs in (3, 7, 25):
        for start in range(0, len(images) - bs + 1, bs):
            x = images[start:start + bs]
            got = session.run(None, {card.input_name: x})[0]
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            assert got.shape == (bs, 10)
            np.testing.assert_array_equal(got.argmax(1), ref.argmax(1))
            worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= 1e-4


# --- options ----------------------------------------------------------------------------------------------------

def test_fixed_batch_replaces_an_existing_file_with_force(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "b3.onnx"
    out.write_bytes(b"an older export")
    result = export_onnx(tiny_checkpoint, out=out, batch=3, force=True, quiet=True)
    assert result.batch_sizes == (3,)
    assert result.parity_images == 6 and result.top1_agreement == 1.0 and result.max_abs_diff <= 1e-4
    proto = onnx.load(str(out))
    assert _dims(proto.graph.input[0]) == [3, 1, 32, 32]
    assert _dims(proto.graph.output[0]) == [3, 10]
    session = _session(out)
    assert session.run(None, {"input": np.zeros((3, 1, 32, 32), np.float32)})[0].shape == (3, 10)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"input": np.zeros((2, 1, 32, 32), np.float32)})
    assert _files(tmp_path) == ["b3.onnx"]


def test_fixed_batch_larger_than_the_val_split(tiny_checkpoint: Path, digits_slice: Path, tmp_path: Path) -> None:
    """100 val images, batch 101: the images are repeated to fill one batch (this divided by zero before)."""
    assert len(list_images(digits_slice / "val")) == 100
    result = export_onnx(tiny_checkpoint, out=tmp_path / "b101.onnx", batch=101, quiet=True)
    assert result.batch_sizes == (101,) and result.parity_images == 101
    assert result.top1_agreement == 1.0 and result.max_abs_diff <= 1e-4


@pytest.mark.parametrize("kwargs, match", [
    (dict(opset=16), "--opset must be at least 17, got 16"),
    (dict(batch=0), "--batch must be 'dynamic' or a positive integer, got 0"),
    (dict(batch="many"), "--batch must be 'dynamic' or a positive integer, got 'many'"),
])
def test_bad_options_are_refused_before_writing(kwargs: dict, match: str, tiny_checkpoint: Path,
                                                tmp_path: Path) -> None:
    with pytest.raises(InputError, match=match):
        export_onnx(tiny_checkpoint, out=tmp_path / "m.onnx", quiet=True, **kwargs)
    assert _files(tmp_path) == []


def test_existing_file_is_refused_without_force_and_kept(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists; pass --force"):
        export_onnx(tiny_checkpoint, out=out, quiet=True)
    assert out.read_bytes() == b"precious"
    assert _files(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize("existing", [False, True])
def test_parity_failure_leaves_no_file_behind(existing: bool, tiny_checkpoint: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_mod, "PARITY_MAX_ABS", -1.0)  # no export can meet this
    out = tmp_path / "m.onnx"
    if existing:
        out.write_bytes(b"the last good export")
    with pytest.raises(ParityError, match=r"does not match PyTorch: max \|dlogit\| .*was not written"):
        export_onnx(tiny_checkpoint, out=out, force=True, quiet=True)
    if existing:
        assert out.read_bytes() == b"the last good export"
        assert _files(tmp_path) == ["m.onnx"]
    else:
        assert _files(tmp_path) == []


def test_a_perturbed_onnx_graph_fails_parity(tiny_checkpoint: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A real numeric mismatch, not a lowered limit: the exported fc bias is shifted by 1e-3 before the check."""
    real_export = export_mod._torch_export

    def export_then_perturb(model, example, path, **kw) -> None:
        real_export(model, example, path, **kw)
        proto = onnx.load(str(path))
        for init in proto.graph.initializer:
            if init.name == "fc.bias":
                bias = onnx.numpy_helper.to_array(init) + np.float32(1e-3)
                init.CopyFrom(onnx.numpy_helper.from_array(bias, init.name))
                break
        else:
            pytest.fail("no fc.bias initializer to perturb")
        onnx.save(proto, str(path))

    monkeypatch.setattr(export_mod, "_torch_export", export_then_perturb)
    with pytest.raises(ParityError, match=r"max \|dlogit\| 0\.001"):
        export_onnx(tiny_checkpoint, out=tmp_path / "m.onnx", quiet=True)
    assert _files(tmp_path) == []


# --- bare state dicts (torchvision-style weights) ---------------------------------------------------------------

def test_bare_state_dict_export_with_arch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "resnet20_cifar.pth"
    torch.save(models.create("resnet20", num_classes=7).state_dict(), weights)
    result = export_onnx(weights, out=tmp_path / "r20.onnx", arch="resnet20", quiet=True)
    assert result.parity_source == "random"  # no dataset known for bare weights
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0
    card = read_onnx_card(str(result.path))
    assert card.arch == "resnet20" and card.class_names == [str(i) for i in range(7)]
    assert card.preprocess == Preprocess.small(size=32)
    assert _dims(onnx.load(str(result.path)).graph.input[0]) == ["batch", 3, 32, 32]


def test_bare_state_dict_errors(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    torch.save(models.create("resnet20", num_classes=10).state_dict(), weights)
    with pytest.raises(ModelError, match="does not fit resnet32.*check --arch"):
        export_onnx(weights, out=tmp_path / "m.onnx", arch="resnet32", quiet=True)
    with pytest.raises(InputError, match="unknown architecture 'resnet21'"):
        export_onnx(weights, out=tmp_path / "m.onnx", arch="resnet21", quiet=True)
    with pytest.raises(ModelError, match="not an edgeres checkpoint"):
        export_onnx(weights, out=tmp_path / "m.onnx", quiet=True)  # bare weights need --arch
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(ModelError, match="not a readable state dict"):
        export_onnx(tmp_path / "junk.pth", out=tmp_path / "m.onnx", arch="resnet20", quiet=True)
    assert _files(tmp_path) == ["junk.pth", "w.pth"]


def test_arch_given_for_an_edgeres_checkpoint_uses_its_card(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # training checkpoints hold only plain types, so torch's safe loader reads them
    assert "model" in torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    model, card = export_mod.load_for_export(tiny_checkpoint, arch="resnet20")
    assert card == load_checkpoint(tiny_checkpoint)[1]
    assert card.in_channels == 1
    with pytest.raises(ModelError, match="edgeres checkpoint of resnet20, not resnet32; drop --arch"):
        export_mod.load_for_export(tiny_checkpoint, arch="resnet32")


@pytest.mark.slow
def test_torchvision_style_resnet18_weights_export(tmp_path: Path) -> None:
    """A ResNet-18 state dict with torchvision's keys (1000 classes, 224x224), as `--weights`/`--arch` users bring."""
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(models.create("resnet18").state_dict(), weights)
    result = export_onnx(weights, out=tmp_path / "r18.onnx", arch="resnet18", quiet=True)
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0
    assert result.batch_sizes == (1, export_mod.ODD_BATCH)
    card = read_onnx_card(str(result.path))
    assert card.num_classes == 1000 and card.preprocess == Preprocess.imagenet()
    proto = onnx.load(str(result.path))
    assert _dims(proto.graph.input[0]) == ["batch", 3, 224, 224]
    onnx.checker.check_model(proto, full_check=True)


# --- parity inputs ----------------------------------------------------------------------------------------------

def test_parity_inputs_come_from_the_val_split_when_known(tiny_checkpoint: Path, digits_slice: Path,
                                                          tmp_path: Path) -> None:
    _, card = load_checkpoint(tiny_checkpoint)
    images, source = parity_inputs(card, 10)
    assert source == "dataset" and images.shape == (10, 1, 32, 32)
    val_paths = list_images(digits_slice / "val")
    expected = load_batch(val_paths[::len(val_paths) // 10][:10], card.preprocess)  # spread over every class
    np.testing.assert_array_equal(images, expected)

    card.dataset = {"root": str(tmp_path / "moved-away")}
    noise_a, source = parity_inputs(card, 4, seed=1)
    noise_b, _ = parity_inputs(card, 4, seed=1)
    assert source == "random" and noise_a.shape == (4, 1, 32, 32) and noise_a.dtype == np.float32
    np.testing.assert_array_equal(noise_a, noise_b)


def test_parity_inputs_use_the_dataset_root_without_val(tiny_checkpoint: Path, digits_slice: Path,
                                                        tmp_path: Path) -> None:
    _, card = load_checkpoint(tiny_checkpoint)
    flat = tmp_path / "flat"
    shutil.copytree(digits_slice / "train", flat)
    card.dataset = {"root": str(flat)}
    images, source = parity_inputs(card, 5)
    assert source == "dataset" and images.shape == (5, 1, 32, 32)
