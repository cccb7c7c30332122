"""INT8 calibration of an FP32 ONNX model: images → per-tensor ranges (``calibration.Ranges``).

The model card says how to preprocess images and, by default, where the training images are. Images are
sampled (seeded, class-balanced), streamed in batches through the BatchNorm-folded model
(:mod:`edgeres.observe`) and reduced by a collector (``minmax``, ``percentile``, ``entropy`` or ``mse``). The
ranges remember the model's sha256, so they cannot be applied to another model by mistake.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeres.card import ModelCard, Preprocess, calibration_images, card_from_file, card_from_onnx
from edgeres.errors import DataError, EdgeresError, InputError, ModelError
from edgeres.ranges import calibration_errors

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 512
DEFAULT_BATCH = 32


def calibrate(onnx_path: str | os.PathLike[str], *, data: str | os.PathLike[str] | None = None,
              method: str = "entropy", images: int = DEFAULT_IMAGES, batch_size: int = DEFAULT_BATCH,
              seed: int = 0, quiet: bool = False, equalize: bool = False, **method_options: Any) -> Any:
    """Compute INT8 ranges for every tensor a Q/DQ model of ``onnx_path`` needs.

    Args:
        onnx_path: the FP32 ONNX model (exported by edgeres, so it carries a model card; a card-less model is
            fed images of exactly its input size, scaled to [0, 1]).
        data: calibration images: a folder of class folders, a dataset root (``train/``, ``calibration.txt``) or a
            flat folder of images. Default: the calibration list or training set recorded in the model card.
        method: ``entropy`` (TensorRT's EntropyCalibration2), ``minmax``, ``percentile`` or ``mse``.
        images: how many images to sample (all of them when fewer are available).
        batch_size: images decoded per batch (ONNX Runtime runs them in slices sized so that one run observes
            about :data:`edgeres.observe.OBSERVED_BYTES_PER_RUN`, which bounds peak memory).
        seed: seed of the sampling.
        quiet: no progress bar.
        equalize: calibrate the cross-layer range-equalised graph (recorded in the ranges' ``options``, so the
            Q/DQ writer equalises the same way).
        **method_options: the collector's options, e.g. ``percentile=99.9`` or ``num_bins=4096``.

    Returns:
        ``calibration.Ranges`` with provenance (method, image count, model sha256, manifest hash, preprocessing).
        The graph input's amax is the exact range of the preprocessing (see :func:`input_amax`), whatever the
        method: the input has no outliers to clip.

    Raises:
        InputError: no calibration data given or recorded, fewer images than one batch, a bad option.
        DataError: an image that cannot be decoded or does not have the model's input size.
        ModelError: an unreadable model or one whose card disagrees with its input shape.
    """
    from calibration import ImageFolderReader, Ranges, content_hash, make_collector
    from edgeres.io import sha256_file
    from edgeres.observe import observe

    onnx_path = Path(onnx_path)
    if images < 1 or batch_size < 1:
        raise InputError(f"--images and --batch must be at least 1, got {images} and {batch_size}")
    model = _load_model(onnx_path)
    card = card_from_onnx(model)
    card = card_from_file(card, onnx_path.parent) if card is not None else None
    input_name, shape = _model_input(model, onnx_path)
    pre = _preprocess_for(card, shape, onnx_path)
    del model  # observe() loads its own folded copy: holding this one too would add the weights to peak memory
    with calibration_errors():
        collector = make_collector(method, **method_options)
        paths = select_images(onnx_path, card, data=data, images=images, batch_size=batch_size, seed=seed)
        reader = ImageFolderReader(paths, load=_loader(pre, card is None), input_name=input_name,
                                   batch_size=batch_size, shape=pre.input_shape)
        count = observe(onnx_path, reader, collector, total=len(paths), quiet=quiet,
                        desc=f"calibrate ({collector.method.value})", equalize=equalize)
        amax = collector.compute()
        # The input's range is known exactly from the preprocessing, and clipping it only destroys information:
        # entropy calibration of a mostly-background image (digits) would clip the strokes at the background level.
        amax[input_name] = input_amax(pre)
        ranges = Ranges(
            amax=amax, method=collector.method.value, num_images=count, model_sha256=sha256_file(onnx_path),
            manifest_sha256=content_hash(paths), preprocess=pre.to_dict(),
            options={**collector.options, "input_amax": "preprocessing", **({"equalize": True} if equalize else {})},
            created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        )
    log.info("calibrated %d tensors of %s on %d images (%s)", len(amax), onnx_path.name, count, ranges.method)
    return ranges


def input_amax(pre: Preprocess) -> float:
    """The largest |value| preprocessing can produce: pixels in [0, 1], normalised per channel."""
    return max(max(abs(0.0 - m), abs(1.0 - m)) / s for m, s in zip(pre.mean, pre.std))


# --- the model --------------------------------------------------------------------------------------------------

def _load_model(onnx_path: Path) -> Any:
    import onnx

    if not onnx_path.is_file():
        raise InputError(f"model {onnx_path} not found; pass the FP32 .onnx written by edgeres export")
    try:
        return onnx.load(str(onnx_path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a file that is not a model
        raise ModelError(f"{onnx_path} is not a readable ONNX model ({exc})") from exc


def _model_input(model: Any, onnx_path: Path) -> tuple[str, tuple[int | None, ...]]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"{onnx_path} has {len(inputs)} inputs; calibration from images needs exactly one")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    if len(shape) != 4:
        raise ModelError(f"{onnx_path} input {inputs[0].name!r} has shape {shape}; expected an image batch (N, C, H, W)")
    return inputs[0].name, shape


def _preprocess_for(card: ModelCard | None, shape: tuple[int | None, ...], onnx_path: Path) -> Preprocess:
    if card is not None:
        pre = card.preprocess
        expected = pre.input_shape
        actual = shape[1:]
        if any(a is not None and a != e for a, e in zip(actual, expected)):
            raise ModelError(f"{onnx_path}: its card's preprocessing makes images of shape {expected}, but the "
                             f"model's input is {actual}; re-export the model so card and input agree")
        return pre
    channels, height, width = shape[1:]
    if channels not in (1, 3) or height is None or height != width:
        raise ModelError(f"{onnx_path} carries no model card and its input shape {shape} is not a square image "
                         "batch; export it with edgeres export so it records its preprocessing")
    log.warning("%s carries no model card: feeding images as they are, scaled to [0, 1] with no normalisation",
                onnx_path)
    return Preprocess(resize=None, crop=height, mean=(0.0,) * channels, std=(1.0,) * channels, channels=channels)


def _loader(pre: Preprocess, exact_size: bool) -> Callable[[Path], np.ndarray]:
    """Image file → array; without a card (``exact_size``) images must already have the model's size."""
    from edgeres.data import load_image

    def load(path: Path) -> np.ndarray:
        if exact_size:
            _check_size(path, pre.crop)
        array = load_image(path, pre)
        if array.shape != pre.input_shape:
            raise DataError(f"{path}: preprocessed to shape {array.shape}, but the model takes {pre.input_shape}")
        return array

    return load


def _check_size(path: Path, side: int) -> None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            size = img.size
    except Exception as exc:  # Pillow raises many types for unreadable files
        raise DataError(f"{path}: cannot read image ({exc})") from exc
    if size != (side, side):
        raise DataError(f"{path} is {size[0]}x{size[1]} but the model (which has no card to say how to resize) "
                        f"takes {side}x{side}; resize the images or export the model with edgeres export")


# --- the images ---------------------------------------------------------------------------------------------

def select_images(onnx_path: str | os.PathLike[str], card: ModelCard | None, *,
                  data: str | os.PathLike[str] | None, images: int, batch_size: int, seed: int,
                  option: str = "--data") -> list[Path]:
    """The calibration images: from ``data`` or the card's dataset, sampled (seeded, class-balanced).

    ``option`` is how the command calling it names ``data`` in messages (``--data``, ``build``'s ``--calib``).

    Raises:
        InputError: no data given and none recorded, or fewer images than one batch.
    """
    from calibration import sample_paths

    samples, where = _candidates(Path(onnx_path), card, data, option)
    if not samples:
        raise InputError(f"{where} holds no calibration images; pass {option} with a folder of images (class "
                         "folders, a dataset root or a flat folder of image files)")
    if len(samples) < batch_size:
        raise InputError(f"{where} holds {len(samples)} calibration image(s), fewer than one batch of "
                         f"{batch_size}; add images or pass a smaller --batch")
    if len(samples) < images:
        log.warning("%s holds %d images; calibrating on all of them instead of %d", where, len(samples), images)
    pairs = [s if isinstance(s, tuple) else (s, None) for s in samples]
    return [Path(p) for p in sample_paths(pairs, min(images, len(samples)), seed=seed)]


def _candidates(onnx_path: Path, card: ModelCard | None, data: str | os.PathLike[str] | None,
                option: str = "--data") -> tuple[Sequence[Any], str]:
    """Labelled ``(path, class)`` samples or plain paths to sample from, and a description of where."""
    if data is not None:
        return _from_folder(Path(data), option), f"{option} {data}"
    recorded = dict(card.dataset) if card is not None else {}
    listed = recorded.get("calibration")
    if isinstance(listed, list) and listed:
        paths = calibration_images(card)
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"the card of {onnx_path} lists calibration image {missing[0]} which is not here; "
                             f"pass {option} DIR")
        return paths, f"the calibration list in {onnx_path.name}'s card"
    root = recorded.get("root")
    if not root:
        raise InputError(f"{onnx_path} records no training data in its model card; pass {option} DIR (a folder of "
                         "calibration images, e.g. the training set)")
    if not Path(root).is_dir():
        raise InputError(f"the training data recorded in {onnx_path.name}'s card ({root}) is not on this machine; "
                         f"pass {option} DIR")
    return _from_folder(Path(root)), str(root)


def _from_folder(folder: Path, option: str = "--data") -> Sequence[Any]:
    from edgeres.data import list_images, read_calibration_list, scan_image_folder

    if not folder.is_dir():
        raise InputError(f"{option} {folder}: folder not found; pass a folder of calibration images")
    listed = read_calibration_list(folder)
    if listed is not None:
        return listed
    if (folder / "train").is_dir():
        return scan_image_folder(folder / "train").samples
    has_classes = any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    if has_classes:
        try:
            return scan_image_folder(folder).samples
        except EdgeresError as exc:
            log.info("%s is not a class-folder tree (%s); using every image under it", folder, exc)
    return list_images(folder)
