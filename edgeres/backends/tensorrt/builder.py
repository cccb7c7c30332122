"""Build a TensorRT engine from ONNX and write it with its sidecar: :func:`build_engine`."""
from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Sequence

import numpy as np

from edgeres.backends import cuda as cu
from edgeres.backends.base import BatchProfile, Precision, Sidecar, write_sidecar
from edgeres.backends.tensorrt._lib import Features, _Logger, _numeric_version, _trt, is_available
from edgeres.backends.tensorrt.config import _configure, _load_timing_cache
from edgeres.backends.tensorrt.fingerprint import machine_fingerprint
from edgeres.backends.tensorrt.inspection import _layer_summary
from edgeres.backends.tensorrt.network import _NetworkHolder, _network_source, _parse
from edgeres.card import ModelCard
from edgeres.errors import BackendError, BackendUnavailable, InputError
from edgeres.io import atomic_path, sha256_file, write_bytes_atomic

log = logging.getLogger(__name__)
_INT8_MODES = ("explicit", "implicit")
HIGH_PRECISIONS = ("fp16", "fp32")  # what INT8 engines run their unquantized layers in

def build_engine(onnx_path: Path, *, out: Path, precision: Precision, card: ModelCard, source_onnx_sha256: str,
                 profile: BatchProfile = BatchProfile(), int8_mode: str = "explicit",
                 calibration_cache: Path | None = None, workspace_mb: int | None = None,
                 timing_cache: Path | None = None, opt_level: int | None = None, dla_core: int | None = None,
                 version_compatible: bool = False, tf32: bool = True, high_precision: str = "fp16",
                 keep_float_layers: Sequence[str] = (), int8_provenance: dict[str, Any] | None = None,
                 progress: bool = True,
                 calibration_data: Iterable[np.ndarray] | None = None) -> Sidecar:
    """Build a TensorRT engine from ONNX and write it with its sidecar, atomically.

    Args:
        onnx_path: the FP32 ONNX, or for ``int8_mode="explicit"`` the Q/DQ ONNX from :mod:`edgeres.quantization`.
        out: the engine file to write (its sidecar goes to ``<out>.json``).
        precision: fp32; fp16 (a precision flag on 8.x/10.x, an FP16-typed ONNX on 11.x); int8.
        card: the model card the sidecar carries.
        source_onnx_sha256: hash of the FP32 ONNX the artifact descends from.
        profile: batch sizes (min/opt/max) of the optimization profile.
        int8_mode: "explicit" (Q/DQ ONNX, every version) or "implicit" (calibration cache; 8.5-10.x only).
        calibration_cache: the cache written by ``calibration.trt_cache.write`` (implicit mode); with
            ``calibration_data``, where TensorRT's own cache is written after calibrating.
        workspace_mb: builder workspace limit; default: TensorRT's, or half the available memory on a Jetson.
        timing_cache: a timing cache file, read when present and written back after the build.
        opt_level: builder optimization level (0-5; TensorRT's default 3).
        dla_core: build for this DLA core (Jetson AGX Orin: 0 or 1), GPU fallback for unsupported layers.
        version_compatible: build an engine later TensorRT versions can run (see :func:`runtime_can_load`).
        high_precision: int8 only: the precision of the layers left unquantized, "fp16" (NVIDIA's quantizer's
            default) or "fp32". 8.x/10.x weakly typed: the FP16 builder flag; strongly typed (Q/DQ on 10.x, all of
            11.x): a Q/DQ ONNX whose float part is FP16 (:func:`edgeres.quantization.convert_fp16`).
        keep_float_layers: int8: layers (ONNX node names) the Q/DQ ONNX leaves without Q/DQ. Strongly typed
            networks keep them in float by their types; weakly typed ones (8.x, implicit INT8 on 10.x) get a
            precision constraint (``ILayer.precision`` + ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``).
        int8_provenance: int8 only: what to record about the calibration in the sidecar's ``int8`` section.
        tf32: let FP32 layers use TF32 tensor cores (Ampere and newer; TensorRT's default); False clears
            ``BuilderFlag.TF32`` for strict FP32.
        progress: show build progress on stderr.
        calibration_data: implicit mode only: calibrate on the device instead of reading a cache, from these
            preprocessed float32 batches (N, *input shape). They are re-cut into batches of the first one's size,
            the calibration profile is pinned to that size (TensorRT calibrates at its opt shape), and a short last
            batch is completed with images from its start; fed through pycuda.

    Returns:
        The sidecar written beside the engine.

    Raises:
        BackendUnavailable: no TensorRT, pycuda or CUDA device.
        InputError: an option this TensorRT or GPU cannot honour (implicit INT8 on 11.x, DLA without DLA cores).
        ModelError: the ONNX cannot be parsed (each parser error listed) or is not the form the precision needs.
        BackendError: TensorRT failed to build (its errors quoted).
    """
    precision = Precision(precision)
    onnx_path, out = Path(onnx_path), Path(out)
    if not onnx_path.is_file():
        raise InputError(f"ONNX file {onnx_path} not found; export one with `edgeres export`")
    if int8_mode not in _INT8_MODES:
        raise InputError(f"--int8-mode must be one of {', '.join(_INT8_MODES)}, got {int8_mode!r}")
    if high_precision not in HIGH_PRECISIONS:
        raise InputError(f"--high-precision must be one of {', '.join(HIGH_PRECISIONS)}, got {high_precision!r}")
    ok, why = is_available()
    if not ok:
        raise BackendUnavailable(f"cannot build a TensorRT engine here: {why}; use --backend onnxruntime")
    trt = _trt()
    feat = Features.detect(trt)
    fingerprint = machine_fingerprint(trt)
    on_device = calibration_data is not None and precision is Precision.INT8 and int8_mode == "implicit"
    # One context for every TensorRT object of the build and the calibration buffers: the device's primary
    # context, which TensorRT would fall back to anyway; everything made in it dies inside closing().
    ctx = cu.CudaContext(0)
    with ctx.closing():
        return _build(trt, feat, fingerprint, onnx_path, out=out, precision=precision, card=card,
                      source_onnx_sha256=source_onnx_sha256, profile=profile, int8_mode=int8_mode,
                      calibration_cache=calibration_cache, workspace_mb=workspace_mb, timing_cache=timing_cache,
                      opt_level=opt_level, dla_core=dla_core, version_compatible=version_compatible, tf32=tf32,
                      high_precision=high_precision, keep_float_layers=tuple(keep_float_layers),
                      int8_provenance=int8_provenance, progress=progress,
                      calibration_data=calibration_data if on_device else None, ctx=ctx)


