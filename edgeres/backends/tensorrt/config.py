"""The builder configuration: profile, precision flags and constraints, workspace, optimisation level, DLA,
version compatibility, TF32, timing cache."""
from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import numpy as np

from edgeres.backends import cuda as cu
from edgeres.backends.base import BatchProfile, Precision
from edgeres.backends.options import TensorRTOptions
from edgeres.backends.tensorrt._lib import Features
from edgeres.backends.tensorrt.calibrators import _attach_calibrator, _DeviceCalibration
from edgeres.backends.tensorrt.network import _NetworkHolder
from edgeres.errors import BackendError, InputError, ModelError

log = logging.getLogger(__name__)
JETSON_WORKSPACE_SHARE = 0.5  # default workspace on Jetson: this share of available memory (shared with the CPU)

def _configure(trt: ModuleType, builder: Any, net: _NetworkHolder, config: Any, feat: Features, *,
               precision: Precision, options: TensorRTOptions, calibration_cache: Path | None, profile: BatchProfile,
               integrated: bool, calibration_data: Iterable[np.ndarray] | None, ctx: cu.CudaContext,
               keep_float_layers: tuple[str, ...] = ()) -> dict[str, Any]:
    network = net.network
    calibrator = device_calibration = None
    strongly = feat.always_strongly_typed or bool(feat.strongly_typed is not None and net.flags
                                                  & (1 << int(feat.strongly_typed)))
    _add_profile(builder, network, config, profile)
    if not strongly:  # 8.5-10.x weakly typed networks: precision comes from flags
        calibrator, device_calibration = _set_precision_flags(
            trt, builder, network, config, precision=precision, options=options, keep_float_layers=keep_float_layers,
            calibration_cache=calibration_cache, calibration_data=calibration_data, ctx=ctx)
    workspace_mb = options.workspace_mb
    if workspace_mb is None and integrated:
        workspace_mb = _jetson_workspace_mb()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if options.opt_level is not None:
        _set_opt_level(trt, config, feat, options.opt_level)
    dla_layers = (_use_dla(trt, builder, network, config, options.dla_core, precision, profile)
                  if options.dla_core is not None else None)
    if options.version_compatible:
        if not hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"):  # 8.6+
            raise InputError(f"--version-compatible needs TensorRT 8.6 or newer (installed: {trt.__version__})")
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)  # on by default: FP32 layers may run as TF32 on Ampere+
    if tf32_flag is not None and not options.tf32:
        config.clear_flag(tf32_flag)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for the engine inspector
    builder_flags = sorted(name for name, flag in trt.BuilderFlag.__members__.items() if config.get_flag(flag))
    network_flags = sorted(name for name, flag in trt.NetworkDefinitionCreationFlag.__members__.items()
                           if net.flags & (1 << int(flag)))
    # the caller keeps the calibrator alive through the build: TensorRT holds only a raw pointer to it
    return {"builder": builder_flags, "network": network_flags, "strongly_typed": strongly, "calibrator": calibrator,
            "device_calibration": device_calibration, "dla_layers": dla_layers,
            "tf32": bool(tf32_flag is not None and config.get_flag(tf32_flag))}


def _set_precision_flags(trt: ModuleType, builder: Any, network: Any, config: Any, *, precision: Precision,
                         options: TensorRTOptions, keep_float_layers: tuple[str, ...],
                         calibration_cache: Path | None, calibration_data: Iterable[np.ndarray] | None,
                         ctx: cu.CudaContext) -> tuple[Any, _DeviceCalibration | None]:
    """Weakly typed networks (8.5-10.x): the precision flags, float layers pinned, and for implicit INT8 the
    calibrator (from the cache, or calibrating on the device); returns the calibrator and the device calibration."""
    if precision is Precision.FP16:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision is not Precision.INT8:
        return None, None
    config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ on 8.x needs it too
    if options.high_precision == "fp16":  # layers without INT8 kernels/scales fall back to FP16, not FP32
        config.set_flag(trt.BuilderFlag.FP16)
    if keep_float_layers:
        _pin_float_layers(trt, network, config, keep_float_layers, options.high_precision)
    if options.int8_mode != "implicit":
        return None, None
    if calibration_data is None:
        return _attach_calibrator(trt, config, calibration_cache), None
    device_calibration = _DeviceCalibration(trt, ctx, calibration_data)
    device_calibration.pin_profile(builder, network, config)
    config.int8_calibrator = device_calibration.calibrator
    return device_calibration.calibrator, device_calibration


