"""Images in, tensors out: decoding any image file, preprocessing it as a model card says, image folders and
datasets. The built-in digits set is in :mod:`edgeres.digits`.

Choices worth knowing:

* Alpha (LA, PA, RGBA, transparent P) is **dropped**, not composited: the colour under a transparent pixel is
  kept as stored. That is what torchvision's ``ImageFolder`` loader (``img.convert("RGB")``) does, so a model
  trained with torchvision sees the same pixels here.
* 16-bit grey (``I;16*``) and 32-bit integer (``I``) images are taken as 0..65535 and scaled to 8 bits with
  ``round(v / 257)`` (``I`` is clipped to that range first); float (``F``) images are taken as 0..1.
* Multi-frame files (animated GIF, multi-page TIFF) use their first frame.
* ``mean``/``std`` are given in RGB order and applied before a BGR swap, so flipping ``channel_order`` alone
  never misaligns the normalisation.
* Resize and center crop follow torchvision (``Resize(int)``: long side ``int(size * long / short)``; crop
  offsets ``int(round((h - crop) / 2))``; an image smaller than the crop is zero-padded around its centre).
* Nested folders inside a class folder are ignored with a logged warning; only files directly in it count.
* A JPEG at least twice as large as the resize target is decoded with Pillow's draft mode (DCT-domain
  downscaling to a size whose short side still covers the target): about 1.8x faster, nearly the same tensor.
"""
from __future__ import annotations

import logging
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from edgeres.card import Preprocess
from edgeres.errors import DataError, InputError, ModelError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CALIBRATION_LIST = "calibration.txt"  # ROOT/calibration.txt: one image path per line, relative to ROOT

_SUFFIX_TEXT = " ".join(sorted(IMAGE_SUFFIXES))
_RESAMPLING = {m.name.lower(): m for m in Image.Resampling}


# --- decoding -------------------------------------------------------------------------------------------------

