"""The one error family of edgeres.

Every error a user can cause is an :class:`EdgeresError` whose message says what failed, the offending value
(file, option, tensor) and what to try. ``cli.py`` prints it on one line and exits non-zero, with no traceback
unless ``--debug``.
"""
from __future__ import annotations


class EdgeresError(Exception):
    """Base of every error edgeres raises on purpose."""

    exit_code = 1


class InputError(EdgeresError):
    """Bad user input: a missing folder, an unreadable image, a wrong option value, a mismatched file."""


class UsageError(InputError):
    """Options that contradict each other or have the wrong form (exit status 2, as for a command-line usage
    error): an artifact and a server both, a plot not ending in .png, a folder where a file belongs."""

    exit_code = 2


class DataError(InputError):
    """An image or dataset that cannot be used (empty class folder, corrupt image, decompression bomb)."""


class ModelError(EdgeresError):
    """A model, checkpoint or ONNX file that is not what edgeres expects."""


class ParityError(EdgeresError):
    """Two executions of the same model disagree beyond tolerance (export or build verification)."""


class BackendError(EdgeresError):
    """A backend cannot build or run an artifact."""


class BackendUnavailable(BackendError):
    """A backend's runtime (TensorRT, pycuda, a CUDA device) is not present on this machine."""


class WriteError(EdgeresError):
    """An output cannot be written: a folder that is not writable, a full disk, a value JSON cannot hold."""


class GateInputError(InputError):
    """A usage or input error of the gate: exit status 2, apart from regressions (1) and inconclusive (3)."""

    exit_code = 2
