"""TensorRT's INT8 calibration cache, the plain-text file an implicit-INT8 build (TensorRT 8.5 to 10.x) reads.

Format::

    TRT-100300-EntropyCalibration2
    input: 3c010204
    (Unnamed Layer* 64) [Shuffle]_output: 3d8f5c29

The header names the TensorRT version as one number (8.x and older: major*1000 + minor*100 + patch, e.g.
8.6.1 -> 8601; 10.x and later: major*10000 + minor*100 + patch, e.g. 10.3 -> 100300) and the calibration
algorithm. TensorRT silently ignores a cache whose header does not match it, so the target version is the
caller's choice. Each following line is ``<tensor name>: <hex>``, the big-endian IEEE-754 float32 bits of the
**scale = amax / 127**. Tensor names may contain spaces, brackets and colons, so a line splits at its last
``": "``; TensorRT may write short hex (``0`` for a zero scale).
"""
from __future__ import annotations

import logging
import math
import os
import re
import struct
from enum import Enum
from typing import Mapping, NamedTuple

from calibration._atomic import read_text, write_text_atomic
from calibration.errors import CalibrationError
from calibration.ranges import Ranges

log = logging.getLogger(__name__)

MAX_LEVEL = 127  # scale = amax / 127 for symmetric INT8
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?$")
_HEADER_RE = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{1,8}$")
_OLD_SCHEME = range(7, 9)  # majors numbered major*1000 + minor*100 + patch (7.x, 8.x)
_NEW_SCHEME = range(10, 12)  # majors numbered major*10000 + minor*100 + patch (10.x, 11.x)


class Algorithm(str, Enum):
    """Calibration algorithm names as they appear in TensorRT cache headers."""

    ENTROPY2 = "EntropyCalibration2"
    ENTROPY = "EntropyCalibration"
    MINMAX = "MinMaxCalibration"
    LEGACY = "LegacyCalibration"


def algorithm_for(method: str) -> Algorithm:
    """The calibrator TensorRT runs for an implicit-INT8 build from ranges of ``method``, i.e. the algorithm its
    cache header must name: MinMaxCalibration for ``minmax``, EntropyCalibration2 for everything else (TensorRT has
    no percentile or MSE calibrator; their ranges ride in an EntropyCalibration2 cache)."""
    return Algorithm.MINMAX if str(getattr(method, "value", method)) == "minmax" else Algorithm.ENTROPY2


class CacheHeader(NamedTuple):
    """A parsed cache header."""

    number: int  # as written, e.g. 8601
    version: tuple[int, int, int]  # (major, minor, patch)
    algorithm: str


def version_number(trt_version: str) -> int:
    """The header number of a TensorRT version: "8.6" -> 8600, "8.6.1" -> 8601, "10.3" -> 100300.

    A fourth component (the build, as in "10.13.3.9") is ignored.

    Raises:
        CalibrationError: malformed, or a major version whose numbering is not known (7-8 and 10-11 are).
    """
    m = _VERSION_RE.match(str(trt_version).strip())
    if not m:
        raise CalibrationError(
            f"TensorRT version {trt_version!r} is not of the form MAJOR.MINOR[.PATCH], e.g. 8.6, 8.6.1 or 10.3"
        )
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    if major in _OLD_SCHEME:
        if minor > 9 or patch > 99:
            raise CalibrationError(
                f"TensorRT version {trt_version!r} has minor > 9 or patch > 99, which 8.x numbering cannot hold"
            )
        number = major * 1000 + minor * 100 + patch
    elif major in _NEW_SCHEME:
        if minor > 99 or patch > 99:
            raise CalibrationError(
                f"TensorRT version {trt_version!r} has minor or patch > 99, which 10.x numbering cannot hold"
            )
        number = major * 10000 + minor * 100 + patch
    else:
        raise CalibrationError(
            f"TensorRT version {trt_version!r}: major version {major} is not known to this writer "
            f"(known: {_OLD_SCHEME.start}-{_OLD_SCHEME.stop - 1}, {_NEW_SCHEME.start}-{_NEW_SCHEME.stop - 1})"
        )
    if major >= 11:
        log.warning(
            "TensorRT %s has no implicit INT8 calibration; it reads no calibration cache (use the Q/DQ ONNX)",
            trt_version,
        )
    return number


def _split_number(number: int) -> tuple[int, int, int]:
    if number >= 100000:  # 10.x and later
        return number // 10000, number // 100 % 100, number % 100
    return number // 1000, number // 100 % 10, number % 100


