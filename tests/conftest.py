"""Shared session fixtures: the real digits set, a small slice of it, a tiny trained ResNet-20 and its ONNX.

Everything lives under ``tmp_path_factory`` and is built once per session; tests that modify files copy them first.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

import pytest

TINY_CLASSES = [f"c{i}" for i in range(10)]
SLICE_TRAIN_PER_CLASS = 20
SLICE_VAL_PER_CLASS = 10


def copy_digits_slice(src: Path, dst: Path, *, train_per_class: int, val_per_class: int,
                      calibration_per_class: int = 0) -> Path:
    """Copy the first images of every class of a ``{train,val}/<class>/`` folder into ``dst`` (same layout), and
    list the first ``calibration_per_class`` training images of each class in ``dst/calibration.txt``."""
    calibration = []
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for class_dir in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            target = dst / split / class_dir.name
            target.mkdir(parents=True)
            for i, image in enumerate(sorted(class_dir.glob("*.png"))[:count]):
                shutil.copy2(image, target / image.name)
                if split == "train" and i < calibration_per_class:
                    calibration.append(f"train/{class_dir.name}/{image.name}")
    if calibration:
        (dst / "calibration.txt").write_text("\n".join(calibration) + "\n", encoding="utf-8")
    return dst


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's thread count afterwards (``TrainConfig.threads`` sets it for the whole process)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def keep_torch_threads() -> Iterator[None]:
    """For tests that train with ``threads=...``: torch's thread count is restored after the test."""
    with torch_threads_kept():
        yield


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full built-in digits set (1,797 real scans) written by ``edgeres.data.write_digits``. Read-only."""
    from edgeres.digits import write_digits

    out = tmp_path_factory.mktemp("digits-full") / "digits"
    write_digits(out, seed=0)
    return out


@pytest.fixture(scope="session")
def digits_slice(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 train and 10 val images per class of the digits set (200 + 100 images), 2 per class listed in
    ``calibration.txt``. Read-only."""
    return copy_digits_slice(digits_dir, tmp_path_factory.mktemp("digits-slice") / "digits",
                             train_per_class=SLICE_TRAIN_PER_CLASS, val_per_class=SLICE_VAL_PER_CLASS,
                             calibration_per_class=2)


# Small batches and a few epochs: enough steps on 200 images to leave chance level far behind. One torch thread:
# on 2 busy cores, two threads are several times slower than one.
TINY_TRAIN_CONFIG = dict(arch="resnet20", epochs=4, batch_size=8, lr=0.05, seed=0, threads=1)


@pytest.fixture(scope="session")
def tiny_checkpoint(digits_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-20 trained briefly on :func:`digits_slice` (an edgeres checkpoint with its card). Read-only."""
    from edgeres.training import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-model") / "model.pt"
    with torch_threads_kept():
        train(digits_slice, out=out, config=TrainConfig(**TINY_TRAIN_CONFIG), quiet=True)
    return out


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint: Path):
    """The ``ExportResult`` of :func:`tiny_checkpoint` exported to ONNX (dynamic batch, opset 17, parity checked)."""
    from edgeres.exporting import export_onnx

    return export_onnx(tiny_checkpoint, out=tiny_checkpoint.with_suffix(".onnx"), quiet=True)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_export) -> Path:
    """The ONNX file of :func:`tiny_export`, with the model card in its metadata. Read-only."""
    return tiny_export.path


def tiny_resnet20(*, classes: int = 10, seed: int = 0, size: int = 32, shortcut: str = "A", warmup: int = 3):
    """An untrained ResNet-20 for 1-channel ``size`` x ``size`` images, BatchNorm statistics set by ``warmup``
    train-mode passes (left at 0/1 they saturate the logits), in eval mode."""
    import torch

    from edgeres.models import resnet20

    torch.manual_seed(seed)
    model = resnet20(num_classes=classes, in_channels=1, shortcut=shortcut)
    model.train()
    with torch.no_grad():
        for _ in range(warmup):
            model(torch.randn(16, 1, size, size))
    return model.eval()


def export_tiny(model, path: Path, card=None, *, size: int = 32, batch: int | None = None, **options) -> Path:
    """Export a 1-channel ``size`` x ``size`` model to ONNX (legacy exporter, opset 17), with ``card`` attached.

    The batch dimension is dynamic unless ``batch`` fixes it; ``options`` go to ``torch.onnx.export`` (e.g.
    ``training=torch.onnx.TrainingMode.PRESERVE`` to keep the BatchNorms).
    """
    import warnings

    import onnx
    import torch

    from edgeres.card import attach_card_to_onnx

    dynamic = None if batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter warns; dynamo needs onnxscript
        torch.onnx.export(model, torch.randn(batch or 1, 1, size, size), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes=dynamic, **options)
    if card is not None:
        proto = onnx.load(str(path))
        attach_card_to_onnx(proto, card)
        onnx.save(proto, str(path))
    return path


def make_tiny_onnx(path: Path, *, card: bool = True, seed: int = 0) -> Path:
    """:func:`tiny_resnet20` with classes ``c0``..``c9`` exported to ``path``, with its model card unless ``card``
    is False."""
    from edgeres.card import ModelCard, Preprocess

    model_card = ModelCard(arch="resnet20", class_names=TINY_CLASSES, preprocess=Preprocess.small(size=32, channels=1))
    return export_tiny(tiny_resnet20(seed=seed), path, model_card if card else None)