def _pin_float_layers(trt: ModuleType, network: Any, config: Any, names: tuple[str, ...], high_precision: str) -> None:
    """8.x / weakly typed 10.x: hold the layers an accuracy budget left in float there (the parser names each
    layer after its ONNX node), so the builder cannot pick INT8 kernels for them."""
    wanted = set(names)
    dtype = trt.DataType.HALF if high_precision == "fp16" else trt.DataType.FLOAT
    pinned = set()
    for i in range(network.num_layers):
        trt_layer = network.get_layer(i)
        if trt_layer.name in wanted:
            trt_layer.precision = dtype
            pinned.add(trt_layer.name)
    if wanted - pinned:
        log.warning("no TensorRT layer is named %s: those stay unconstrained", ", ".join(sorted(wanted - pinned)))
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


def _set_opt_level(trt: ModuleType, config: Any, feat: Features, opt_level: int) -> None:
    if not feat.optimization_level:  # 8.5.x (JetPack 5.1) has no builder optimization level
        raise InputError(f"--opt-level needs TensorRT 8.6 or newer (installed: {trt.__version__}, as on JetPack "
                         f"5.1); drop --opt-level")
    config.builder_optimization_level = int(opt_level)


def _add_profile(builder: Any, network: Any, config: Any, profile: BatchProfile) -> None:
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise ModelError(f"input {tensor.name!r} has dynamic dimensions {shape} besides the batch axis; export "
                             f"the model with a fixed image size")
        rest = shape[1:]
        if shape[0] >= 0 and not profile.min == profile.max == shape[0]:
            raise InputError(f"input {tensor.name!r} has a fixed batch of {shape[0]} but --batch asks for "
                             f"{profile}; export with a dynamic batch axis or use --batch {shape[0]}")
        opt_profile.set_shape(tensor.name, (profile.min, *rest), (profile.opt, *rest), (profile.max, *rest))
    if config.add_optimization_profile(opt_profile) < 0:
        raise BackendError(f"TensorRT rejected the optimization profile {profile}")


def _jetson_workspace_mb() -> int | None:
    """Half the memory available now: a Jetson's GPU shares it with the CPU."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return max(64, int(int(line.split()[1]) / 1024 * JETSON_WORKSPACE_SHARE))
    except (OSError, ValueError):
        pass
    return None


def _use_dla(trt: ModuleType, builder: Any, network: Any, config: Any, dla_core: int, precision: Precision,
             profile: BatchProfile) -> dict[str, int]:
    """Build for a DLA core with GPU fallback; returns how many layers the DLA takes and how many fall back."""
    cores = int(builder.num_DLA_cores)
    if not 0 <= dla_core < max(cores, 1) or cores == 0:
        raise InputError(f"--dla-core {dla_core}: this device has {cores} DLA core(s) (Jetson AGX Orin has 2, "
                         f"Orin Nano and Thor none); drop --dla-core")
    if precision is Precision.FP32:
        raise InputError("DLA runs FP16 or INT8 only; use --precision fp16 or int8 with --dla-core")
    if not profile.min == profile.opt == profile.max:
        # DLA runs static shapes only: with GPU fallback every layer would silently land on the GPU
        raise InputError(f"--dla-core needs a static batch (DLA runs min = opt = max only), got --batch {profile}; "
                         f"use --batch N, e.g. --batch {profile.opt}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(dla_core)
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
    trt_layers = [network.get_layer(i) for i in range(network.num_layers)]
    on_dla = sum(1 for trt_layer in trt_layers if config.can_run_on_DLA(trt_layer))
    log.info("DLA core %d takes %d of %d layers; %d fall back to the GPU", dla_core, on_dla, len(trt_layers),
             len(trt_layers) - on_dla)
    return {"dla": on_dla, "gpu": len(trt_layers) - on_dla}


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    if path is None:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)  # None when TensorRT cannot read the blob ("nullptr on failure")
    if cache is None or not config.set_timing_cache(cache, False):
        log.warning("timing cache %s is unreadable or does not match this TensorRT/GPU; starting a new one", path)
        cache = config.create_timing_cache(b"")
        if cache is None:
            raise BackendError(f"TensorRT could not create a timing cache for {path}; run without --timing-cache")
        config.set_timing_cache(cache, True)
    return cache
