"""edgeres.comparison: logits against logits, scores against labels, and real images or seeded noise."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeres.card import ModelCard, Preprocess
from edgeres.comparison import (compare_logits, count_matches, dataset_sample, real_or_noise, seeded_noise,
                                top_k_accuracy, top_k_hits)
from edgeres.data import list_images, load_batch
from edgeres.errors import DataError, InputError, ModelError

PRE = Preprocess.small(size=8)


# --- logits against logits ------------------------------------------------------------------------------------

def test_compare_logits_counts_what_was_built_in() -> None:
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [0.5, 0.25, 0.0]], np.float32)
    got = ref.copy()
    got[1, 2] += 1.5  # row 1: class 2 (3.0) now beats class 1 (2.0)
    got[3, 0] -= 0.125  # row 3: a small change that keeps class 0 first
    c = compare_logits(ref, got)
    assert (c.count, c.agree) == (4, 3)
    assert c.top1_agreement == 0.75
    assert c.max_abs_diff == 1.5
    assert c.mean_abs_diff == pytest.approx((1.5 + 0.125) / 12, abs=0)


def test_identical_logits_agree_fully_with_no_difference() -> None:
    ref = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    c = compare_logits(ref, ref.copy())
    assert c.agree == c.count == 7 and c.top1_agreement == 1.0 and c.max_abs_diff == 0.0 == c.mean_abs_diff


def test_differences_are_taken_in_float64() -> None:
    ref = np.array([[2.0 ** 25, 0.0]], np.float32)
    got = np.array([[1.0, 0.0]], np.float32)
    assert float(np.abs(ref - got).max()) == 2.0 ** 25  # float32 rounds 2**25 - 1 up
    assert compare_logits(ref, got).max_abs_diff == 2.0 ** 25 - 1
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((50, 10)).astype(np.float32), rng.standard_normal((50, 10)).astype(np.float32)
    exact = np.abs(a.astype(np.float64) - b.astype(np.float64))
    c = compare_logits(a, b)
    assert c.max_abs_diff == float(exact.max()) and c.mean_abs_diff == float(exact.mean())


def test_tied_logits_take_the_first_class() -> None:
    ref = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    assert compare_logits(ref, np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0]])).agree == 2
    # the candidate ties class 1 with class 2 in row 0 but the reference picked class 0: one disagreement
    assert compare_logits(ref, np.array([[0.0, 1.0, 1.0], [2.0, 2.0, 2.0]])).agree == 1


def test_nan_logits_make_the_difference_nan() -> None:
    ref = np.zeros((2, 3), np.float32)
    got = ref.copy()
    got[1, 1] = np.nan
    assert np.isnan(compare_logits(ref, got).max_abs_diff)  # export's parity check fails on it, never passes


def test_compare_logits_refuses_empty_and_mismatched_input() -> None:
    with pytest.raises(InputError, match="nothing to compare"):
        compare_logits(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(InputError, match="nothing to compare"):
        compare_logits(np.zeros((2, 0)), np.zeros((2, 0)))
    with pytest.raises(ModelError, match=r"shape \(2, 4\).*\(2, 3\)"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ModelError, match="must be \\(inputs, classes\\)"):
        compare_logits(np.zeros(3), np.zeros(3))


def test_count_matches_of_predicted_classes() -> None:
    assert count_matches(["cat", "dog", "cat"], ["cat", "cat", "cat"]) == 2
    assert count_matches(["cat", "dog"], ["cat", None]) == 1  # a prediction missing on one side never matches
    assert count_matches(np.array([0, 1, 2]), np.array([0, 1, 2])) == 3
    with pytest.raises(InputError, match="nothing to compare"):
        count_matches([], [])
    with pytest.raises(InputError, match="cannot compare 2 predictions with 1"):
        count_matches(["a", "b"], ["a"])


# --- scores against labels ------------------------------------------------------------------------------------

def _top_k_by_hand(scores: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Rank each row's classes by (score descending, index ascending) with plain Python."""
    hits = 0
    for row, label in zip(scores.tolist(), labels.tolist()):
        ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))
        hits += label in ranked[:k]
    return hits


@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_k_matches_an_independent_ranking(k: int) -> None:
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, (200, 7)).astype(np.float32)  # few distinct values: many ties
    labels = rng.integers(0, 7, 200)
    hits = top_k_hits(scores, labels, k=k)
    assert hits == _top_k_by_hand(scores, labels, k)
    assert 0 < hits < 200
    assert top_k_accuracy(scores, labels, k=k) == hits / 200


def test_top_k_ties_go_to_the_lower_class_index() -> None:
    scores = np.array([[2.0, 2.0, 2.0, 1.0]])
    assert top_k_hits(scores, [0], k=1) == 1
    assert top_k_hits(scores, [1], k=1) == 0
    assert top_k_hits(scores, [2], k=2) == 0
    assert top_k_hits(scores, [2], k=3) == 1


def test_top_k_above_the_class_count_counts_every_row() -> None:
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    assert top_k_hits(scores, [0, 2], k=1) == 0
    assert top_k_hits(scores, [0, 2], k=10) == 2 and top_k_accuracy(scores, [0, 2], k=10) == 1.0


def test_top_k_is_the_same_on_logits_and_their_softmax() -> None:
    from edgeres.inference import softmax

    logits = np.random.default_rng(1).standard_normal((64, 10))
    labels = np.arange(64) % 10
    for k in (1, 5):
        assert top_k_hits(logits, labels, k=k) == top_k_hits(softmax(logits), labels, k=k)


