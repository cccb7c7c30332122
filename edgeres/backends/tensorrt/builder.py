"""Build a TensorRT engine from ONNX and write it with its sidecar: :func:`build_engine`."""
from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Sequence

import numpy as np

from edgeres.backends import cuda as cu
from edgeres.backends.base import BatchProfile, Precision, Sidecar, write_sidecar
from edgeres.backends.options import TensorRTOptions
from edgeres.backends.tensorrt._lib import Features, _Logger, _numeric_version, _trt, is_available
from edgeres.backends.tensorrt.config import _configure, _load_timing_cache
from edgeres.backends.tensorrt.fingerprint import machine_fingerprint
from edgeres.backends.tensorrt.inspection import _layer_summary
from edgeres.backends.tensorrt.network import _NetworkHolder, _network_source, _parse
from edgeres.card import ModelCard
from edgeres.errors import BackendError, BackendUnavailable, InputError
from edgeres.io import atomic_path, sha256_file, write_bytes_atomic

log = logging.getLogger(__name__)


def build_engine(onnx_path: Path, *, out: Path, precision: Precision, card: ModelCard, source_onnx_sha256: str,
                 profile: BatchProfile = BatchProfile(), options: TensorRTOptions = TensorRTOptions(),
                 calibration_cache: Path | None = None, keep_float_layers: Sequence[str] = (),
                 int8_provenance: dict[str, Any] | None = None, progress: bool = True,
                 calibration_data: Iterable[np.ndarray] | None = None) -> Sidecar:
    """Build a TensorRT engine from ONNX and write it with its sidecar, atomically.

    Args:
        onnx_path: the FP32 ONNX, or for ``options.int8_mode="explicit"`` the Q/DQ ONNX from
            :mod:`edgeres.quantization`.
        out: the engine file to write (its sidecar goes to ``<out>.json``).
        precision: fp32; fp16 (a precision flag on 8.x/10.x, an FP16-typed ONNX on 11.x); int8.
        card: the model card the sidecar carries.
        source_onnx_sha256: hash of the FP32 ONNX the artifact descends from.
        profile: batch sizes (min/opt/max) of the optimization profile.
        options: how TensorRT builds (:class:`~edgeres.backends.options.TensorRTOptions`): int8 mode ("explicit":
            Q/DQ ONNX, every version; "implicit": calibration cache, 8.5-10.x only), workspace (default: TensorRT's,
            or half the available memory on a Jetson), timing cache (read when present, written back after the
            build), optimization level, DLA core (GPU fallback for unsupported layers), version compatibility
            (see :func:`runtime_can_load`), TF32, and for int8 the precision of the layers left unquantized
            ("fp16", NVIDIA's quantizer's default, or "fp32": 8.x/10.x weakly typed, the FP16 builder flag; strongly
            typed, Q/DQ on 10.x and all of 11.x, a Q/DQ ONNX whose float part is FP16). They are recorded in the
            sidecar's ``options`` from ``options.to_dict()``.
        calibration_cache: the cache written by ``calibration.trt_cache.write`` (implicit mode); with
            ``calibration_data``, where TensorRT's own cache is written after calibrating.
        keep_float_layers: int8: layers (ONNX node names) the Q/DQ ONNX leaves without Q/DQ. Strongly typed
            networks keep them in float by their types; weakly typed ones (8.x, implicit INT8 on 10.x) get a
            precision constraint (``ILayer.precision`` + ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``).
        int8_provenance: int8 only: what to record about the calibration in the sidecar's ``int8`` section.
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
    ok, why = is_available()
    if not ok:
        raise BackendUnavailable(f"cannot build a TensorRT engine here: {why}; use --backend onnxruntime")
    on_device = calibration_data is not None and precision is Precision.INT8 and options.int8_mode == "implicit"
    job = _Job(onnx_path, out=out, precision=precision, card=card, source_onnx_sha256=source_onnx_sha256,
               profile=profile, options=options, calibration_cache=calibration_cache,
               keep_float_layers=tuple(keep_float_layers), int8_provenance=int8_provenance or {}, progress=progress,
               calibration_data=calibration_data if on_device else None)
    trt = _trt()
    feat = Features.detect(trt)
    fingerprint = machine_fingerprint(trt)
    # One context for every TensorRT object of the build and the calibration buffers: the device's primary
    # context, which TensorRT would fall back to anyway; everything made in it dies inside closing().
    ctx = cu.CudaContext(0)
    with ctx.closing():
        return _build(trt, feat, fingerprint, job, ctx)


@dataclass(frozen=True)
class _Job:
    """One engine to build: :func:`build_engine`'s arguments, checked."""

    onnx_path: Path
    out: Path
    precision: Precision
    card: ModelCard
    source_onnx_sha256: str
    profile: BatchProfile
    options: TensorRTOptions
    calibration_cache: Path | None
    keep_float_layers: tuple[str, ...]
    int8_provenance: dict[str, Any]
    progress: bool
    calibration_data: Iterable[np.ndarray] | None  # implicit INT8 calibrated on the device


