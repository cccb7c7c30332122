"""Shared fixtures: the real digits set, slices of it, a tiny trained ResNet-20 and its ONNX, a virtual clock.

Everything lives under ``tmp_path_factory`` and is built once per session (or module); tests that modify files copy
them first. Only fixtures live here: plain helpers are in ``tests/helpers/``, where test files import them from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from helpers.clocks import VirtualClock
from helpers.data import SLICE_TRAIN_PER_CLASS, SLICE_VAL_PER_CLASS, copy_digits_slice
from helpers.training import TINY_TRAIN_CONFIG, torch_threads_kept


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


@pytest.fixture(scope="module")
def small_slice(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 train and 3 val images per class of the real digits set (50 + 30 scans), one copy per test module."""
    return copy_digits_slice(digits_dir, tmp_path_factory.mktemp("small-slice") / "digits", train_per_class=5,
                             val_per_class=3)


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


@pytest.fixture
def virtual_clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    """A :class:`~helpers.clocks.VirtualClock` swapped in for ``edgeres.benchmarking``'s clock: bench and check
    timings move only when a fake runner (``helpers.runners.SleepRunner``) advances it."""
    import edgeres.benchmarking

    clock = VirtualClock()
    monkeypatch.setattr(edgeres.benchmarking, "_clock", clock)
    return clock