def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``'s suffix is one of :data:`IMAGE_SUFFIXES`, ignoring case (the file is not opened)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def decode_image(path: str | os.PathLike[str], *, channels: int, min_short_side: int | None = None) -> Image.Image:
    """Decode one image file into a fully loaded ``L`` (1 channel) or ``RGB`` (3 channels) Pillow image.

    The EXIF orientation is applied. Any Pillow mode is converted as the module docstring describes.

    Args:
        path: the image file.
        channels: 1 for grayscale, 3 for colour.
        min_short_side: the short side the caller will resize to; lets a large JPEG decode at a reduced size
            (draft mode) whose short side is still at least this. None decodes at full size.

    Raises:
        DataError: ``"<path>: <reason>"`` for a missing, unreadable, empty, non-image, truncated or corrupt
            file, or one past Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    try:
        with open(path, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            _check_pixels(img.size)  # Pillow's own check only warns between 1x and 2x the limit
            if min_short_side and isinstance(img, JpegImagePlugin.JpegImageFile) \
                    and min(img.size) >= 2 * min_short_side:
                img.draft(None, (min_short_side, min_short_side))
            img.load()
            img = _exif_transpose(img, path)
            return _to_mode(img, "L" if channels == 1 else "RGB")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied; make the file readable") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({exc}); if the image is genuine, raise "
                        "the limit: `edgeres --max-image-pixels N ...` (or EDGERES_MAX_IMAGE_PIXELS=N)") from None
    except UnidentifiedImageError:
        reason = "file is empty" if _is_empty(path) else "not an image Pillow can read (unknown or corrupt format)"
        raise DataError(f"{path}: {reason}") from None
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError, struct.error...
        text = str(exc).strip() or type(exc).__name__
        if "truncated" in text.lower():
            raise DataError(f"{path}: truncated image ({text}); re-copy or remove the file") from None
        raise DataError(f"{path}: cannot decode image ({text}); the file may be corrupt") from None


def _check_pixels(size: tuple[int, int]) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        raise Image.DecompressionBombError(
            f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels exceeds the limit of {limit} pixels")


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _exif_transpose(img: Image.Image, path: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # a malformed EXIF block should not make an otherwise good image unusable
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", path, exc)
        return img


def _to_mode(img: Image.Image, target: str) -> Image.Image:
    """Convert any Pillow mode to ``L`` or ``RGB`` (alpha dropped, high bit depths scaled, not clipped)."""
    mode = img.mode
    if mode == target:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode == "F":
            arr = np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0
        else:
            arr = np.clip(arr, 0, 65535) / 257.0
        gray = Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")
        return gray if target == "L" else gray.convert("RGB")
    if mode == "La":  # premultiplied grey: Pillow converts it only to LA
        img = img.convert("LA")
    if target == "L" and img.mode in ("1", "L", "LA"):
        return img.convert("L")
    if mode in ("PA", "RGBa") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")  # P with transparency warns when converted straight to RGB
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return rgb if target == "RGB" else rgb.convert("L")


# --- preprocessing --------------------------------------------------------------------------------------------

def preprocess_image(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """Turn a decoded image into one model input as ``pre`` describes.

    Resize so the short side is ``pre.resize`` (skipped when None), center-crop ``pre.crop`` square, scale to
    [0, 1], normalise ``(x - mean) / std`` per channel (RGB order), swap to BGR if asked, lay out as
    ``pre.layout``.

    Args:
        img: a Pillow image in any mode (converted to ``L``/``RGB`` as :func:`decode_image` would).
        pre: the preprocessing spec, usually the model card's.

    Returns:
        float32 array of shape ``pre.input_shape``.
    """
    img = _to_mode(img, "L" if pre.channels == 1 else "RGB")
    if pre.resize is not None:
        img = _resize_short_side(img, pre.resize, _resample(pre.interpolation))
    img = _center_crop(img, pre.crop)
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    x = (x / np.float32(255.0) - mean) / std
    if pre.channel_order == "BGR" and pre.channels == 3:
        x = x[:, :, ::-1]
    if pre.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _resample(name: str) -> Image.Resampling:
    try:
        return _RESAMPLING[name.lower()]
    except KeyError:
        raise ModelError(f"preprocess.interpolation {name!r} is not a Pillow filter; use one of "
                         f"{', '.join(sorted(_RESAMPLING))}") from None


def _resize_short_side(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    w, h = img.size
    short, long = min(w, h), max(w, h)
    if short == size:
        return img
    new_long = int(size * long / short)
    return img.resize((size, new_long) if w <= h else (new_long, size), resample)


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if (w, h) == (size, size):
        return img
    if w < size or h < size:  # zero-pad around the centre, as torchvision's center_crop does
        padded = Image.new(img.mode, (max(w, size), max(h, size)), 0)
        padded.paste(img, ((padded.width - w) // 2, (padded.height - h) // 2))
        img, (w, h) = padded, padded.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def load_image(path: str | os.PathLike[str], pre: Preprocess) -> np.ndarray:
    """Decode and preprocess one image file into a float32 array of shape ``pre.input_shape``.

    Raises:
        DataError: naming the file, when it cannot be decoded (see :func:`decode_image`).
    """
    return preprocess_image(decode_image(path, channels=pre.channels, min_short_side=pre.resize), pre)


def load_batch(paths: Sequence[str | os.PathLike[str]], pre: Preprocess) -> np.ndarray:
    """Decode and preprocess several image files into one float32 array of shape ``(N, *pre.input_shape)``."""
    out = np.empty((len(paths), *pre.input_shape), dtype=np.float32)
    for i, path in enumerate(paths):
        out[i] = load_image(path, pre)
    return out


def iter_batches(paths: Sequence[str | os.PathLike[str]], pre: Preprocess, *,
                 batch_size: int) -> Iterator[np.ndarray]:
    """Yield :func:`load_batch` arrays of at most ``batch_size`` images, in order (the last may be smaller)."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, len(paths), batch_size):
        yield load_batch(paths[start:start + batch_size], pre)


# --- folders --------------------------------------------------------------------------------------------------

