"""Tests of edgeres.digits: the built-in digits set is the real scans, split and listed as documented,
reproducible, and its preprocessing statistics are those of its training images."""
from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeres import digits
from edgeres.card import Preprocess
from edgeres.data import load_batch, load_image, open_dataset
from edgeres.digits import write_digits
from edgeres.errors import EdgeresError, InputError


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(out, seed=0)
    return out


def test_write_digits_layout_split_and_calibration(digits_dir):
    ds = open_dataset(digits_dir)
    assert ds.classes == [str(d) for d in range(10)]
    assert len(ds.train) + len(ds.val) == 1797
    files = sorted(p.name for p in digits_dir.rglob("*.png"))
    assert len(files) == 1797 and len(set(files)) == 1797  # every scan exactly once
    from sklearn.datasets import load_digits
    per_class = np.bincount(load_digits().target)
    val_counts = np.bincount(ds.val.labels, minlength=10)
    np.testing.assert_array_equal(val_counts, np.rint(per_class * 0.2))
    assert 0.19 < len(ds.val) / 1797 < 0.21
    assert len(ds.calibration) == 200
    train_set = set(ds.train.paths)
    assert all(p in train_set for p in ds.calibration)
    assert np.bincount([int(p.parent.name) for p in ds.calibration]).tolist() == [20] * 10
    with Image.open(ds.train.paths[0]) as img:
        assert img.mode == "L" and img.size == (8, 8)


def test_digits_pixels_are_the_scans(digits_dir):
    from sklearn.datasets import load_digits
    images = load_digits().images
    some = sorted(digits_dir.glob("train/0/*.png"))[:2] + sorted(digits_dir.glob("val/7/*.png"))[:2]
    assert len(some) == 4
    for rel in [str(p.relative_to(digits_dir)) for p in some]:
        index = int(Path(rel).stem)
        with Image.open(digits_dir / rel) as img:
            got = np.asarray(img).astype(float)
        np.testing.assert_array_equal(got, np.rint(images[index] * 255 / 16))
    assert got.max() <= 255


def test_write_digits_is_reproducible_and_refuses_to_overwrite(digits_dir, tmp_path):
    again = tmp_path / "again"
    write_digits(again, seed=0)
    assert _tree_digest(again) == _tree_digest(digits_dir)
    with pytest.raises(InputError, match="not empty; pass --force"):
        write_digits(again, seed=1)
    assert _tree_digest(again) == _tree_digest(digits_dir)  # untouched
    ds = write_digits(again, seed=1, force=True)
    assert _tree_digest(again) != _tree_digest(digits_dir)
    assert len(ds.train) + len(ds.val) == 1797
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_digits_preprocess_stats_match_training_images(digits_dir):
    pre = digits.digits_preprocess()
    assert (pre.resize, pre.crop, pre.channels) == (32, 32, 1)
    raw = load_batch(open_dataset(digits_dir).train.paths, Preprocess.small(size=32, channels=1, mean=(0.0,),
                                                                                std=(1.0,)))
    assert pre.mean == (round(float(raw.mean(dtype=np.float64)), 4),)
    assert pre.std == (round(float(raw.std(dtype=np.float64)), 4),)
    x = load_image(open_dataset(digits_dir).train.paths[0], pre)
    assert x.shape == (1, 32, 32)


def test_write_digits_without_sklearn(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(EdgeresError, match=r"pip install 'edgeres\[demo\]'"):
        write_digits(tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_data_does_not_import_digits():
    # digits builds on data; the reverse import would be circular
    tree = ast.parse(Path(digits.__file__).with_name("data.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {name for name in imported if name and name.startswith("edgeres.digits")}