def _build(trt: ModuleType, feat: Features, fingerprint: dict[str, Any], onnx_path: Path, *, out: Path,
           precision: Precision, card: ModelCard, source_onnx_sha256: str, profile: BatchProfile, int8_mode: str,
           calibration_cache: Path | None, workspace_mb: int | None, timing_cache: Path | None,
           opt_level: int | None, dla_core: int | None, version_compatible: bool, tf32: bool,
           high_precision: str, keep_float_layers: tuple[str, ...], int8_provenance: dict[str, Any] | None,
           progress: bool,
           calibration_data: Iterable[np.ndarray] | None, ctx: cu.CudaContext) -> Sidecar:
    with tempfile.TemporaryDirectory(prefix="edgeres-trt-") as tmp:
        src, qdq = _network_source(onnx_path, precision, int8_mode, feat, Path(tmp), high_precision=high_precision)
        logger = _Logger(trt)
        builder = trt.Builder(logger.trt_logger)
        network = _parse(trt, builder, src, feat, logger, qdq=qdq)
        config = builder.create_builder_config()
        flags = _configure(trt, builder, network, config, feat, precision=precision, int8_mode=int8_mode,
                           calibration_cache=calibration_cache, profile=profile, workspace_mb=workspace_mb,
                           opt_level=opt_level, dla_core=dla_core, version_compatible=version_compatible,
                           tf32=tf32, high_precision=high_precision, keep_float_layers=keep_float_layers,
                           integrated=_is_integrated(),
                           calibration_data=calibration_data, ctx=ctx)
        cache = _load_timing_cache(config, timing_cache)
        device_calibration = flags["device_calibration"]
        try:
            serialized = _run_build(trt, builder, network, config, feat, logger, progress=progress, name=out.name)
        finally:
            if device_calibration is not None:
                device_calibration.free()
        if device_calibration is not None:
            device_calibration.save(calibration_cache)
        engine = bytes(serialized)
        if cache is not None and timing_cache is not None:
            write_bytes_atomic(timing_cache, bytes(cache.serialize()))
        layers = _layer_summary(trt, serialized, logger, version_compatible=version_compatible)
        built_from = sha256_file(src)
    fingerprint.update(flags=flags["builder"], network_flags=flags["network"], profile=_profile_dict(profile),
                       version_compatible=version_compatible, dla_core=dla_core, tf32=flags["tf32"],
                       sources={"onnx_sha256": source_onnx_sha256, "network_onnx_sha256": built_from})
    int8: dict[str, Any] = {}
    if precision is Precision.INT8:
        int8 = {"mode": int8_mode, "strongly_typed": flags["strongly_typed"], "high_precision": high_precision,
                "float_layers": list(keep_float_layers)}
        calibrator = flags["calibrator"]
        if device_calibration is not None:
            int8.update(calibrated_on_device=True, calibration_batches=calibrator.batches,
                        calibration_batch_size=device_calibration.batch_size, cache_header=calibrator.header)
        if calibration_cache is not None and int8_mode == "implicit" and Path(calibration_cache).is_file():
            int8.update(cache=Path(calibration_cache).name, cache_sha256=sha256_file(calibration_cache),
                        cache_header=calibrator.header if calibrator else None)
    sidecar = Sidecar(
        backend="tensorrt", precision=precision.value, card=card, artifact_file=out.name,
        artifact_sha256=hashlib.sha256(engine).hexdigest(), source_onnx_sha256=source_onnx_sha256, backend_version=_numeric_version(trt.__version__),
        profile=_profile_dict(profile), int8=int8, fingerprint=fingerprint,
        options={"workspace_mb": workspace_mb, "timing_cache": str(timing_cache) if timing_cache else None,
                 "opt_level": opt_level, "dla_core": dla_core, "version_compatible": version_compatible,
                 "tf32": flags["tf32"], "dla_layers": flags["dla_layers"],
                 "int8_mode": int8_mode if precision is Precision.INT8 else None, "layer_precisions": layers},
    )
    sidecar.int8 = {**sidecar.int8, **(int8_provenance or {})} if precision is Precision.INT8 else sidecar.int8
    # engine and sidecar are one unit: the sidecar is written first and the engine renamed into place last, so no
    # interruption leaves an engine that nothing vouches for (a sidecar alone is harmless: open() needs the engine)
    with atomic_path(out) as tmp_engine:
        tmp_engine.write_bytes(engine)
        write_sidecar(out, sidecar)
    log.info("built %s (TensorRT %s, %s, batch %s, layers %s)", out, trt.__version__, precision.value, profile, layers)
    return sidecar


