"""How edgeres compares a model's outputs, and picks the inputs it compares them on.

One module serves export parity (:mod:`edgeres.exporting`), build verification (:mod:`edgeres.building`), the
sensitivity evaluator (:mod:`edgeres.sensitivity`), the regression gate (:mod:`edgeres.checking`), the study and
``infer``'s accuracy, so that each counts the same way:

* two executions of one model on the same inputs — :func:`compare_logits` (top-1 agreement, max and mean
  |Δlogit|), or :func:`count_matches` on predicted classes;
* a model against labels — :func:`top_k_hits` / :func:`top_k_accuracy`;
* the inputs — :func:`real_or_noise`: real images when some are known, else seeded noise, labelled with the
  source each caller reports.

Top-1 is ``argmax`` (the first of tied maxima); top-k is the first ``k`` of a stable descending sort, so ties go to
the lower class index and top-1 is always the first of the top-k. Differences are taken in float64. numpy only::

    c = compare_logits(reference_logits, artifact_logits)
    c.top1_agreement, c.max_abs_diff
    top_k_accuracy(logits, labels, k=5)
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np

from edgeres.errors import DataError, InputError, ModelError

if TYPE_CHECKING:
    from edgeres.card import ModelCard, Preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogitComparison:
    """A candidate's logits against a reference's, on the same inputs."""

    count: int  # inputs compared
    agree: int  # inputs whose top-1 class is the same in both
    max_abs_diff: float  # largest |Δlogit| (NaN when either side holds NaN)
    mean_abs_diff: float  # mean |Δlogit| over every input and class

    @property
    def top1_agreement(self) -> float:
        """The fraction (0..1) of inputs whose top-1 class the candidate keeps."""
        return self.agree / self.count


def _logits(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ModelError(f"{name} logits must be (inputs, classes), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"nothing to compare: the {name} logits have shape {array.shape}; give at least one input "
                         "and one class")
    return array


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> LogitComparison:
    """Compare two executions of one model on the same inputs.

    Args:
        reference: logits (N, C) of the trusted execution (PyTorch, the FP32 ONNX).
        candidate: logits (N, C) of the execution under test, same inputs in the same order.

    Returns:
        The count, the inputs whose top-1 class agrees, and the max and mean |Δlogit| (in float64).

    Raises:
        InputError: no input or no class.
        ModelError: the two shapes differ (the models give another number of classes, or of results).
    """
    ref, got = _logits("reference", reference), _logits("candidate", candidate)
    if ref.shape != got.shape:
        raise ModelError(f"cannot compare logits of shape {got.shape} with the reference's {ref.shape}: the two "
                         "executions give another number of results or classes")
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    return LogitComparison(count=len(ref), agree=int(np.count_nonzero(ref.argmax(1) == got.argmax(1))),
                           max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))


def count_matches(predicted: Sequence[object], other: Sequence[object]) -> int:
    """How many positions hold the same class in ``predicted`` and ``other`` (indices or labels; a missing
    prediction, e.g. None, matches nothing but None).

    Raises:
        InputError: empty sequences, or sequences of different lengths.
    """
    if len(predicted) != len(other):
        raise InputError(f"cannot compare {len(predicted)} predictions with {len(other)}: give one per input")
    if len(predicted) == 0:
        raise InputError("nothing to compare: no predictions")
    return sum(1 for a, b in zip(predicted, other) if a == b)


def top_k_hits(scores: np.ndarray, labels: Sequence[int] | np.ndarray, *, k: int = 1) -> int:
    """How many rows of ``scores`` (N, C: logits or probabilities) hold their label among their ``k`` best
    classes; ``k`` above C counts every row.

    Raises:
        InputError: no row or class, ``k`` < 1, a label count other than N, or a label outside 0..C-1.
    """
    values = _logits("scored", scores)
    truth = np.asarray(labels)
    if k < 1:
        raise InputError(f"top-k needs k >= 1, got {k}")
    if truth.shape != (len(values),):
        raise InputError(f"{truth.size} labels for {len(values)} scored inputs: give one class index per input")
    if truth.size and (not np.issubdtype(truth.dtype, np.integer) or truth.min() < 0
                       or truth.max() >= values.shape[1]):
        raise InputError(f"labels must be class indices 0..{values.shape[1] - 1}, got values from {truth.min()} "
                         f"to {truth.max()}")
    if k == 1:
        return int(np.count_nonzero(values.argmax(1) == truth))
    best = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return int(np.count_nonzero((best == truth[:, None]).any(axis=1)))


def top_k_accuracy(scores: np.ndarray, labels: Sequence[int] | np.ndarray, *, k: int = 1) -> float:
    """The fraction (0..1) of rows whose label is among their ``k`` best classes (:func:`top_k_hits`)."""
    return top_k_hits(scores, labels, k=k) / len(np.asarray(scores))


# --- inputs ---------------------------------------------------------------------------------------------------

class ChosenInputs(NamedTuple):
    """Preprocessed inputs (N, C, H, W) float32, and where they came from (the label its caller reports)."""

    images: np.ndarray
    source: str


def seeded_noise(preprocess: Preprocess, count: int, *, seed: int = 0) -> np.ndarray:
    """``count`` standard-normal float32 inputs of ``preprocess``'s input shape; the same for the same seed."""
    if count < 1:
        raise InputError(f"need at least one input, got {count}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *preprocess.input_shape)).astype(np.float32)


def dataset_sample(card: ModelCard, count: int) -> list[Path]:
    """Up to ``count`` image files spread evenly over the card's dataset (its ``val/`` split when it has one, else
    its root, in sorted order), or none when the card records no dataset folder on this machine."""
    from edgeres.data import list_images

    root = card.dataset.get("root")
    if not root or not Path(root).is_dir():
        return []
    val = Path(root) / "val"
    paths = list_images(val if val.is_dir() else Path(root))
    return paths[::max(1, len(paths) // count)][:count]


def real_or_noise(find: Callable[[], Sequence[str | os.PathLike[str]]], preprocess: Preprocess, *, count: int,
                  real: str, noise: str, warning: str, seed: int = 0,
                  skip_unreadable: bool = False) -> ChosenInputs:
    """Real images when ``find`` names some, else ``count`` inputs of :func:`seeded_noise`.

    Args:
        find: returns the image files to use (any number); raising :class:`InputError` or :class:`DataError`
            (no dataset or calibration set known) means "none".
        preprocess: the model card's preprocessing, for loading the images and shaping the noise.
        count: how many noise inputs to make when no image is used.
        real: the source label of real images, e.g. ``"dataset"``, ``"calibration images"``.
        noise: the source label of noise, e.g. ``"random"``, ``"random inputs"``.
        warning: logged when falling back to noise; ``{reason}`` is replaced by why (the first clause of
            ``find``'s error, or "none found" / "none could be read").
        seed: seeds the noise.
        skip_unreadable: skip (and log) images that cannot be decoded instead of raising their DataError.

    Returns:
        The images and ``real``, or the noise and ``noise``.
    """
    from edgeres.data import load_image

    try:
        paths, reason = list(find()), "none found"
    except (InputError, DataError) as exc:
        paths, reason = [], str(exc).split(";")[0]
    arrays = []
    for path in paths:
        try:
            arrays.append(load_image(path, preprocess))
        except DataError as exc:
            if not skip_unreadable:
                raise
            log.warning("skipping an unreadable input: %s", exc)
            reason = "none could be read"
    if arrays:
        return ChosenInputs(np.stack(arrays).astype(np.float32, copy=False), real)
    log.warning(warning.format(reason=reason))
    return ChosenInputs(seeded_noise(preprocess, count, seed=seed), noise)
