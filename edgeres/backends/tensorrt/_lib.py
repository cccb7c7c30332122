"""The one module of edgeres that imports ``tensorrt``: lazily, with what the installed version offers.

Version differences (8.5/8.6, 10.x, 11.x) are decided once, by feature detection, in :class:`Features`; the rest
of the package asks it. Only the tensor-name API (8.5+) and ``execute_async_v3`` are used.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from edgeres.backends import cuda as cu
from edgeres.errors import BackendError, BackendUnavailable

log = logging.getLogger(__name__)


def _trt() -> ModuleType:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(f"TensorRT's Python bindings cannot be imported ({exc}); install them with "
                                 f"pip install 'edgeres[tensorrt]' (on a Jetson they come with JetPack)") from exc
    return tensorrt


def is_available() -> tuple[bool, str]:
    """Whether TensorRT can build and run engines here, and why (never raises).

    A CUDA device is looked for before any TensorRT object exists: without one, TensorRT's runtime can hand back
    an object that crashes the process on first use.
    """
    try:
        count, why = cu.device_count()
        if count == 0:
            return False, why
        info = cu.device_info(0)
        trt = _trt()
        features = Features.detect(trt)
    except (BackendUnavailable, BackendError) as exc:
        return False, str(exc)
    return True, f"TensorRT {trt.__version__} ({features.era}) on {info.name} (sm {info.compute_capability})"


def trt_version() -> str:
    """The installed TensorRT's version, e.g. ``"10.13.3.9"`` (numeric part only: wheels may add ``.post1``)."""
    return _numeric_version(_trt().__version__)


def _numeric_version(text: object) -> str:
    m = re.match(r"\d+(\.\d+)*", str(text))
    return m.group(0) if m else str(text)


@dataclass(frozen=True)
class Features:
    """What the installed TensorRT offers; the one place that knows about versions."""

    major: int
    explicit_batch: Any  # NetworkDefinitionCreationFlag.EXPLICIT_BATCH to set (8.x), else None (10.x ignores it, 11.x lacks it)
    strongly_typed: Any  # NetworkDefinitionCreationFlag.STRONGLY_TYPED to set (10.x), else None
    always_strongly_typed: bool  # 11.x: precision flags are gone, types come from the ONNX
    implicit_int8: bool  # 8.5-10.x: calibrators and IBuilderConfig.int8_calibrator
    progress_monitor: bool  # 10.x+: IProgressMonitor
    named_parser_errors: bool  # 10.x+: ParserError.node_name / node_operator
    optimization_level: bool  # 8.6+: IBuilderConfig.builder_optimization_level (absent in 8.5, JetPack 5.1)

    @property
    def era(self) -> str:
        return "8.x" if self.major < 10 else f"{self.major}.x"

    @classmethod
    def detect(cls, trt: ModuleType) -> Features:
        if not hasattr(trt.ICudaEngine, "num_io_tensors"):  # < 8.5: binding-index API only
            raise BackendUnavailable(f"TensorRT {trt.__version__} is too old: edgeres needs 8.5 or newer")
        flags = trt.NetworkDefinitionCreationFlag
        precision_flags = hasattr(trt.BuilderFlag, "FP16")  # 8.5-10.x; removed in 11.x
        strongly = getattr(flags, "STRONGLY_TYPED", None)  # 10.x and 11.x
        return cls(
            major=int(str(trt.__version__).split(".")[0]),
            # 8.x: required for ONNX; 10.x: present but ignored (deprecated); 11.x: removed
            explicit_batch=getattr(flags, "EXPLICIT_BATCH", None) if strongly is None else None,
            strongly_typed=strongly if precision_flags else None,
            always_strongly_typed=not precision_flags,
            implicit_int8=hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(trt.IBuilderConfig, "int8_calibrator"),
            progress_monitor=hasattr(trt, "IProgressMonitor") and hasattr(trt.IBuilderConfig, "progress_monitor"),
            named_parser_errors=hasattr(trt.ParserError, "node_name"),
            optimization_level=hasattr(trt.IBuilderConfig, "builder_optimization_level"),
        )


class _Logger:
    """Forwards TensorRT's messages to :mod:`logging` and keeps the errors for exception messages."""

    def __init__(self, trt: ModuleType) -> None:
        sev = trt.ILogger.Severity
        self._levels = {sev.INTERNAL_ERROR: logging.ERROR, sev.ERROR: logging.ERROR, sev.WARNING: logging.WARNING,
                        sev.INFO: logging.DEBUG, sev.VERBOSE: logging.DEBUG}
        self.errors: list[str] = []

        class Logger(trt.ILogger):
            def __init__(inner) -> None:  # noqa: N805 - nested pybind11 subclass
                trt.ILogger.__init__(inner)

            def log(inner, severity: Any, msg: str) -> None:  # noqa: N805
                level = self._levels.get(severity, logging.INFO)
                if level >= logging.ERROR:
                    self.errors.append(msg)
                log.log(level, "TensorRT: %s", msg)

        self.trt_logger = Logger()

    def last_errors(self, default: str) -> str:
        return "; ".join(self.errors[-3:]) or default