def _profile_dict(profile: BatchProfile) -> dict[str, int]:
    return {"min": profile.min, "opt": profile.opt, "max": profile.max}


def _is_integrated() -> bool:
    try:
        return cu.device_info(0).integrated
    except BackendUnavailable:
        return False


def _run_build(trt: ModuleType, builder: Any, net: _NetworkHolder, config: Any, feat: Features, logger: _Logger,
               *, progress: bool, name: str) -> Any:
    from edgeres.progress import Progress

    bar = Progress(None, f"build {name}", unit="step", quiet=not progress)
    monitor = None
    stop = threading.Event()
    if feat.progress_monitor:  # 10.x+: TensorRT reports its phases
        monitor = _progress_monitor(trt, bar)
        config.progress_monitor = monitor
    else:  # 8.x: a spinner while the build blocks
        threading.Thread(target=_spin, args=(bar, stop), daemon=True).start()
    try:
        serialized = builder.build_serialized_network(net.network, config)
    finally:
        stop.set()
        bar.close()
    if serialized is None:
        raise BackendError(f"TensorRT failed to build {name}: {logger.last_errors('no error message')}")
    return serialized


def _spin(bar: Any, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        bar.update(0)


def _progress_monitor(trt: ModuleType, bar: Any) -> Any:
    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            bar.update(0, phase=phase_name)

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar.update(1, phase=phase_name)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar.update(0)

    return Monitor()
