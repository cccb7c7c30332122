"""Ranges: tensor name -> amax, saved as JSON with where they came from (method, images, model, preprocessing).

A ranges file is only valid for the model it was computed on: :meth:`Ranges.check_model` refuses another
model's sha256. The calibration set is identified by :func:`content_hash` (its images' bytes; edgeres records
that) or :func:`manifest_hash` (sorted relative paths and sizes).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from calibration._atomic import read_text, write_text_atomic
from calibration.collectors import parse_method
from calibration.errors import CalibrationError

FORMAT = "edgeres-ranges/1"
_REQUIRED = ("amax", "method", "num_images", "model_sha256", "manifest_sha256", "preprocess")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Ranges:
    """Per-tensor clipping ranges (symmetric: amax bounds |x|) and their provenance."""

    amax: dict[str, float]  # tensor name -> amax >= 0
    method: str  # a calibration.Method value
    num_images: int  # calibration images observed
    model_sha256: str  # sha256 of the FP32 ONNX the tensors belong to
    manifest_sha256: str  # calibration set identity, see content_hash
    preprocess: dict  # the model card's preprocessing used to feed the images
    options: dict = field(default_factory=dict)  # the collector's options (bins, percentile, ...)
    created: str = field(default_factory=_now)  # UTC, ISO 8601
    path: Path | None = field(default=None, compare=False, repr=False)  # the file it was loaded from, if any

    def __post_init__(self) -> None:
        self.method = parse_method(self.method).value
        bad = {k: v for k, v in self.amax.items() if not _valid_amax(v)}
        if bad:
            name, value = next(iter(bad.items()))
            raise CalibrationError(
                f"{self._where()}: amax of tensor {name!r} is {value!r}; every amax must be a finite number >= 0 "
                f"({len(bad)} bad value(s))"
            )
        self.amax = {str(k): float(v) for k, v in self.amax.items()}

    def _where(self) -> str:
        return f"ranges file {self.path}" if self.path else "ranges"

    def scales(self, *, max_level: int = 127) -> dict[str, float]:
        """``{tensor name: amax / max_level}``: symmetric INT8 scales."""
        return {name: amax / max_level for name, amax in self.amax.items()}

    def check_model(self, sha256: str) -> None:
        """Refuse to apply these ranges to a model other than the one they were computed on.

        Raises:
            CalibrationError: naming both hashes and the ranges file.
        """
        if sha256.lower() != self.model_sha256.lower():
            raise CalibrationError(
                f"{self._where()} was computed for the model with sha256 {self.model_sha256}, but this model's "
                f"sha256 is {sha256}; recalibrate this model (edgeres calibrate) instead of reusing these ranges"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``format`` first, ``amax`` last)."""
        return {
            "format": FORMAT,
            "method": self.method,
            "num_images": self.num_images,
            "model_sha256": self.model_sha256,
            "manifest_sha256": self.manifest_sha256,
            "preprocess": self.preprocess,
            "options": self.options,
            "created": self.created,
            "amax": self.amax,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: str | os.PathLike[str] | None = None) -> Ranges:
        """Build from :meth:`to_dict`'s output; ``path`` only names the source in error messages.

        Raises:
            CalibrationError: a missing or malformed field, or another format.
        """
        where = f"ranges file {path}" if path else "ranges"
        if not isinstance(data, dict):
            raise CalibrationError(f"{where} does not hold a JSON object; is it a ranges file from edgeres calibrate?")
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise CalibrationError(f"{where} has format {fmt!r}; this version reads {FORMAT!r}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise CalibrationError(f"{where} lacks field(s) {', '.join(missing)}; recreate it with edgeres calibrate")
        if not isinstance(data["amax"], dict) or not isinstance(data["preprocess"], dict):
            raise CalibrationError(f"{where}: 'amax' and 'preprocess' must be JSON objects")
        if not isinstance(data["num_images"], int) or isinstance(data["num_images"], bool) or data["num_images"] < 0:
            raise CalibrationError(f"{where}: num_images must be an integer >= 0, got {data['num_images']!r}")
        for key in ("method", "model_sha256", "manifest_sha256", "created"):
            if key in data and not isinstance(data[key], str):
                raise CalibrationError(f"{where}: key '{key}' must be a string, got {data[key]!r}")
        if "options" in data and not isinstance(data["options"], dict):
            raise CalibrationError(f"{where}: key 'options' must be a JSON object, got {data['options']!r}")
        kwargs = {k: data[k] for k in _REQUIRED}
        for optional in ("options", "created"):
            if optional in data:
                kwargs[optional] = data[optional]
        return cls(**kwargs, path=Path(path) if path else None)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON atomically (never a half-written file); returns the path."""
        target = write_text_atomic(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ranges:
        """Read a ranges file.

        Raises:
            CalibrationError: missing, unreadable, not JSON, or not a valid ranges file.
        """
        text = read_text(path, what="ranges file", missing_hint="; create it with edgeres calibrate")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if text.startswith("TRT-"):
                raise CalibrationError(f"{path} is a TensorRT calibration cache, not a ranges file; pass the JSON "
                                       "that edgeres calibrate wrote with --out") from None
            raise CalibrationError(f"ranges file {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
        return cls.from_dict(data, path=path)


def _valid_amax(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def content_hash(paths: Iterable[str | os.PathLike[str]]) -> str:
    """sha256 identifying a calibration set by its images' bytes: the sorted sha256 of each file.

    Names and folders do not enter, so the same images give the same hash however the path to them is spelled
    (``data/train`` or ``digits/data/train``, after a ``cd`` or on another machine).

    Raises:
        CalibrationError: an image cannot be read.
    """
    digests = []
    for p in paths:
        h = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as e:
            raise CalibrationError(f"cannot read calibration image {p}: {e.strerror}") from None
        digests.append(h.hexdigest())
    return hashlib.sha256("\n".join(sorted(digests)).encode("ascii")).hexdigest()


def manifest_hash(
    paths: Iterable[str | os.PathLike[str]], *, root: str | os.PathLike[str] | None = None, sizes: bool = True
) -> str:
    """sha256 identifying a calibration set: its sorted relative paths (POSIX form) and, by default, file sizes.

    Args:
        paths: the calibration images.
        root: paths are made relative to this folder (relative paths are taken as relative to it already);
            without it, paths are used as given.
        sizes: include each file's size in bytes (the files must exist).

    Returns:
        Hex sha256 of lines ``<relative path>\\t<size>`` sorted by path (no size column when ``sizes`` is False).
    """
    entries = []
    for p in paths:
        p = Path(p)
        rel = p
        if root is not None:
            if not p.is_absolute():
                p = Path(root) / p
            try:
                rel = p.relative_to(root)
            except ValueError:
                raise CalibrationError(f"calibration image {p} is not inside the calibration folder {root}") from None
        line = rel.as_posix()
        if sizes:
            try:
                line += f"\t{p.stat().st_size}"
            except OSError as e:
                raise CalibrationError(f"cannot stat calibration image {p}: {e.strerror}") from None
        entries.append(line)
    h = hashlib.sha256()
    for line in sorted(entries):
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()
