"""Sampling of calibration images and the batch reader."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from calibration import CalibrationError, ImageFolderReader, sample_paths


def _samples(per_class):
    return [(f"img/{label}/{i:03d}.png", label) for label, count in per_class.items() for i in range(count)]


def test_class_balanced_round_robin():
    samples = _samples({"cat": 50, "dog": 40, "eel": 3})
    chosen = sample_paths(samples, 30, seed=0)
    assert len(chosen) == 30 == len(set(chosen))
    counts = Counter(p.split("/")[1] for p in chosen)
    assert counts == {"cat": 14, "dog": 13, "eel": 3}  # eel runs out; the others share the rest within one
    labels = [p.split("/")[1] for p in chosen]
    assert labels[:3] == ["cat", "dog", "eel"]


def test_sampling_is_deterministic_and_independent_of_listing_order():
    samples = _samples({0: 30, 1: 30, 2: 30})
    a = sample_paths(samples, 12, seed=3)
    assert a == sample_paths(list(reversed(samples)), 12, seed=3)
    assert a != sample_paths(samples, 12, seed=4)
    first_of_class_0 = [p for p in a if p.startswith("img/0/")]
    assert first_of_class_0 != [f"img/0/{i:03d}.png" for i in range(4)]  # shuffled within the class
    assert Counter(p.split("/")[1] for p in a) == {"0": 4, "1": 4, "2": 4}


def test_unlabelled_is_a_seeded_random_sample_and_small_sets_are_taken_whole():
    samples = [(f"{i}.png", None) for i in range(100)]
    chosen = sample_paths(samples, 10, seed=1)
    assert len(set(chosen)) == 10 and chosen != [f"{i}.png" for i in range(10)]
    assert chosen == sample_paths(samples, 10, seed=1)
    everything = sample_paths(samples[:7], 512)
    assert sorted(everything) == sorted(p for p, _ in samples[:7])
    with pytest.raises(CalibrationError, match="at least 1"):
        sample_paths(samples, 0)


def test_mixed_label_types_do_not_crash():
    samples = [("a.png", None), ("b.png", "x"), ("c.png", 3), ("d.png", "x")]
    assert sorted(sample_paths(samples, 10)) == ["a.png", "b.png", "c.png", "d.png"]


def _loader(shape=(3, 4, 4)):
    calls = []

    def load(path):
        calls.append(path)
        return np.full(shape, float(int(path.split(".")[0])), dtype=np.float64)

    return load, calls


def test_reader_streams_batches_with_a_partial_last_one():
    load, calls = _loader()
    paths = [f"{i}.png" for i in range(10)]
    reader = ImageFolderReader(paths, load=load, input_name="input", batch_size=4)
    assert len(reader) == 3 and reader.num_images == 10
    it = iter(reader)
    first = next(it)
    assert calls == paths[:4]  # lazily: one batch at a time
    batches = [first, *it]
    assert [b["input"].shape for b in batches] == [(4, 3, 4, 4), (4, 3, 4, 4), (2, 3, 4, 4)]
    assert all(b["input"].dtype == np.float32 and list(b) == ["input"] for b in batches)
    values = np.concatenate([b["input"][:, 0, 0, 0] for b in batches])
    np.testing.assert_array_equal(values, np.arange(10))
    assert len(list(reader)) == 3  # iterable again


def test_reader_refuses_empty_and_fewer_than_one_batch():
    load, _ = _loader()
    with pytest.raises(CalibrationError, match="no calibration images"):
        ImageFolderReader([], load=load, input_name="x")
    with pytest.raises(CalibrationError, match=r"only 5 calibration image\(s\) found.*batch of 32.*lower --batch"):
        ImageFolderReader([f"{i}.png" for i in range(5)], load=load, input_name="x")
    reader = ImageFolderReader([f"{i}.png" for i in range(5)], load=load, input_name="x", allow_partial=True)
    assert [b["x"].shape[0] for b in reader] == [5]
    with pytest.raises(CalibrationError, match="batch size"):
        ImageFolderReader(["0.png"], load=load, input_name="x", batch_size=0)


def test_reader_names_the_image_whose_size_does_not_match():
    def load(path):
        return np.zeros((3, 8, 8) if path == "2.png" else (3, 4, 4))

    reader = ImageFolderReader([f"{i}.png" for i in range(4)], load=load, input_name="x", batch_size=2)
    with pytest.raises(CalibrationError, match=r"2.png has shape \(3, 8, 8\).*0.png has \(3, 4, 4\)"):
        list(reader)
    strict = ImageFolderReader(["0.png", "1.png"], load=load, input_name="x", batch_size=2, shape=(3, 5, None))
    with pytest.raises(CalibrationError, match=r"0.png has shape \(3, 4, 4\).*model expects \(3, 5, '\?'\)"):
        list(strict)
    loose = ImageFolderReader(["0.png", "1.png"], load=load, input_name="x", batch_size=2, shape=(3, None, 4))
    assert next(iter(loose))["x"].shape == (2, 3, 4, 4)