@dataclass
class ImageFolder:
    """Labelled images of ``root/<class>/*``: ``samples`` are (file, class index) sorted by class, then name."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self.samples]

    @property
    def labels(self) -> list[int]:
        return [c for _, c in self.samples]

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class Dataset:
    """A train/val pair of image folders with the same classes, and an optional calibration image list."""

    root: Path
    classes: list[str]
    train: ImageFolder
    val: ImageFolder
    calibration: list[Path] | None = None

    def summary(self) -> dict[str, object]:
        """JSON-ready description for a model card's ``dataset`` field."""
        return {"root": str(self.root), "classes": list(self.classes), "train": len(self.train),
                "val": len(self.val), "calibration": None if self.calibration is None else len(self.calibration)}


def _visible_entries(folder: Path) -> list[Path]:
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    return sorted(entries, key=lambda p: p.name)


def _require_folder(folder: Path, expected: str) -> None:
    if not folder.exists():
        raise DataError(f"{folder}: folder not found; expected {expected}")
    if not folder.is_dir():
        raise DataError(f"{folder}: is a file, not a folder; expected {expected}")


def scan_image_folder(root: str | os.PathLike[str]) -> ImageFolder:
    """Find the labelled images of ``root/<class>/<image>``.

    Classes are the visible sub-folder names, sorted. Only files with an image suffix (any case) directly in a
    class folder count; other files are skipped and nested folders are ignored with a logged warning.

    Raises:
        DataError: when ``root`` is missing, has no class folders, or a class folder has no images.
    """
    root = Path(root)
    expected = f"{root}/<class>/<image> with one sub-folder per class"
    _require_folder(root, expected)
    entries = _visible_entries(root)
    class_dirs = [p for p in entries if p.is_dir()]
    if not class_dirs:
        loose = sum(1 for p in entries if p.is_file() and is_image_file(p))
        hint = f" (it holds {loose} images directly: move them into one sub-folder per class)" if loose else ""
        raise DataError(f"{root}: no class folders{hint}; expected {expected}")
    classes, samples = [], []
    for index, folder in enumerate(class_dirs):
        files, nested = [], []
        for entry in _visible_entries(folder):
            if entry.is_dir():
                nested.append(entry.name)
            elif is_image_file(entry) and entry.is_file():
                files.append(entry)
        if nested:
            log.warning("%s: ignoring %d nested folder(s) (%s); images must sit directly in the class folder",
                        folder, len(nested), ", ".join(nested[:5]) + (", ..." if len(nested) > 5 else ""))
        if not files:
            raise DataError(f"{folder}: class folder {folder.name!r} has no images ({_SUFFIX_TEXT}); "
                            "add images or remove the folder")
        classes.append(folder.name)
        samples.extend((f, index) for f in files)
    return ImageFolder(root=root, classes=classes, samples=samples)


