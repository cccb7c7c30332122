"""Calibration data readers. A data reader is any iterable of ``{input name: ndarray}`` batches.

:func:`sample_paths` picks the calibration images (seeded, class-balanced when labels exist);
:class:`ImageFolderReader` streams them in batches through an injected ``load`` function, which applies the
model card's preprocessing (``edgeres`` passes its own), so this package stays numpy-only.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np

from calibration.errors import CalibrationError

log = logging.getLogger(__name__)

def _sorted_labels(labels: set[Hashable]) -> list[Hashable]:
    try:
        return sorted(labels)  # type: ignore[type-var]
    except TypeError:  # mixed label types (None among strings, ...): any stable order will do
        return sorted(labels, key=repr)


def sample_paths(samples: Sequence[tuple[Any, Hashable | None]], n: int = 512, *, seed: int = 0) -> list[Any]:
    """Choose up to ``n`` calibration images, reproducibly and class-balanced.

    Samples are first sorted by path, so the result does not depend on directory listing order. With labels,
    each class is shuffled with its own generator (seeded by ``seed`` and the class's rank) and classes are
    taken round-robin in label order, so class counts differ by at most one until a class runs out. Without
    labels (all ``None``) it is a seeded random sample. All samples are returned (in that order) when there
    are no more than ``n``.

    Args:
        samples: ``(path, label or None)`` pairs.
        n: how many to choose (>= 1).
        seed: the sampling seed.

    Returns:
        The chosen paths.
    """
    if n < 1:
        raise CalibrationError(f"the number of calibration images must be at least 1, got {n}")
    by_label: dict[Hashable, list[Any]] = defaultdict(list)
    for path, label in sorted(samples, key=lambda s: os.fspath(s[0])):
        by_label[label].append(path)
    groups = []
    for rank, label in enumerate(_sorted_labels(set(by_label))):
        paths = by_label[label]
        order = np.random.default_rng([seed, rank]).permutation(len(paths))
        groups.append([paths[i] for i in order])
    chosen: list[Any] = []
    depth = 0
    while len(chosen) < n and any(depth < len(g) for g in groups):
        for g in groups:
            if depth < len(g) and len(chosen) < n:
                chosen.append(g[depth])
        depth += 1
    log.debug("sampled %d of %d calibration images from %d class(es)", len(chosen), len(samples), len(groups))
    return chosen


class ImageFolderReader:
    """Streams images as ``{input_name: float32 array of shape (batch, *image shape)}`` batches.

    Only one batch is in memory at a time. The last batch may be smaller than ``batch_size``.

    Args:
        paths: the images, in the order to read them (e.g. from :func:`sample_paths`).
        load: ``path -> ndarray``: decodes one image and applies the model's preprocessing.
        input_name: the model input the batches feed.
        batch_size: images per batch.
        shape: the per-image shape the model expects (``None`` entries match any size); checked per image.
        allow_partial: accept fewer images than one batch.

    Raises:
        CalibrationError: no images, fewer than one batch (unless ``allow_partial``), bad batch size.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        load: Callable[[Any], np.ndarray],
        input_name: str,
        batch_size: int = 32,
        shape: Sequence[int | None] | None = None,
        allow_partial: bool = False,
    ) -> None:
        if batch_size < 1:
            raise CalibrationError(f"calibration batch size must be at least 1, got {batch_size}")
        self.paths = list(paths)
        if not self.paths:
            raise CalibrationError("no calibration images were found; point --data at a folder of images")
        if len(self.paths) < batch_size and not allow_partial:
            raise CalibrationError(
                f"only {len(self.paths)} calibration image(s) found, fewer than one batch of {batch_size}; "
                "lower --batch or add images"
            )
        self.load = load
        self.input_name = input_name
        self.batch_size = int(batch_size)
        self.shape = tuple(shape) if shape is not None else None

    @property
    def num_images(self) -> int:
        """How many images the reader yields in total."""
        return len(self.paths)

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        first: tuple[Any, tuple[int, ...]] | None = None  # (path, shape) of the first image
        for start in range(0, len(self.paths), self.batch_size):
            chunk = self.paths[start:start + self.batch_size]
            batch = None
            for i, path in enumerate(chunk):
                image = np.asarray(self.load(path), dtype=np.float32)
                self._check_model_shape(path, image.shape)
                if first is None:
                    first = (path, image.shape)
                elif image.shape != first[1]:
                    raise CalibrationError(
                        f"calibration image {path} has shape {image.shape} after preprocessing, but {first[0]} has "
                        f"{first[1]}; all calibration images must preprocess to the same size"
                    )
                if batch is None:
                    batch = np.empty((len(chunk), *image.shape), dtype=np.float32)
                batch[i] = image
            yield {self.input_name: batch}

    def _check_model_shape(self, path: Any, shape: tuple[int, ...]) -> None:
        if self.shape is not None and not (
            len(shape) == len(self.shape) and all(e is None or e == d for d, e in zip(shape, self.shape))
        ):
            want = tuple("?" if d is None else d for d in self.shape)
            raise CalibrationError(
                f"calibration image {path} has shape {shape} after preprocessing, but the model expects {want} per "
                "image; check the preprocessing (resize/crop) in the model card"
            )