def _build(trt: ModuleType, feat: Features, fingerprint: dict[str, Any], job: _Job, ctx: cu.CudaContext) -> Sidecar:
    """Parse, configure, build and inspect in a scratch folder, then write engine and sidecar as one unit."""
    options = job.options
    with tempfile.TemporaryDirectory(prefix="edgeres-trt-") as tmp:
        src, qdq = _network_source(job.onnx_path, job.precision, options.int8_mode, feat, Path(tmp),
                                   high_precision=options.high_precision)
        logger = _Logger(trt)
        builder = trt.Builder(logger.trt_logger)
        network = _parse(trt, builder, src, feat, logger, qdq=qdq)
        config = builder.create_builder_config()
        flags = _configure(trt, builder, network, config, feat, precision=job.precision, options=options,
                           calibration_cache=job.calibration_cache, profile=job.profile,
                           keep_float_layers=job.keep_float_layers, integrated=_is_integrated(),
                           calibration_data=job.calibration_data, ctx=ctx)
        serialized = _serialize(trt, builder, network, config, feat, logger, job, flags["device_calibration"])
        engine = bytes(serialized)
        layers = _layer_summary(trt, serialized, logger, version_compatible=options.version_compatible)
        built_from = sha256_file(src)
    fingerprint.update(flags=flags["builder"], network_flags=flags["network"], profile=_profile_dict(job.profile),
                       version_compatible=options.version_compatible, dla_core=options.dla_core, tf32=flags["tf32"],
                       sources={"onnx_sha256": job.source_onnx_sha256, "network_onnx_sha256": built_from})
    sidecar = Sidecar(
        backend="tensorrt", precision=job.precision.value, card=job.card, artifact_file=job.out.name,
        artifact_sha256=hashlib.sha256(engine).hexdigest(), source_onnx_sha256=job.source_onnx_sha256,
        backend_version=_numeric_version(trt.__version__), profile=_profile_dict(job.profile),
        int8=_int8_section(job, flags), fingerprint=fingerprint, options=_recorded_options(job, flags, layers),
    )
    # engine and sidecar are one unit: the sidecar is written first and the engine renamed into place last, so no
    # interruption leaves an engine that nothing vouches for (a sidecar alone is harmless: open() needs the engine)
    with atomic_path(job.out) as tmp_engine:
        tmp_engine.write_bytes(engine)
        write_sidecar(job.out, sidecar)
    log.info("built %s (TensorRT %s, %s, batch %s, layers %s)", job.out, trt.__version__, job.precision.value,
             job.profile, layers)
    return sidecar


def _serialize(trt: ModuleType, builder: Any, network: _NetworkHolder, config: Any, feat: Features,
               logger: _Logger, job: _Job, device_calibration: Any) -> Any:
    """Build the serialized engine with the timing cache read before and written back after, and the device
    calibration's buffers freed (and its cache saved) once TensorRT is done with them."""
    timing_cache = job.options.timing_cache
    cache = _load_timing_cache(config, timing_cache)
    try:
        serialized = _run_build(trt, builder, network, config, feat, logger, progress=job.progress,
                                name=job.out.name)
    finally:
        if device_calibration is not None:
            device_calibration.free()
    if device_calibration is not None:
        device_calibration.save(job.calibration_cache)
    if cache is not None and timing_cache is not None:
        write_bytes_atomic(timing_cache, bytes(cache.serialize()))
    return serialized


def _int8_section(job: _Job, flags: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's ``int8`` section: how the INT8 engine was made, then the caller's calibration provenance."""
    if job.precision is not Precision.INT8:
        return {}
    options, calibrator, device_calibration = job.options, flags["calibrator"], flags["device_calibration"]
    int8: dict[str, Any] = {"mode": options.int8_mode, "strongly_typed": flags["strongly_typed"],
                            "high_precision": options.high_precision, "float_layers": list(job.keep_float_layers)}
    if device_calibration is not None:
        int8.update(calibrated_on_device=True, calibration_batches=calibrator.batches,
                    calibration_batch_size=device_calibration.batch_size, cache_header=calibrator.header)
    cache = job.calibration_cache
    if cache is not None and options.int8_mode == "implicit" and Path(cache).is_file():
        int8.update(cache=Path(cache).name, cache_sha256=sha256_file(cache),
                    cache_header=calibrator.header if calibrator else None)
    return {**int8, **job.int8_provenance}


def _recorded_options(job: _Job, flags: dict[str, Any], layers: dict[str, int]) -> dict[str, Any]:
    """The sidecar's ``options``: the options as given (``TensorRTOptions.to_dict``; the int8-only ones null on
    float engines), with what the build made of them: TF32 as set, the DLA's share, layers by precision."""
    recorded = job.options.to_dict()
    if job.precision is not Precision.INT8:
        recorded.update(int8_mode=None, high_precision=None)
    return {**recorded, "tf32": flags["tf32"], "dla_layers": flags["dla_layers"], "layer_precisions": layers}


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
