"""edgeres: ResNets from training to a fast, verified TensorRT engine, with ONNX Runtime on the CPU as the
embedded default.

The pipeline, one function per ``edgeres`` command (each loaded on first use, so ``import edgeres`` stays fast and
imports neither torch nor ONNX Runtime)::

    import edgeres

    edgeres.write_digits("data")                                  # a small real dataset
    edgeres.train("data", out="m.pt", arch="resnet20", epochs=2)  # -> TrainResult
    edgeres.export("m.pt", out="m.onnx")                          # -> ExportResult
    edgeres.calibrate("m.onnx")                                   # -> CalibrationResult (m.ranges.json)
    edgeres.quantize("m.onnx", "m.ranges.json", out="m.qdq.onnx")  # -> QuantizeResult
    built = edgeres.build("m.onnx", precision="int8")             # -> BuildResult
    with edgeres.open(built.artifact) as runner: ...              # -> a Runner
    edgeres.infer(built.artifact, "data/val")                     # -> InferResult
    edgeres.bench(built.artifact)                                 # -> BenchResult
    edgeres.check(built.artifact, baseline="b.json", data="data/val", update_baseline=True)  # -> CheckResult

Errors are :class:`EdgeresError` subclasses (imported eagerly: they are plain classes).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeres.errors import (
    BackendError,
    BackendUnavailable,
    DataError,
    EdgeresError,
    GateInputError,
    InputError,
    ModelError,
    ParityError,
    UsageError,
    WriteError,
)

from edgeres.version import __version__

# public name -> (module, attribute); resolved on first access (PEP 562)
_LAZY: dict[str, tuple[str, str]] = {
    # the pipeline
    "write_digits": ("edgeres.digits", "write_digits"),
    "load_batch": ("edgeres.data", "load_batch"),
    "train": ("edgeres.api", "train"),
    "export": ("edgeres.exporting", "export_onnx"),
    "calibrate": ("edgeres.api", "calibrate"),
    "quantize": ("edgeres.api", "quantize"),
    "build": ("edgeres.building", "build_artifact"),
    "open": ("edgeres.backends", "open"),
    "infer": ("edgeres.api", "infer"),
    "bench": ("edgeres.api", "bench"),
    "check": ("edgeres.checking", "check"),
    "sensitivity_report": ("edgeres.api", "sensitivity_report"),
    "compare": ("edgeres.api", "compare"),
    "environment_report": ("edgeres.api", "environment_report"),
    "export_triton": ("edgeres.serve.repository", "export_triton"),
    "serve_artifact": ("edgeres.api", "serve_artifact"),
    # what they take and return
    "TrainConfig": ("edgeres.training", "TrainConfig"),
    "TrainResult": ("edgeres.training", "TrainResult"),
    "ExportResult": ("edgeres.exporting", "ExportResult"),
    "Ranges": ("calibration", "Ranges"),
    "CalibrationResult": ("edgeres.api", "CalibrationResult"),
    "QuantizeResult": ("edgeres.api", "QuantizeResult"),
    "BatchProfile": ("edgeres.backends.base", "BatchProfile"),
    "Precision": ("edgeres.backends.base", "Precision"),
    "BackendName": ("edgeres.backends.base", "BackendName"),
    "BuildResult": ("edgeres.building", "BuildResult"),
    "Sidecar": ("edgeres.backends.base", "Sidecar"),
    "Runner": ("edgeres.backends.base", "Runner"),
    "InferResult": ("edgeres.inference", "InferResult"),
    "BenchResult": ("edgeres.benchmarking", "BenchResult"),
    "ServerBenchResult": ("edgeres.serve.client", "ServerBenchResult"),
    "Tolerances": ("edgeres.checking", "Tolerances"),
    "CheckResult": ("edgeres.checking", "CheckResult"),
    "Verdict": ("edgeres.checking", "Verdict"),
    "TensorRTOptions": ("edgeres.backends.options", "TensorRTOptions"),
    "Int8Options": ("edgeres.building", "Int8Options"),
    "LatencyPlan": ("edgeres.latency_gate", "LatencyPlan"),
    "SensitivityReport": ("edgeres.sensitivity", "SensitivityReport"),
}

__all__ = [
    "__version__", *_LAZY,
    "BackendError", "BackendUnavailable", "DataError", "EdgeresError", "GateInputError", "InputError", "ModelError",
    "ParityError", "UsageError", "WriteError",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'edgeres' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # what static checkers and IDEs see; at run time __getattr__ resolves these
    from calibration import Ranges
    from edgeres.api import (CalibrationResult, QuantizeResult, bench, calibrate, compare, environment_report,
                             infer, quantize, sensitivity_report, serve_artifact, train)
    from edgeres.backends import open
    from edgeres.backends.base import BackendName, BatchProfile, Precision, Runner, Sidecar
    from edgeres.benchmarking import BenchResult
    from edgeres.building import BuildResult, Int8Options
    from edgeres.building import build_artifact as build
    from edgeres.checking import CheckResult, Tolerances, Verdict, check
    from edgeres.data import load_batch
    from edgeres.digits import write_digits
    from edgeres.exporting import ExportResult
    from edgeres.exporting import export_onnx as export
    from edgeres.backends.options import TensorRTOptions
    from edgeres.inference import InferResult
    from edgeres.latency_gate import LatencyPlan
    from edgeres.sensitivity import SensitivityReport
    from edgeres.serve.client import ServerBenchResult
    from edgeres.serve.repository import export_triton
    from edgeres.training import TrainConfig, TrainResult
