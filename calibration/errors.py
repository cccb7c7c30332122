"""The one error type of the calibration package.

``edgeres`` wraps :class:`CalibrationError` into its own error family; this package must not import ``edgeres``.
Messages say what failed, the offending value or file, and what to try.
"""
from __future__ import annotations


class CalibrationError(Exception):
    """Bad calibration input or file: empty image set, corrupt cache line, ranges of another model, ..."""
