"""Tests of edgeres.training on real digits scans: learning, bit-for-bit resume, the checkpoint's card, atomic writes."""
from __future__ import annotations

import math
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeres
from edgeres import training as train_mod
from edgeres.card import ModelCard, card_from_file
from edgeres.data import list_images, load_batch
from edgeres.digits import digits_preprocess
from edgeres.errors import EdgeresError, InputError, ModelError
from edgeres.training import TrainConfig, load_checkpoint, resolve_dataset, train
from helpers.data import copy_digits_slice
from helpers.training import TINY_TRAIN_CONFIG

pytestmark = pytest.mark.usefixtures("keep_torch_threads")

# a very short run for the resume and failure tests
QUICK = TrainConfig(arch="resnet20", epochs=2, batch_size=8, lr=0.05, seed=3, threads=1)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C right after a checkpoint was written."""


# --- learning ---------------------------------------------------------------------------------------------------

def test_short_training_on_a_digits_slice_learns(tiny_checkpoint: Path, digits_slice: Path) -> None:
    history = _load(tiny_checkpoint)["history"]
    assert [h["epoch"] for h in history] == list(range(1, TINY_TRAIN_CONFIG["epochs"] + 1))
    losses = [h["loss"] for h in history]
    assert losses[-1] < losses[0]
    assert losses[-1] < math.log(10)  # below the cross-entropy of a uniform guess over 10 classes
    # 100 val images, chance is 10% (binomial sd 3 points): 30% is far above it
    assert max(h["val_top1"] for h in history) >= 0.30

    # The reported accuracy, recomputed independently from the saved weights and the val image files.
    model, card = load_checkpoint(tiny_checkpoint)
    paths = list_images(digits_slice / "val")
    labels = np.array([card.class_names.index(p.parent.name) for p in paths])
    with torch.no_grad():
        preds = model(torch.from_numpy(load_batch(paths, card.preprocess))).argmax(1).numpy()
    assert len(paths) == 100
    assert float((preds == labels).mean()) == pytest.approx(history[-1]["val_top1"])


# --- the checkpoint ---------------------------------------------------------------------------------------------

def test_checkpoint_carries_the_model_card(tiny_checkpoint: Path, digits_slice: Path) -> None:
    state = _load(tiny_checkpoint)
    assert state["format"] == "edgeres-checkpoint-1"
    card = ModelCard.from_dict(state["card"])
    assert card.arch == "resnet20"
    assert card.class_names == [str(d) for d in range(10)]
    assert card.preprocess == digits_preprocess()
    assert card.preprocess.input_shape == (1, 32, 32)
    history = state["history"]
    assert card.metrics == {"val_top1": history[-1]["val_top1"],
                            "best_val_top1": max(h["val_top1"] for h in history), "epochs": len(history)}
    assert card.seed == TINY_TRAIN_CONFIG["seed"]
    assert card.versions == {"edgeres": edgeres.__version__, "torch": torch.__version__,
                             "python": platform.python_version()}
    assert card.dataset["name"] == "digits"
    # on disk relative to the checkpoint (no absolute path of the training machine), absolute once loaded
    assert not Path(card.dataset["root"]).is_absolute()
    assert (tiny_checkpoint.parent / card.dataset["root"]).resolve() == digits_slice.resolve()
    assert (card.dataset["train_images"], card.dataset["val_images"]) == (200, 100)
    # relative to the dataset root, for calibrating the exported model on any machine the data is copied to
    calibration = [digits_slice / p for p in card.dataset["calibration"]]
    assert not any(Path(p).is_absolute() for p in card.dataset["calibration"])
    assert len(calibration) == 20 and all(p.is_file() and p.parent.parent.name == "train" for p in calibration)
    assert state["epoch"] == len(history) and state["config"]["epochs"] == len(history)
    model, loaded = load_checkpoint(tiny_checkpoint)
    assert loaded == card_from_file(card, tiny_checkpoint.parent) and not model.training
    assert _hidden(tiny_checkpoint.parent) == []  # no temporary files left beside it


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bare.pt")
    with pytest.raises(ModelError, match="not an edgeres checkpoint.*--arch"):
        load_checkpoint(tmp_path / "bare.pt")


# --- resume -----------------------------------------------------------------------------------------------------

def test_resume_continues_bit_for_bit(small_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = train(small_slice, out=tmp_path / "whole.pt", config=QUICK, quiet=True)

    real_save = train_mod._save_checkpoint

    def save_then_crash(out: Path, **kw) -> None:
        real_save(out, **kw)
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(train_mod, "_save_checkpoint", save_then_crash)
        with pytest.raises(Interrupted):
            train(small_slice, out=tmp_path / "split.pt", config=QUICK, quiet=True)
    after_one = _load(tmp_path / "split.pt")
    assert after_one["epoch"] == 1 and len(after_one["history"]) == 1

    resumed = train(small_slice, out=tmp_path / "split.pt", resume=True, quiet=True)
    assert resumed.epochs_run == 1
    a, b = _load(tmp_path / "whole.pt"), _load(tmp_path / "split.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # the second epoch really changed the weights, so equality above is not trivial
    assert not torch.equal(after_one["model"]["conv1.weight"], b["model"]["conv1.weight"])
    buffers_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    buffers_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert len(buffers_a) == len(buffers_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(buffers_a, buffers_b))
    assert a["history"] == b["history"] == whole.history
    assert resumed.history == whole.history
    assert a["card"]["metrics"] == b["card"]["metrics"]
    assert resumed.best_val_top1 == whole.best_val_top1 == max(h["val_top1"] for h in whole.history)


def test_splits_too_big_for_memory_stream_from_disk_with_identical_results(
        small_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cached = train(small_slice, out=tmp_path / "cached.pt", config=QUICK, quiet=True)
    monkeypatch.setattr(train_mod, "IN_MEMORY_LIMIT_BYTES", 0)
    loaded: list[int] = []
    real_load_batch = train_mod.load_batch

    def counting_load_batch(paths, pre):
        loaded.append(len(paths))
        return real_load_batch(paths, pre)

    monkeypatch.setattr(train_mod, "load_batch", counting_load_batch)
    with caplog.at_level("INFO", logger="edgeres.training"):
        streamed = train(small_slice, out=tmp_path / "streamed.pt", config=QUICK, quiet=True)
    assert "decoding them batch by batch" in caplog.text
    # every batch was decoded on demand (50 train images in batches of 8, 30 val images in one, per epoch)
    assert loaded == ([8] * 6 + [2] + [30]) * QUICK.epochs
    assert streamed.history == cached.history
    a, b = _load(tmp_path / "cached.pt"), _load(tmp_path / "streamed.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_resume_a_finished_run_refuses_and_a_longer_run_extends(small_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    train(small_slice, out=out, config=QUICK, quiet=True)
    before = out.read_bytes()
    with pytest.raises(InputError, match="already finished 2 epochs; raise --epochs"):
        train(small_slice, out=out, resume=True, quiet=True)
    assert out.read_bytes() == before
    first_two = _load(out)["history"]

    longer = train(small_slice, out=out, config=TrainConfig(epochs=3), resume=True, quiet=True)
    assert longer.epochs_run == 1
    state = _load(out)
    assert state["epoch"] == 3 and state["history"][:2] == first_two
    assert state["config"]["lr"] == QUICK.lr and state["config"]["seed"] == QUICK.seed  # the saved recipe wins


def test_resume_errors(small_slice: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no checkpoint at"):
        train(small_slice, out=tmp_path / "none.pt", resume=True, quiet=True)
    out = tmp_path / "m.pt"
    train(small_slice, out=out, config=TrainConfig(**{**QUICK.__dict__, "epochs": 1}), quiet=True)
    nine = tmp_path / "nine" / "digits"
    shutil.copytree(small_slice, nine)
    for split in ("train", "val"):
        shutil.rmtree(nine / split / "9")
    before = out.read_bytes()
    with pytest.raises(ModelError, match="other classes; use a new --out"):
        train(nine, out=out, config=TrainConfig(epochs=2), resume=True, quiet=True)
    assert out.read_bytes() == before


# --- failures keep an existing checkpoint -----------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["unknown arch", "missing data", "crash in the first epoch"])
def test_a_failed_run_keeps_the_existing_checkpoint(failure: str, tiny_checkpoint: Path, small_slice: Path,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.pt"
    shutil.copy2(tiny_checkpoint, out)
    before = out.read_bytes()
    data, config, expected = small_slice, QUICK, EdgeresError
    if failure == "unknown arch":
        config, expected = TrainConfig(**{**QUICK.__dict__, "arch": "resnet21"}), EdgeresError
    elif failure == "missing data":
        data, expected = tmp_path / "no-such-folder", InputError
    else:
        def broken_eval(*args, **kw):
            raise RuntimeError("out of memory")

        monkeypatch.setattr(train_mod, "evaluate", broken_eval)
        expected = RuntimeError
    with pytest.raises(expected) as info:
        train(data, out=out, config=config, quiet=True)
    if failure == "unknown arch":
        assert "unknown architecture 'resnet21'" in str(info.value) and "resnet20" in str(info.value)
    if failure == "missing data":
        assert str(data) in str(info.value) and "'digits'" in str(info.value)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temp file left


# --- datasets ---------------------------------------------------------------------------------------------------

def test_builtin_digits_name_writes_the_cache_once(digits_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./digits folder shadows the built-in name
    monkeypatch.setattr(train_mod, "_CACHE_DIR", tmp_path / "cache")
    calls = []

    def fake_write(out: Path, *, seed: int, force: bool) -> None:  # a copy instead of sklearn's 1,797 PNGs
        calls.append((out, seed))
        shutil.copytree(digits_dir, out)

    monkeypatch.setattr(train_mod, "write_digits", fake_write)
    dataset, name = resolve_dataset("digits", seed=5)
    # the cache holds the fixed seed-0 split, whatever the training seed of the run that wrote it
    assert name == "digits" and calls == [(tmp_path / "cache" / "digits", 0)]
    assert len(dataset.train.samples) + len(dataset.val.samples) == 1797
    assert dataset.calibration  # the calibration list travels with the built-in set
    resolve_dataset("digits")
    assert len(calls) == 1  # cached

    local = copy_digits_slice(digits_dir, tmp_path / "digits", train_per_class=2, val_per_class=1)
    dataset, name = resolve_dataset("digits")  # an existing folder of that name wins
    assert Path(dataset.root) == Path("digits") and local.is_dir()
    assert len(dataset.train.samples) == 20 and len(calls) == 1