def parse_header(header: str) -> CacheHeader:
    """Parse ``TRT-<number>-<Algorithm>``.

    Raises:
        CalibrationError: not a TensorRT calibration cache header.
    """
    m = _HEADER_RE.match(header.strip())
    if not m:
        raise CalibrationError(
            f"{header.strip()!r} is not a TensorRT calibration cache header "
            "(expected e.g. TRT-8601-EntropyCalibration2)"
        )
    number = int(m[1])
    return CacheHeader(number, _split_number(number), m[2])


def parse_version(header: str) -> tuple[int, int, int]:
    """The TensorRT (major, minor, patch) a cache header names: "TRT-8601-..." -> (8, 6, 1)."""
    return parse_header(header).version


def format_header(trt_version: str, algorithm: Algorithm | str = Algorithm.ENTROPY2) -> str:
    """The header line (without newline) for a TensorRT version and algorithm."""
    try:
        algo = Algorithm(algorithm)
    except ValueError:
        valid = ", ".join(a.value for a in Algorithm)
        raise CalibrationError(
            f"unknown TensorRT calibration algorithm {algorithm!r}; choose one of: {valid}"
        ) from None
    return f"TRT-{version_number(trt_version)}-{algo.value}"


def scale_hex(scale: float) -> str:
    """8 hex digits: the big-endian float32 bits of ``scale``."""
    return struct.pack(">f", scale).hex()


def hex_scale(text: str) -> float:
    """The float32 whose big-endian bits the hex string (1 to 8 digits) holds."""
    return struct.unpack(">f", int(text, 16).to_bytes(4, "big"))[0]


def write(
    path: str | os.PathLike[str],
    ranges: Ranges | Mapping[str, float],
    *,
    trt_version: str = "10.3",
    algorithm: Algorithm | str = Algorithm.ENTROPY2,
) -> str:
    """Write a TensorRT calibration cache atomically from ranges (amax per tensor).

    Args:
        path: the cache file to write.
        ranges: a :class:`Ranges` or ``{tensor name: amax}``.
        trt_version: the TensorRT that will read it ("8.5.2", "8.6", "10.3", ...); its header must match.
        algorithm: the algorithm named in the header; TensorRT expects the one of the calibrator it runs.

    Returns:
        The header written, e.g. ``TRT-100300-EntropyCalibration2``.

    Raises:
        CalibrationError: bad version or algorithm, a tensor name with a line break, a negative or non-finite amax.
    """
    amax = ranges.amax if isinstance(ranges, Ranges) else dict(ranges)
    header = format_header(trt_version, algorithm)
    lines = [header]
    for name, value in amax.items():
        if "\n" in name or "\r" in name or not name.strip():
            raise CalibrationError(
                f"tensor name {name!r} cannot be written to a TensorRT cache (empty or has a line break)"
            )
        value = float(value)
        if not (math.isfinite(value) and value >= 0):
            raise CalibrationError(f"amax of tensor {name!r} is {value}; it must be a finite number >= 0")
        lines.append(f"{name}: {scale_hex(value / MAX_LEVEL)}")
    write_text_atomic(path, "\n".join(lines) + "\n")
    log.info("wrote %s (%d tensors, header %s)", path, len(amax), header)
    return header


def read(path: str | os.PathLike[str]) -> tuple[str, dict[str, float]]:
    """Read a TensorRT calibration cache (ours or TensorRT's own).

    Returns:
        ``(header, {tensor name: scale})``; amax = scale * 127.

    Raises:
        CalibrationError: missing file, bad header, or a corrupt line (named by its line number).
    """
    text = read_text(path, what="calibration cache")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise CalibrationError(f"calibration cache {path} is empty or has no header on line 1")
    header = lines[0].strip()
    try:
        parse_header(header)
    except CalibrationError as e:
        raise CalibrationError(f"calibration cache {path}, line 1: {e}") from None
    scales: dict[str, float] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, digits = line.rstrip().rpartition(": ")
        digits = digits.strip()
        if not sep or not name or not _HEX_RE.match(digits):
            raise CalibrationError(
                f"calibration cache {path}, line {lineno}: {line!r} is not '<tensor name>: <hex scale>'; "
                "the file is corrupt, regenerate it"
            )
        scale = hex_scale(digits)
        if not (math.isfinite(scale) and scale >= 0):
            raise CalibrationError(
                f"calibration cache {path}, line {lineno}: scale of {name!r} is {scale}, not a finite number >= 0"
            )
        if name in scales:
            raise CalibrationError(f"calibration cache {path}, line {lineno}: tensor {name!r} appears twice")
        scales[name] = scale
    return header, scales


def read_amax(path: str | os.PathLike[str]) -> dict[str, float]:
    """``{tensor name: amax}`` (scale * 127) from a calibration cache."""
    return {name: scale * MAX_LEVEL for name, scale in read(path)[1].items()}