def test_top_k_refuses_bad_input() -> None:
    scores = np.zeros((2, 3))
    with pytest.raises(InputError, match="nothing to compare"):
        top_k_hits(np.zeros((0, 3)), [], k=1)
    with pytest.raises(InputError, match="k >= 1, got 0"):
        top_k_hits(scores, [0, 1], k=0)
    with pytest.raises(InputError, match="1 labels for 2 scored inputs"):
        top_k_hits(scores, [0], k=1)
    with pytest.raises(InputError, match=r"class indices 0\.\.2, got values from 0 to 3"):
        top_k_hits(scores, [0, 3], k=1)
    with pytest.raises(InputError, match="class indices"):
        top_k_hits(scores, [0.0, 1.0], k=1)


# --- real images or seeded noise ------------------------------------------------------------------------------

def _write_images(folder: Path, count: int, *, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (12, 12, 3)).astype(np.uint8)).save(paths[-1])
    return paths


def _card(root: Path) -> ModelCard:
    return ModelCard(arch="tiny", class_names=["a", "b"], preprocess=PRE, dataset={"root": str(root)})


def test_dataset_sample_spreads_over_the_val_split_else_the_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _write_images(root / "train" / "a", 4)
    val = _write_images(root / "val" / "a", 6) + _write_images(root / "val" / "b", 6, seed=1)
    assert dataset_sample(_card(root), 4) == [val[0], val[3], val[6], val[9]]
    assert dataset_sample(_card(root), 50) == val
    flat = tmp_path / "flat"
    files = _write_images(flat, 3)
    assert dataset_sample(_card(flat), 2) == files[:2]
    assert dataset_sample(_card(tmp_path / "moved-away"), 4) == []
    assert dataset_sample(ModelCard(arch="tiny", class_names=["a"], preprocess=PRE), 4) == []


def test_real_images_when_the_cards_data_exists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    _write_images(root / "val" / "a", 5)
    card = _card(root)
    with caplog.at_level(logging.WARNING, logger="edgeres.comparison"):
        chosen = real_or_noise(lambda: dataset_sample(card, 3), PRE, count=3, real="dataset", noise="random",
                               warning="unused")
    images, source = chosen
    assert source == "dataset" and images.dtype == np.float32 and images.shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(images, load_batch(list_images(root / "val")[:3], PRE))
    assert not caplog.records


def test_seeded_noise_when_the_cards_data_is_gone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    card = _card(tmp_path / "moved-away")

    def choose(seed: int) -> tuple[np.ndarray, str]:
        return real_or_noise(lambda: dataset_sample(card, 4), PRE, count=4, seed=seed, real="dataset",
                             noise="random", warning="no dataset ({reason}): on random inputs")

    with caplog.at_level(logging.WARNING, logger="edgeres.comparison"):
        a, source = choose(1)
    b, _ = choose(1)
    c, _ = choose(2)
    assert source == "random" and a.shape == (4, 3, 8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # the very numbers export parity and build verification drew before they shared this function
    np.testing.assert_array_equal(a, np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32))
    np.testing.assert_array_equal(seeded_noise(PRE, 4, seed=1), a)
    assert [r.getMessage() for r in caplog.records] == ["no dataset (none found): on random inputs"] * 3


def test_a_finder_that_raises_means_noise_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    def no_calibration_set() -> list[Path]:
        raise InputError("no calibration set recorded; pass --calib DIR")

    with caplog.at_level(logging.WARNING, logger="edgeres.comparison"):
        images, source = real_or_noise(no_calibration_set, PRE, count=2, real="calibration images",
                                       noise="random inputs", warning="none given ({reason}); verifying on noise")
    assert source == "random inputs" and images.shape == (2, 3, 8, 8)
    assert [r.getMessage() for r in caplog.records] == ["none given (no calibration set recorded); verifying on noise"]


def test_unreadable_images_are_skipped_or_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = _write_images(tmp_path / "imgs", 2)
    bad = tmp_path / "imgs" / "broken.png"
    bad.write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger="edgeres.comparison"):
        images, source = real_or_noise(lambda: [good[0], bad, good[1]], PRE, count=5, real="calibration images",
                                       noise="random inputs", warning="w", skip_unreadable=True)
    assert source == "calibration images" and len(images) == 2
    np.testing.assert_array_equal(images, load_batch(good, PRE))
    assert any("broken.png" in r.getMessage() for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgeres.comparison"):
        images, source = real_or_noise(lambda: [bad], PRE, count=5, real="calibration images",
                                       noise="random inputs", warning="fell back ({reason})", skip_unreadable=True)
    assert source == "random inputs" and len(images) == 5
    assert caplog.records[-1].getMessage() == "fell back (none could be read)"

    with pytest.raises(DataError, match="broken.png"):
        real_or_noise(lambda: [good[0], bad], PRE, count=5, real="dataset", noise="random", warning="w")


def test_seeded_noise_refuses_no_inputs() -> None:
    with pytest.raises(InputError, match="at least one input, got 0"):
        seeded_noise(PRE, 0)


def test_the_module_imports_numpy_only() -> None:
    import subprocess
    import sys

    code = ("import sys, edgeres.comparison; print(','.join(m for m in ('torch', 'onnxruntime', 'onnx', 'PIL') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == ""
