"""TensorRT engines: build one from ONNX (:func:`build_engine`) and run it (:class:`TensorRTRunner`).

A small package, one job per module: :mod:`._lib` is the one module of edgeres that imports ``tensorrt`` (lazily)
and decides what the installed version offers (:class:`Features`); :mod:`.fingerprint` what an engine is bound
to; :mod:`.network` the ONNX TensorRT parses; :mod:`.config` and :mod:`.calibrators` the builder configuration;
:mod:`.builder` the build; :mod:`.inspection` what the engine holds; :mod:`.runner` the pycuda runtime.

::

    sidecar = build_engine(Path("m.int8.onnx"), out=Path("m.engine"), precision=Precision.INT8, card=card,
                           source_onnx_sha256=sha, profile=BatchProfile(1, 8, 32),
                           options=TensorRTOptions(workspace_mb=2048))
    with TensorRTRunner(Path("m.engine")) as runner:
        logits = runner.infer(batch)
        print(runner.last_stage_times)
"""
from __future__ import annotations

from edgeres.backends.options import HIGH_PRECISIONS, TensorRTOptions
from edgeres.backends.tensorrt._lib import Features, is_available, trt_version
from edgeres.backends.tensorrt.builder import build_engine
from edgeres.backends.tensorrt.fingerprint import check_fingerprint, l4t_release, machine_fingerprint, runtime_can_load
from edgeres.backends.tensorrt.network import qdq_builds_strongly_typed
from edgeres.backends.tensorrt.runner import TensorRTRunner

__all__ = ["Features", "HIGH_PRECISIONS", "TensorRTOptions", "TensorRTRunner", "build_engine", "check_fingerprint",
           "is_available", "l4t_release", "machine_fingerprint", "qdq_builds_strongly_typed", "runtime_can_load",
           "trt_version"]
