"""Calibration ranges as edgeres uses them: loaded for one model (refused for another), with the numpy-only
``calibration`` package's errors turned into edgeres's one-line input errors.

It sits below both its users, :mod:`edgeres.calibrating` (which writes ranges) and :mod:`edgeres.quantization` (which
applies them), so neither has to import the other.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from edgeres.errors import InputError


def load_ranges_for(onnx_path: str | os.PathLike[str], ranges: Any) -> Any:
    """The ranges (a ``calibration.Ranges`` or the path of its JSON file), checked against ``onnx_path``.

    Raises:
        InputError: the ranges file is missing or invalid, or was computed on another model (both sha256 named).
    """
    from calibration import Ranges
    from edgeres.io import sha256_file

    with calibration_errors():
        loaded = ranges if isinstance(ranges, Ranges) else Ranges.load(ranges)
        if not Path(onnx_path).is_file():
            raise InputError(f"model {onnx_path} not found")
        loaded.check_model(sha256_file(onnx_path))
    return loaded


@contextlib.contextmanager
def calibration_errors() -> Iterator[None]:
    """The numpy-only calibration package raises CalibrationError; edgeres users see an InputError."""
    from calibration import CalibrationError

    try:
        yield
    except CalibrationError as exc:
        raise InputError(str(exc)) from exc
