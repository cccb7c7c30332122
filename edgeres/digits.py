"""The built-in digits set: scikit-learn's 1,797 real 8x8 handwritten digit scans written as an image folder
(``train/``, ``val/``, ``calibration.txt``), and the preprocessing that goes with it.

It is the demo's and the tests' dataset: small, real and reproducible from a seed::

    dataset = write_digits("demo/digits", seed=0)
    pre = digits_preprocess()  # what a model trained on it puts in its card
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from edgeres.card import Preprocess
from edgeres.data import CALIBRATION_LIST, Dataset, open_dataset, stratum_split
from edgeres.errors import EdgeresError, InputError
from edgeres.io import check_writable_dir, dumps_json

log = logging.getLogger(__name__)

DIGITS_CLASSES = [str(d) for d in range(10)]
# Mean and std of the seed-0 training split after the 8x8 -> 32x32 bilinear resize, in [0, 1] pixel units
# (recomputed by tests/edgeres/test_digits.py).
DIGITS_MEAN = 0.3052
DIGITS_STD = 0.3231


def digits_preprocess() -> Preprocess:
    """Preprocessing for the digits set: grayscale, bilinear resize to 32x32, normalised by its training stats."""
    return Preprocess.small(size=32, channels=1, mean=(DIGITS_MEAN,), std=(DIGITS_STD,))


def write_digits(out_dir: str | os.PathLike[str], *, seed: int = 0, val_fraction: float = 0.2,
                 calibration_per_class: int = 20, force: bool = False) -> Dataset:
    """Write scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) as an image folder.

    Layout: ``OUT/{train,val}/<digit>/<index>.png`` (8-bit grayscale, 0..16 scaled to 0..255), a seeded
    stratified split, ``OUT/calibration.txt`` (a class-balanced subset of the training images) and
    ``OUT/digits.json`` (source, seed, counts). The folder is built beside ``OUT`` and renamed into place.

    Args:
        out_dir: the folder to create.
        seed: seed of the split and of the calibration subset.
        val_fraction: fraction of each class written to ``val/``.
        calibration_per_class: training images per class listed in ``calibration.txt``.
        force: replace an existing non-empty ``out_dir``.

    Raises:
        EdgeresError: when scikit-learn is not installed.
        InputError: when ``out_dir`` exists and is not empty (without ``force``), or an option is out of range.
    """
    out = Path(out_dir)
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if calibration_per_class < 1:
        raise InputError(f"calibration_per_class must be at least 1, got {calibration_per_class}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(f"{out} already exists and is not empty; pass --force to replace it")
    check_writable_dir(out.parent, what="folder for")  # the set is built beside OUT, then renamed into place
    images, targets = _load_sklearn_digits()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()  # not mkdtemp: its 0700 mode would carry over to OUT
    try:
        _write_digits_tree(tmp, images, targets, seed=seed, val_fraction=val_fraction,
                           calibration_per_class=calibration_per_class)
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote the digits set to %s", out)
    return open_dataset(out)


def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise EdgeresError("the digits set needs scikit-learn; install it with: pip install 'edgeres[demo]'") \
            from None
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def _write_digits_tree(tmp: Path, images: np.ndarray, targets: np.ndarray, *, seed: int, val_fraction: float,
                       calibration_per_class: int) -> None:
    calibration, counts = [], {"train": 0, "val": 0}
    for digit in range(10):
        indices = np.flatnonzero(targets == digit)  # dataset order
        val_picks = stratum_split(len(indices), fraction=val_fraction, seed=seed, name=str(digit))
        train_rel = []
        for i, index in enumerate(indices):
            split = "val" if i in val_picks else "train"
            rel = f"{split}/{digit}/{index:04d}.png"
            (tmp / split / str(digit)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index], mode="L").save(tmp / rel)
            counts[split] += 1
            if split == "train":
                train_rel.append(rel)
        rng = np.random.default_rng([seed, 1_000 + digit])
        chosen = rng.choice(len(train_rel), size=min(calibration_per_class, len(train_rel)), replace=False)
        calibration.extend(train_rel[i] for i in sorted(chosen.tolist()))
    (tmp / CALIBRATION_LIST).write_text("\n".join(calibration) + "\n", encoding="utf-8")
    meta = {"name": "digits", "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten "
            "digits, 8x8, 16 grey levels scaled to 0..255)", "classes": DIGITS_CLASSES, "seed": seed,
            "val_fraction": val_fraction, "images": int(len(images)), **counts, "calibration": len(calibration),
            "preprocess": digits_preprocess().to_dict()}
    (tmp / "digits.json").write_text(dumps_json(meta, what="digits.json") + "\n", encoding="utf-8")


def _replace_folder(new: Path, out: Path) -> None:
    """Rename ``new`` onto ``out``; an existing ``out`` is moved aside first and deleted only afterwards."""
    if not out.exists():
        os.replace(new, out)
        return
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
        os.replace(new, out)
        return
    trash = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old"
    os.replace(out, trash)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(trash, out)
        raise
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink()