def list_images(folder: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Every image file under ``folder`` (or ``folder`` itself when it is an image file), sorted by relative path.

    Hidden files and folders (names starting with ``.``) are skipped.

    Raises:
        DataError: when ``folder`` does not exist.
    """
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    _require_folder(folder, "a folder of images or an image file")
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=None):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        base = Path(dirpath)
        for name in filenames:
            if not name.startswith(".") and is_image_file(name):
                path = base / name
                found.append((path.relative_to(folder).as_posix(), path))
    return [p for _, p in sorted(found, key=lambda item: item[0])]


# --- datasets -------------------------------------------------------------------------------------------------

def open_dataset(root: str | os.PathLike[str], *, val_split: float | None = None, seed: int = 0) -> Dataset:
    """Open ``root/{train,val}/<class>/*``, or ``root/<class>/*`` split by ``val_split``.

    ``root/calibration.txt``, when present, lists calibration images, one path per line relative to ``root``
    (blank lines and ``#`` comments skipped).

    Args:
        root: the dataset folder.
        val_split: fraction of each class held out for validation when there is no ``val/`` folder; the split is
            stratified and seeded. Ignored (with a warning) when ``val/`` exists.
        seed: seed of that split.

    Raises:
        DataError: on a bad layout (see :func:`scan_image_folder`), train/val class lists that differ, no
            validation data and no ``val_split``, or a calibration list naming a missing file.
    """
    root = Path(root)
    _require_folder(root, f"{root}/train/<class>/<image> and {root}/val/<class>/<image>, or {root}/<class>/<image>")
    if val_split is not None and not 0.0 < val_split < 1.0:
        raise InputError(f"--val-split must be between 0 and 1 (exclusive), got {val_split}")
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        if val_split is not None:
            log.warning("%s has a val/ folder; ignoring val_split=%s", root, val_split)
        train, val = scan_image_folder(train_dir), scan_image_folder(val_dir)
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes)) or ["-"]
            only_val = sorted(set(val.classes) - set(train.classes)) or ["-"]
            raise DataError(f"{root}: train/ and val/ have different class folders (only in train: "
                            f"{', '.join(only_train)}; only in val: {', '.join(only_val)}); give both the same classes")
    elif val_split is None:
        where = f"{root} has train/ but no val/" if train_dir.is_dir() else f"{root} has no train/ and val/ folders"
        raise DataError(f"{where}; add val/<class>/ folders or pass --val-split (e.g. 0.2) to hold out part of "
                        "each class")
    else:
        train, val = split_image_folder(scan_image_folder(train_dir if train_dir.is_dir() else root),
                                        val_fraction=val_split, seed=seed)
    return Dataset(root=root, classes=list(train.classes), train=train, val=val,
                   calibration=read_calibration_list(root))


def split_image_folder(folder: ImageFolder, *, val_fraction: float, seed: int = 0) -> tuple[ImageFolder, ImageFolder]:
    """Split each class of ``folder`` into train and val (stratified, seeded, independent per class).

    Each class with at least two images keeps at least one on each side; a class's split depends only on the
    seed, its name and its own files.
    """
    by_class: dict[int, list[Path]] = {}
    for path, label in folder.samples:
        by_class.setdefault(label, []).append(path)
    train, val = [], []
    for label, paths in sorted(by_class.items()):
        picks = stratum_split(len(paths), fraction=val_fraction, seed=seed, name=folder.classes[label])
        for i, path in enumerate(paths):
            (val if i in picks else train).append((path, label))
    for name, part in (("val", val), ("train", train)):
        missing = sorted(set(range(len(folder.classes))) - {label for _, label in part})
        if missing:
            log.warning("%s: %s split has no images of class(es) %s (too few images to split)", folder.root, name,
                        ", ".join(folder.classes[i] for i in missing))
    return (ImageFolder(folder.root, list(folder.classes), train), ImageFolder(folder.root, list(folder.classes), val))


def stratum_split(n: int, *, fraction: float, seed: int, name: str) -> set[int]:
    """Indices (of ``n``) that go to validation in a stratum (class) called ``name``.

    About ``fraction`` of them, at least one on each side when ``n >= 2``; they depend only on ``seed``, ``name``
    and ``n``, so :func:`split_image_folder` and the digits set (:mod:`edgeres.digits`) split alike.
    """
    n_val = min(max(int(round(n * fraction)), 1), n - 1) if n >= 2 else 0
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    return set(rng.permutation(n)[:n_val].tolist())


def read_calibration_list(root: str | os.PathLike[str]) -> list[Path] | None:
    """The images listed in ``root/calibration.txt`` (paths relative to ``root``), or None without that file.

    Raises:
        DataError: naming the file and line when a listed image does not exist, or when the list is empty.
    """
    root = Path(root)
    listing = root / CALIBRATION_LIST
    if not listing.is_file():
        return None
    paths = []
    for lineno, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if Path(entry).is_absolute() else root / entry
        if not path.is_file():
            raise DataError(f"{listing}:{lineno}: {entry} not found; list image paths relative to {root}, "
                            "one per line")
        paths.append(path)
    if not paths:
        raise DataError(f"{listing}: lists no images; add image paths (relative to {root}) or delete it")
    return paths
