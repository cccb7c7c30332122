"""Slices of an image-folder dataset (the real digits set in the session fixtures)."""
from __future__ import annotations

import shutil
from pathlib import Path

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
