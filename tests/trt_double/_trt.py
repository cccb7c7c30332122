"""Behaviour of the fake ``tensorrt``: just enough of TensorRT's build and run flow, with its rules.

These classes are never exposed directly: ``_surface.build_module`` copies only the members the recorded API of a
version has, wraps each call in a signature check, and fills the rest with stubs. What the behaviour enforces:
- no CUDA device: ``Builder``/``Runtime`` raise ``TypeError: pybind11::init(): factory function returned nullptr``;
- the ONNX parser needs an explicit-batch network on 8.x, validates the model with ``onnx.checker`` and reports
  unsupported ops (non-default domains) as parser errors with node index/name/operator;
- ``build_serialized_network`` returns None (and logs an error) for: dynamic inputs without a valid profile,
  precision flags on a strongly typed network, Q/DQ on 8.x without INT8, a calibrator whose ``__init__`` was not
  called, calibration with neither a matching cache nor batches, a progress monitor that cancels;
- a calibration cache is used only when its header is ``TRT-<this version>-<algorithm>``, as TensorRT does;
- the serialized "engine" carries the ONNX bytes, the chosen flags, profile and INT8 scales, and the TensorRT
  version: ``deserialize_cuda_engine`` of another version's engine returns None (the real version-tag check);
- ``execute_async_v3`` queues ONNX Runtime on the stream, reading/writing the fake device memory the tensor
  addresses point to; the stream must belong to the CUDA context the engine was created in.

Rules modelled after real-hardware defects (each cites its source):
- implicit INT8 calibration reads one batch at the *opt* shape of the calibration profile (profile 0 when none is
  set), whatever ``get_batch_size`` says (NvInfer.h ``IBuilderConfig::setCalibrationProfile``: "MIN and MAX values
  will be overwritten by kOPT"; ``IInt8Calibrator::getBatchSize`` is deprecated/ignored from 10.0): a calibrator
  buffer smaller than that is read past its end, which the double turns into a failed build;
- a version-compatible engine deserializes only with ``Runtime.engine_host_code_allowed = True`` (TensorRT
  developer guide, "Version Compatibility"; Polygraphy's ``EngineFromBytes`` sets it), and only on a runtime at
  least as new as the builder: same major, or 8.6+ -> 10.x, 10.x -> 11.x (TensorRT 11.4 support matrix);
- DLA runs only static shapes: with a profile whose min/opt/max differ every layer falls back to the GPU (or the
  build fails without ``GPU_FALLBACK``); the DLA core an engine runs on is the runtime's ``DLA_core``, not the
  builder's (``IRuntime::setDLACore``);
- the ONNX parser rejects Q/DQ with a UINT8 or non-zero zero point (onnx-tensorrt ``onnxOpImporters.cpp``,
  QuantDequantLinearHelper: "TensorRT only supports symmetric quantization. The zero point ... must be all zeros");
- TF32 is on by default for FP32 layers (NvInfer.h ``BuilderFlag::kTF32``) until the flag is cleared;
- ``create_timing_cache`` returns None for a blob it cannot read (``IBuilderConfig::createTimingCache``: "nullptr
  on failure");
- TensorRT 11's engine inspector writes "I/O Tensors" instead of "Bindings" and splits a layer output's
  "Format/Datatype" into "Format" and "DataType" (TensorRT 11 migration guide, IEngineInspector JSON output);
- Builder and Runtime bind to the CUDA context current when they are made, else the device's primary context
  (CUDA Runtime API guide, "Primary Contexts": the runtime uses the primary context when none is current), and
  ``execute_async_v3`` launches in that context, so a stream of another context is refused (CUDA driver API:
  a stream belongs to the context it was created in; using it elsewhere is CUDA_ERROR_INVALID_HANDLE).
"""
from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

MAGIC = b"FAKETRT1"
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
PRECISION_FLAGS = ("FP16", "INT8", "BF16", "FP8", "INT4", "FP4")
ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"}
TRT_TO_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
             "BOOL": np.bool_, "UINT8": np.uint8}
CALIB_NAMES = {"ENTROPY_CALIBRATION_2": "EntropyCalibration2", "MINMAX_CALIBRATION": "MinMaxCalibration",
               "ENTROPY_CALIBRATION": "EntropyCalibration", "LEGACY_CALIBRATION": "LegacyCalibration"}


def version_int(version: str) -> int:
    """TensorRT's calibration cache header number: 8.x major*1000+minor*100+patch, 10.x+ major*10000+..."""
    major, minor, patch = (int(x) for x in version.split(".")[:3])
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def hostmem(mod: Any, data: bytes) -> Any:
    """A fake ``IHostMemory`` (which has no public constructor) holding ``data``."""
    return bytes.__new__(mod.IHostMemory, data)


def dims(mod: Any, shape: Any) -> Any:
    return tuple.__new__(mod.Dims, tuple(int(d) for d in shape))


class _Obj:
    """Base of behaviour classes: ``_d_new`` makes an instance without the checked constructor."""

    @classmethod
    def _d_new(cls, **state: Any) -> Any:
        obj = object.__new__(cls)
        for k, v in state.items():
            object.__setattr__(obj, f"_d_{k}", v)
        return obj

    def _d_log(self, logger: Any, severity: str, msg: str) -> None:
        sev = getattr(self._d_mod.ILogger.Severity, severity)
        if logger is not None:
            logger.log(sev, msg)
        self._d_mod._d_messages.append((severity, msg))

    def _d_version_major(self) -> int:
        return int(self._d_mod.__version__.split(".")[0])


def _check_gpu(obj: Any) -> None:
    if not obj._d_mod._d_gpu.devices:
        raise TypeError("pybind11::init(): factory function returned nullptr")


class ILogger(_Obj):
    def __init__(self) -> None:
        object.__setattr__(self, "_d_init", True)

    def log(self, severity: Any, msg: str) -> None:
        raise RuntimeError('Tried to call pure virtual function "ILogger::log"')


class Logger(ILogger):
    def __init__(self, min_severity: Any = None) -> None:
        object.__setattr__(self, "_d_min", min_severity if min_severity is not None
                           else self._d_mod.ILogger.Severity.WARNING)

    def log(self, severity: Any, msg: str) -> None:
        self._d_mod._d_logged.append((severity.name, msg))

    @property
    def min_severity(self) -> Any:
        return self._d_min

    @min_severity.setter
    def min_severity(self, value: Any) -> None:
        object.__setattr__(self, "_d_min", value)


class Dims(tuple):
    """``tensorrt.Dims``: a tuple in the double (the real one converts from and to sequences)."""

    def __init__(self, *args: Any) -> None:  # tuple.__new__ did the work
        pass


class IHostMemory(bytes):
    """Serialized engine / timing cache: bytes in the double (the real one supports the buffer protocol)."""

    @property
    def nbytes(self) -> int:
        return len(self)


class ITensor(_Obj):
    @property
    def name(self) -> str:
        return self._d_name

    @property
    def shape(self) -> Any:
        return dims(self._d_mod, self._d_shape)

    @property
    def dtype(self) -> Any:
        return getattr(self._d_mod.DataType, self._d_dtype)

    @property
    def is_network_input(self) -> bool:
        return self._d_is_input


class INetworkDefinition(_Obj):
    @property
    def num_inputs(self) -> int:
        return len(self._d_inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._d_outputs)

    @property
    def num_layers(self) -> int:
        return len(self._d_nodes)

    def get_input(self, index: int) -> Any:
        return self._d_inputs[index]

    def get_output(self, index: int) -> Any:
        return self._d_outputs[index]

    @property
    def has_explicit_precision(self) -> bool:
        return False

    def get_flag(self, flag: Any) -> bool:
        return bool(self._d_flags & (1 << int(flag)))

    def get_layer(self, index: int) -> Any:
        name, op = self._d_nodes[index]
        return self._d_mod.ILayer._d_new(name=name or f"node_{index}", op=op, index=index, net=self)


# ONNX op -> TensorRT LayerType of the layer the parser makes for it
OP_TO_LAYER = {"Conv": "CONVOLUTION", "Relu": "ACTIVATION", "Add": "ELEMENTWISE", "Mul": "ELEMENTWISE",
               "GlobalAveragePool": "REDUCE", "MaxPool": "POOLING", "AveragePool": "POOLING",
               "Gemm": "MATRIX_MULTIPLY", "MatMul": "MATRIX_MULTIPLY", "Flatten": "SHUFFLE", "Reshape": "SHUFFLE",
               "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "BatchNormalization": "SCALE",
               "Softmax": "SOFTMAX", "Cast": "CAST", "Identity": "IDENTITY", "Constant": "CONSTANT",
               "Concat": "CONCATENATION", "Pad": "PADDING"}
# Layers the double's DLA cannot run (TensorRT developer guide, "DLA Supported Layers and Restrictions": no
# matrix multiply, reduce, shuffle or cast layers on DLA; they need GPU fallback)
DLA_UNSUPPORTED = {"MATRIX_MULTIPLY", "REDUCE", "SHUFFLE", "CAST", "IDENTITY", "CONSTANT"}


class ILayer(_Obj):
    @property
    def name(self) -> str:
        return self._d_name

    @property
    def type(self) -> Any:
        return getattr(self._d_mod.LayerType, OP_TO_LAYER.get(self._d_op, "IDENTITY"))

    @property
    def precision(self) -> Any:
        name = self._d_net.__dict__.get("_d_layer_precision", {}).get(self._d_name, "FLOAT")
        return getattr(self._d_mod.DataType, name)

    @precision.setter
    def precision(self, value: Any) -> None:
        if not isinstance(value, self._d_mod.DataType):
            raise TypeError("ILayer.precision: incompatible type (a tensorrt.DataType is needed)")
        self._d_net.__dict__.setdefault("_d_layer_precision", {})[self._d_name] = value.name

    @property
    def precision_is_set(self) -> bool:
        return self._d_name in self._d_net.__dict__.get("_d_layer_precision", {})


class ParserError(_Obj):
    def code(self) -> Any:
        return self._d_mod.ErrorCode.UNSUPPORTED_NODE

    def desc(self) -> str:
        return self._d_desc

    def node(self) -> int:
        return self._d_node

    def node_name(self) -> str:
        return self._d_node_name

    def node_operator(self) -> str:
        return self._d_op

    def file(self) -> str:
        return "ModelImporter.cpp"

    def func(self) -> str:
        return "parseGraph"

    def line(self) -> int:
        return 0

    def __str__(self) -> str:
        return f"In node {self._d_node} ({self._d_node_name}): {self._d_desc}"


class OnnxParser(_Obj):
    def __init__(self, network: Any, logger: Any) -> None:
        object.__setattr__(self, "_d_network", network)
        object.__setattr__(self, "_d_logger", logger)
        object.__setattr__(self, "_d_errors", [])

    @property
    def num_errors(self) -> int:
        return len(self._d_errors)

    def get_error(self, index: int) -> Any:
        return self._d_errors[index]

    def clear_errors(self) -> None:
        self._d_errors.clear()

    def parse_from_file(self, model: str) -> bool:
        with open(model, "rb") as f:
            return self.parse(f.read(), model)

    def parse(self, model: Any, path: str | None = None) -> bool:
        import onnx

        net = self._d_network
        err = self._d_mod.ParserError._d_new
        if self._d_version_major() < 10 and not net._d_flags & 1:
            self._d_errors.append(err(desc="Network must be created with the EXPLICIT_BATCH flag to parse ONNX",
                                      node=-1, node_name="", op=""))
            return False
        try:
            proto = onnx.load_from_string(bytes(model))
            onnx.checker.check_model(proto)
        except Exception as exc:  # noqa: BLE001 - the parser reports any decoding error as a parser error
            self._d_errors.append(err(desc=f"Failed to parse ONNX model: {exc}", node=-1, node_name="", op=""))
            return False
        for i, node in enumerate(proto.graph.node):
            if node.domain not in ("", "ai.onnx"):
                self._d_errors.append(err(desc=f"No importer registered for op: {node.op_type}", node=i,
                                          node_name=node.name, op=node.op_type))
        self._d_check_zero_points(proto)
        if self._d_errors:
            return False
        inits = {i.name for i in proto.graph.initializer}
        tensor = self._d_mod.ITensor._d_new

        def dims(vi: Any) -> tuple:
            return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)

        object.__setattr__(net, "_d_inputs", [
            tensor(name=vi.name, shape=dims(vi), dtype=ONNX_TO_TRT[vi.type.tensor_type.elem_type], is_input=True)
            for vi in proto.graph.input if vi.name not in inits])
        object.__setattr__(net, "_d_outputs", [
            tensor(name=vi.name, shape=dims(vi), dtype=ONNX_TO_TRT[vi.type.tensor_type.elem_type], is_input=False)
            for vi in proto.graph.output])
        object.__setattr__(net, "_d_nodes", [(n.name, n.op_type) for n in proto.graph.node])
        object.__setattr__(net, "_d_onnx", proto.SerializeToString())
        return True


def _zero_point_errors(proto: Any) -> list[tuple[int, Any, str]]:
    """(node index, node, message) for every Q/DQ whose zero point TensorRT's parser rejects."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    errors = []
    for i, node in enumerate(proto.graph.node):
        if node.op_type not in QDQ_OPS or len(node.input) < 3 or not node.input[2]:
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            continue
        if zp.data_type == TensorProto.UINT8:
            errors.append((i, node, f"{node.op_type}: zero point {zp.name!r} is UINT8; TensorRT quantizes to "
                                    f"INT8 (and FP8/INT4) only"))
        elif np.any(numpy_helper.to_array(zp) != 0):
            errors.append((i, node, "TensorRT only supports symmetric quantization. The zero point for the "
                                    "QuantizeLinear/DequantizeLinear operator must be all zeros."))
    return errors


def _check_zero_points(self: Any, proto: Any) -> None:
    for i, node, msg in _zero_point_errors(proto):
        self._d_errors.append(self._d_mod.ParserError._d_new(desc=msg, node=i, node_name=node.name,
                                                             op=node.op_type))


class IOptimizationProfile(_Obj):
    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        self._d_shapes[input] = [tuple(min), tuple(opt), tuple(max)]

    def get_shape(self, input: str) -> list:  # noqa: A002
        return [dims(self._d_mod, s) for s in self._d_shapes.get(input, [])]


class ITimingCache(_Obj):
    def serialize(self) -> Any:
        return hostmem(self._d_mod, f"FAKETC1:{self._d_mod.__version__}:{self._d_entries}".encode())

    def reset(self) -> bool:
        object.__setattr__(self, "_d_entries", 0)
        return True


class IInt8Calibrator(_Obj):
    _d_algo = "LEGACY_CALIBRATION"

    def __init__(self) -> None:
        object.__setattr__(self, "_d_init", True)

    def get_algorithm(self) -> Any:
        return getattr(self._d_mod.CalibrationAlgoType, self._d_algo)

    def get_batch_size(self) -> int:
        raise RuntimeError('Tried to call pure virtual function "IInt8Calibrator::getBatchSize"')

    def get_batch(self, names: list) -> Any:
        raise RuntimeError('Tried to call pure virtual function "IInt8Calibrator::getBatch"')

    def read_calibration_cache(self) -> Any:
        raise RuntimeError('Tried to call pure virtual function "IInt8Calibrator::readCalibrationCache"')

    def write_calibration_cache(self, cache: Any) -> None:
        raise RuntimeError('Tried to call pure virtual function "IInt8Calibrator::writeCalibrationCache"')


class IInt8EntropyCalibrator2(IInt8Calibrator):
    _d_algo = "ENTROPY_CALIBRATION_2"


class IInt8EntropyCalibrator(IInt8Calibrator):
    _d_algo = "ENTROPY_CALIBRATION"


class IInt8MinMaxCalibrator(IInt8Calibrator):
    _d_algo = "MINMAX_CALIBRATION"


class IProgressMonitor(_Obj):
    def __init__(self) -> None:
        object.__setattr__(self, "_d_init", True)


class _DlaCore:
    """``DLA_core`` of IBuilderConfig and Runtime: -1 until set (NvInfer.h ``getDLACore``: -1 when unset)."""

    @property
    def DLA_core(self) -> int:  # noqa: N802 - TensorRT's name
        return getattr(self, "_d_dla", -1)

    @DLA_core.setter
    def DLA_core(self, value: int) -> None:  # noqa: N802
        object.__setattr__(self, "_d_dla", int(value))


class IBuilderConfig(_DlaCore, _Obj):
    def set_calibration_profile(self, profile: Any) -> bool:
        shapes = profile._d_shapes
        if not shapes or any(not (len(a) == len(b) == len(c)) or any(not x <= y <= z for x, y, z in zip(a, b, c))
                             for a, b, c in shapes.values()):
            return False
        object.__setattr__(self, "_d_calib_profile", profile)
        return True

    def get_calibration_profile(self) -> Any:
        return getattr(self, "_d_calib_profile", None)

    def can_run_on_DLA(self, layer: Any) -> bool:  # noqa: N802 - TensorRT's name
        return layer.type.name not in DLA_UNSUPPORTED

    def get_device_type(self, layer: Any) -> Any:
        return self.default_device_type

    def set_flag(self, flag: Any) -> None:
        object.__setattr__(self, "_d_flags", self._d_flags | (1 << int(flag)))

    def clear_flag(self, flag: Any) -> None:
        object.__setattr__(self, "_d_flags", self._d_flags & ~(1 << int(flag)))

    def get_flag(self, flag: Any) -> bool:
        return bool(self._d_flags & (1 << int(flag)))

    @property
    def flags(self) -> int:
        return self._d_flags

    @flags.setter
    def flags(self, value: int) -> None:
        object.__setattr__(self, "_d_flags", int(value))

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._d_pools[pool.name] = int(pool_size)

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._d_pools.get(pool.name, 1 << 40)

    def add_optimization_profile(self, profile: Any) -> int:
        for name, (lo, opt, hi) in profile._d_shapes.items():
            if not (len(lo) == len(opt) == len(hi)) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
                self._d_log(self._d_builder._d_logger, "ERROR", f"IOptimizationProfile: invalid shapes for {name}")
                return -1
        self._d_profiles.append(profile)
        return len(self._d_profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._d_profiles)

    def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
        data = bytes(serialized_timing_cache)
        entries = 0
        if data:
            parts = data.decode(errors="replace").split(":")
            if len(parts) != 3 or parts[0] != "FAKETC1":
                self._d_log(self._d_builder._d_logger, "ERROR", "createTimingCache: the blob is not a timing cache")
                return None
            if parts[1] != self._d_mod.__version__:
                self._d_log(self._d_builder._d_logger, "WARNING", "timing cache of another TensorRT: ignored")
            else:
                entries = int(parts[2])
        return self._d_mod.ITimingCache._d_new(entries=entries)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        object.__setattr__(self, "_d_timing_cache", cache)
        return True

    def get_timing_cache(self) -> Any:
        return getattr(self, "_d_timing_cache", None)

    @property
    def int8_calibrator(self) -> Any:
        return getattr(self, "_d_calibrator", None)

    @int8_calibrator.setter
    def int8_calibrator(self, value: Any) -> None:
        object.__setattr__(self, "_d_calibrator", value)

    @property
    def builder_optimization_level(self) -> int:
        return getattr(self, "_d_opt_level", 3)

    @builder_optimization_level.setter
    def builder_optimization_level(self, value: int) -> None:
        if not 0 <= int(value) <= 5:
            raise ValueError("builder_optimization_level must be in [0, 5]")
        object.__setattr__(self, "_d_opt_level", int(value))

    @property
    def default_device_type(self) -> Any:
        return getattr(self, "_d_device_type", self._d_mod.DeviceType.GPU)

    @default_device_type.setter
    def default_device_type(self, value: Any) -> None:
        if not isinstance(value, self._d_mod.DeviceType):
            raise TypeError("default_device_type: incompatible type")
        object.__setattr__(self, "_d_device_type", value)

    @property
    def progress_monitor(self) -> Any:
        return getattr(self, "_d_progress", None)

    @progress_monitor.setter
    def progress_monitor(self, value: Any) -> None:
        object.__setattr__(self, "_d_progress", value)

    @property
    def profiling_verbosity(self) -> Any:
        return getattr(self, "_d_verbosity", self._d_mod.ProfilingVerbosity.LAYER_NAMES_ONLY)

    @profiling_verbosity.setter
    def profiling_verbosity(self, value: Any) -> None:
        object.__setattr__(self, "_d_verbosity", value)


class Builder(_Obj):
    def __init__(self, logger: Any) -> None:
        _check_gpu(self)
        object.__setattr__(self, "_d_logger", logger)
        object.__setattr__(self, "_d_ctx", self._d_mod._d_gpu.context_for_tensorrt())

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 - TensorRT's name
        return self._d_mod._d_dla_cores

    @property
    def platform_has_fast_fp16(self) -> bool:
        return True

    @property
    def platform_has_fast_int8(self) -> bool:
        return True

    def create_network(self, flags: int = 0) -> Any:
        return self._d_mod.INetworkDefinition._d_new(flags=int(flags), inputs=[], outputs=[], nodes=[], onnx=None)

    def create_builder_config(self) -> Any:
        tf32 = getattr(self._d_mod.BuilderFlag, "TF32", None)  # on by default (NvInfer.h BuilderFlag::kTF32)
        return self._d_mod.IBuilderConfig._d_new(flags=0 if tf32 is None else 1 << int(tf32), pools={}, profiles=[],
                                                 builder=self)

    def create_optimization_profile(self) -> Any:
        return self._d_mod.IOptimizationProfile._d_new(shapes={})

    def build_serialized_network(self, network: Any, config: Any, *rest: Any) -> Any:
        try:
            header = _Build(self, network, config).run()
        except _BuildFailed as exc:
            self._d_log(self._d_logger, "ERROR", str(exc))
            return None
        head = json.dumps(header, sort_keys=True).encode()
        return hostmem(self._d_mod, MAGIC + struct.pack("<I", len(head)) + head + network._d_onnx)


class _BuildFailed(Exception):
    pass


class _Build:
    """The checks and choices of one ``build_serialized_network`` call."""

    def __init__(self, builder: Any, network: Any, config: Any) -> None:
        self.b, self.net, self.cfg, self.mod = builder, network, config, builder._d_mod
        self.major = builder._d_version_major()
        self.flag_names = sorted(m for m, v in self.mod.BuilderFlag.__members__.items() if config.get_flag(v))

    def run(self) -> dict:
        net, cfg, mod = self.net, self.cfg, self.mod
        if net._d_onnx is None or not net._d_outputs:
            raise _BuildFailed("Network must have at least one output")
        strongly = self._strongly_typed()
        set_precision = [f for f in PRECISION_FLAGS if f in self.flag_names]
        if strongly and set_precision:
            raise _BuildFailed(f"BuilderFlag {set_precision} set on a strongly typed network: precision flags are "
                               f"not allowed (types come from the network)")
        has_qdq = any(op in QDQ_OPS for _, op in net._d_nodes)
        if has_qdq and not strongly and "INT8" not in self.flag_names:
            raise _BuildFailed("Network has Q/DQ layers: enable BuilderFlag.INT8 (or build it strongly typed)")
        profile = self._profile()
        dla_layers = self._dla(profile)
        scales = None
        if "INT8" in self.flag_names and not has_qdq:
            scales = self._calibrate(profile)
        monitor = getattr(cfg, "_d_progress", None)
        if monitor is not None:
            monitor.phase_start("Building engine", None, 2)
            for step in range(2):
                if not monitor.step_complete("Building engine", step):
                    raise _BuildFailed("Build cancelled by the progress monitor")
            monitor.phase_finish("Building engine")
        tc = cfg.get_timing_cache()
        if tc is not None:
            object.__setattr__(tc, "_d_entries", tc._d_entries + len(net._d_nodes))
        base = "Half" if "FP16" in self.flag_names or any(t._d_dtype == "HALF" for t in net._d_inputs) or _has_fp16(
            net) else "Float"
        # precision constraints bind only with OBEY_PRECISION_CONSTRAINTS (NvInfer.h ILayer::setPrecision)
        pinned = net.__dict__.get("_d_layer_precision", {}) if "OBEY_PRECISION_CONSTRAINTS" in self.flag_names else {}
        qdq_fed = _qdq_fed_nodes(net) if has_qdq else set()

        def precision(i: int, name: str) -> str:
            if name in pinned:
                return {"HALF": "Half", "FLOAT": "Float", "INT8": "Int8"}.get(pinned[name], "Float")
            if scales:  # implicit INT8: every layer may run INT8 with calibrated scales
                return "Int8"
            return "Int8" if i in qdq_fed else base  # explicit: only what Q/DQ bracket is INT8
        return {
            "trt_version": mod.__version__, "network_flags": net._d_flags, "strongly_typed": strongly,
            "builder_flags": self.flag_names, "profile": profile, "int8_scales": scales,
            "calibrator": getattr(getattr(cfg, "_d_calibrator", None), "_d_algo", None) if scales else None,
            "dla_core": cfg.DLA_core if cfg.default_device_type == mod.DeviceType.DLA else None,
            "dla_layers": dla_layers, "version_compatible": "VERSION_COMPATIBLE" in self.flag_names,
            "workspace": cfg._d_pools.get("WORKSPACE"), "opt_level": getattr(cfg, "builder_optimization_level", None),  # 8.6+
            "detailed": cfg.profiling_verbosity == mod.ProfilingVerbosity.DETAILED,
            "layers": [[name or f"node_{i}", op, precision(i, name or f"node_{i}")]
                       for i, (name, op) in enumerate(net._d_nodes)],
            "io": [[t._d_name, "INPUT", t._d_dtype, list(t._d_shape)] for t in net._d_inputs]
            + [[t._d_name, "OUTPUT", t._d_dtype, list(t._d_shape)] for t in net._d_outputs],
        }

    def _dla(self, profile: dict) -> int:
        """How many layers run on the DLA; DLA needs static shapes (TensorRT developer guide, "Working with
        DLA": min = opt = max), else every layer falls back to the GPU, or the build fails without fallback."""
        cfg, mod = self.cfg, self.mod
        if cfg.default_device_type != mod.DeviceType.DLA:
            return 0
        fallback = "GPU_FALLBACK" in self.flag_names
        dynamic = [name for name, (lo, opt, hi) in profile.items() if not lo == opt == hi]
        if dynamic:
            if not fallback:
                raise _BuildFailed(f"DLA does not support dynamic shapes: inputs {dynamic} have min != max")
            self.b._d_log(self.b._d_logger, "WARNING", f"DLA needs static shapes; inputs {dynamic} are dynamic: "
                          f"all layers run on the GPU")
            return 0
        layers = [self.net.get_layer(i) for i in range(self.net.num_layers)]
        on_dla = [layer for layer in layers if cfg.can_run_on_DLA(layer)]
        if len(on_dla) < len(layers) and not fallback:
            raise _BuildFailed("layers the DLA cannot run need BuilderFlag.GPU_FALLBACK")
        return len(on_dla)

    def _strongly_typed(self) -> bool:
        if self.major >= 11:  # 11.x: every network is strongly typed
            return True
        flag = getattr(self.mod.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return flag is not None and self.net.get_flag(flag)

    def _profile(self) -> dict:
        dynamic = [t for t in self.net._d_inputs if -1 in t._d_shape]
        profiles = self.cfg._d_profiles
        if dynamic and not profiles:
            raise _BuildFailed("Network has dynamic or shape inputs, but no optimization profile has been defined.")
        shapes = dict(profiles[0]._d_shapes) if profiles else {}
        for t in dynamic:
            if t._d_name not in shapes:
                raise _BuildFailed(f"Optimization profile is missing values for input {t._d_name}")
            for shape in shapes[t._d_name]:
                if len(shape) != len(t._d_shape) or any(d != -1 and d != s for d, s in zip(t._d_shape, shape)):
                    raise _BuildFailed(f"profile shape {shape} does not match input {t._d_name} {t._d_shape}")
        return {k: [list(s) for s in v] for k, v in shapes.items()}

    def _calibrate(self, profile: dict) -> dict | None:
        calib = getattr(self.cfg, "_d_calibrator", None)
        if calib is None:
            self.b._d_log(self.b._d_logger, "WARNING", "INT8 without calibrator or dynamic ranges: layers fall "
                          "back to higher precision")
            return None
        if not getattr(calib, "_d_init", False):
            raise TypeError(f"{type(calib).__name__}.__init__() must be called when overriding __init__")
        algo = calib.get_algorithm()
        expected = f"TRT-{version_int(self.mod.__version__)}-{CALIB_NAMES[algo.name]}"
        cache = calib.read_calibration_cache()
        if cache:
            lines = bytes(cache).decode().strip().splitlines()
            if lines and lines[0].strip() == expected:
                return {name.strip(): struct.unpack(">f", bytes.fromhex(hexval.strip()))[0]
                        for name, _, hexval in (ln.rpartition(":") for ln in lines[1:])}
            self.b._d_log(self.b._d_logger, "WARNING", f"calibration cache header {lines[:1]} does not match "
                          f"{expected}: ignored, calibrating")
        return self._calibrate_on_device(calib, expected)

    def _calibration_shape(self, calib: Any) -> tuple:
        """The shape TensorRT calibrates at: the calibration profile's opt (NvInfer.h setCalibrationProfile: "MIN
        and MAX values will be overwritten by kOPT"), profile 0 when none is set; a static input as it is.
        ``get_batch_size`` is not consulted for these explicit-batch networks (deprecated/ignored from 10.0)."""
        inp = self.net._d_inputs[0]
        if -1 not in inp._d_shape:
            return tuple(inp._d_shape)
        profile = self.cfg.get_calibration_profile()
        if profile is None:
            self.b._d_log(self.b._d_logger, "WARNING", "Calibration Profile is not defined. Calibrating with "
                          "Profile 0")
            profile = self.cfg._d_profiles[0]
        calib.get_batch_size()  # still called, as TensorRT does, and ignored
        return tuple(profile._d_shapes[inp._d_name][1])

    def _calibrate_on_device(self, calib: Any, header: str) -> dict:
        gpu = self.mod._d_gpu
        inp = self.net._d_inputs[0]
        shape = self._calibration_shape(calib)
        amax, n = 0.0, 0
        while True:
            ptrs = calib.get_batch([inp._d_name])
            if not ptrs:
                break
            nbytes = int(np.prod(shape)) * np.dtype(TRT_TO_NP[inp._d_dtype]).itemsize
            try:
                raw = gpu.view(int(ptrs[0]), nbytes, "calibration get_batch", ctx=self.b._d_ctx)
            except Exception as exc:  # noqa: BLE001 - any device fault fails the build, as on a GPU
                raise _BuildFailed(f"calibration read {shape} (the calibration profile's opt shape) from the "
                                   f"calibrator's buffer: {exc}") from exc
            amax = max(amax, float(np.abs(raw.view(TRT_TO_NP[inp._d_dtype])).max()))
            n += 1
        if n == 0:
            raise _BuildFailed("Calibration failure occurred with no scaling factors detected: the calibrator gave "
                               "neither a matching cache nor batches")
        scales = {inp._d_name: amax / 127.0}
        text = header + "\n" + "".join(f"{k}: {struct.pack('>f', v).hex()}\n" for k, v in scales.items())
        calib.write_calibration_cache(text.encode())
        return scales


def _qdq_fed_nodes(net: Any) -> set[int]:
    """Indices of the nodes that read a DequantizeLinear output: the layers explicit quantization runs in INT8."""
    import onnx

    proto = onnx.load_from_string(net._d_onnx)
    dq_outputs = {out for node in proto.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return {i for i, node in enumerate(proto.graph.node)
            if node.op_type not in QDQ_OPS and any(name in dq_outputs for name in node.input)}


def _has_fp16(net: Any) -> bool:
    import onnx

    proto = onnx.load_from_string(net._d_onnx)
    return any(i.data_type == 10 for i in proto.graph.initializer)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".")[:3])


def runtime_accepts(built: str, runtime: str, version_compatible: bool) -> bool:
    """Whether a runtime of version ``runtime`` can load an engine built by ``built`` (TensorRT developer guide,
    "Version Compatibility", and the 11.4 support matrix: a version-compatible engine runs on the same or a later
    runtime of its major, or 8.6+ -> 10.x, 10.x -> 11.x; never on an older one)."""
    if built == runtime:
        return True
    b, r = _version_tuple(built), _version_tuple(runtime)
    if not version_compatible or r < b or b < (8, 6):
        return False
    return b[0] == r[0] or (b[0], r[0]) in {(8, 10), (10, 11)}


class Runtime(_DlaCore, _Obj):
    def __init__(self, logger: Any) -> None:
        _check_gpu(self)
        object.__setattr__(self, "_d_logger", logger)
        object.__setattr__(self, "_d_ctx", self._d_mod._d_gpu.context_for_tensorrt())

    @property
    def engine_host_code_allowed(self) -> bool:
        return getattr(self, "_d_host_code", False)

    @engine_host_code_allowed.setter
    def engine_host_code_allowed(self, value: bool) -> None:
        object.__setattr__(self, "_d_host_code", bool(value))

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        data = bytes(serialized_engine)
        if not data.startswith(MAGIC):
            self._d_log(self._d_logger, "ERROR", "1: [stdArchiveReader.cpp] Error Code 1: Serialization "
                        "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
            return None
        (n,) = struct.unpack("<I", data[8:12])
        header = json.loads(data[12:12 + n])
        compatible = header.get("version_compatible", False)
        if compatible and not self.engine_host_code_allowed:
            self._d_log(self._d_logger, "ERROR", "1: [runtime.cpp::deserializeCudaEngine] Error Code 1: "
                        "Serialization (a version-compatible engine embeds host code: set "
                        "engine_host_code_allowed = True on the runtime to load it)")
            return None
        if not runtime_accepts(header["trt_version"], self._d_mod.__version__, compatible):
            self._d_log(self._d_logger, "ERROR", "1: [stdArchiveReader.cpp] Error Code 1: Serialization "
                        "(Serialization assertion stdVersionRead == kSERIALIZATION_VERSION failed.Version tag "
                        f"does not match. Note: Current Version: {self._d_mod.__version__}, Serialized Engine "
                        f"Version: {header['trt_version']})")
            return None
        return self._d_mod.ICudaEngine._d_new(header=header, onnx=data[12 + n:], session=None, ctx=self._d_ctx,
                                              dla_run=max(self.DLA_core, 0) if header.get("dla_layers") else None)


class ICudaEngine(_Obj):
    def _d_io(self, name: str) -> list:
        for entry in self._d_header["io"]:
            if entry[0] == name:
                return entry
        raise _InvalidTensor(name)

    @property
    def num_io_tensors(self) -> int:
        return len(self._d_header["io"])

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    @property
    def num_layers(self) -> int:
        return len(self._d_header["layers"])

    def get_tensor_name(self, index: int) -> str:
        return self._d_header["io"][index][0]

    def get_tensor_mode(self, name: str) -> Any:
        try:
            return getattr(self._d_mod.TensorIOMode, self._d_io(name)[1])
        except _InvalidTensor:
            return self._d_mod.TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> Any:
        return getattr(self._d_mod.DataType, self._d_io(name)[2])

    def get_tensor_shape(self, name: str) -> Any:
        return dims(self._d_mod, self._d_io(name)[3])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        shapes = self._d_header["profile"].get(name)
        if shapes is None or profile_index != 0:
            return []
        return [dims(self._d_mod, s) for s in shapes]

    def create_execution_context(self, *args: Any) -> Any:
        return self._d_mod.IExecutionContext._d_new(engine=self, shapes={}, addresses={})

    def create_engine_inspector(self) -> Any:
        return self._d_mod.EngineInspector._d_new(engine=self)

    def serialize(self) -> Any:
        head = json.dumps(self._d_header, sort_keys=True).encode()
        return hostmem(self._d_mod, MAGIC + struct.pack("<I", len(head)) + head + self._d_onnx)


class _InvalidTensor(KeyError):
    pass


class EngineInspector(_Obj):
    def get_engine_information(self, format: Any) -> str:  # noqa: A002 - TensorRT's name
        header = self._d_engine._d_header
        # the strings TensorRT writes with ProfilingVerbosity.DETAILED
        formats = {"Float": "Row major linear FP32", "Half": "Channel major FP16 format where channel % 8 == 0",
                   "Int8": "Thirty-two wide channel vectorized row major Int8 format"}
        v11 = self._d_version_major() >= 11  # the 11.x schema (TensorRT 11 migration guide, IEngineInspector)
        if header["detailed"]:
            layers = [{"Name": name, "LayerType": op,
                       "Outputs": [{"Name": f"{name}_out", "Format": formats[prec], "DataType": prec} if v11
                                   else {"Name": f"{name}_out", "Format/Datatype": formats[prec]}]}
                      for name, op, prec in header["layers"]]
        else:
            layers = [name for name, _, _ in header["layers"]]
        if v11:
            io = [{"Name": e[0], "IOMode": e[1].capitalize(), "DataType": e[2].capitalize(), "Dimensions": e[3]}
                  for e in header["io"]]
            return json.dumps({"Layers": layers, "I/O Tensors": io})
        return json.dumps({"Layers": layers, "Bindings": [e[0] for e in header["io"]]})


class IExecutionContext(_Obj):
    @property
    def engine(self) -> Any:
        return self._d_engine

    def set_input_shape(self, name: str, shape: Any) -> bool:
        engine = self._d_engine
        shape = tuple(shape)
        try:
            io = engine._d_io(name)
        except _InvalidTensor:
            self._d_log(None, "ERROR", f"setInputShape: {name} is not an input tensor")
            return False
        lo, _, hi = engine._d_header["profile"].get(name, [io[3], io[3], io[3]])
        if io[1] != "INPUT" or len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            self._d_log(None, "ERROR", f"setInputShape: {name} shape {shape} is outside the profile {lo}..{hi}")
            return False
        self._d_shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> Any:
        io = self._d_engine._d_io(name)
        if io[1] == "INPUT":
            return dims(self._d_mod, self._d_shapes.get(name, io[3]))
        batch = next(iter(self._d_shapes.values()), (io[3][0],))[0]
        return dims(self._d_mod, [batch if d == -1 else d for d in io[3]])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._d_engine._d_io(name)
        self._d_addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._d_addresses.get(name, 0)

    @property
    def all_binding_shapes_specified(self) -> bool:
        return all(e[0] in self._d_shapes for e in self._d_engine._d_header["io"] if e[1] == "INPUT")

    def execute_async_v3(self, stream_handle: int) -> bool:
        gpu = self._d_mod._d_gpu
        stream = gpu.streams.get(int(stream_handle))
        if stream is None:
            self._d_log(None, "ERROR", f"enqueueV3: invalid stream handle {stream_handle}")
            return False
        if stream.ctx.cu is not self._d_engine._d_ctx:  # kernels launch in the engine's context
            self._d_log(None, "ERROR", "enqueueV3: Cuda Runtime (invalid resource handle): the stream belongs to "
                        "another CUDA context than the engine")
            return False
        io = self._d_engine._d_header["io"]
        missing = [e[0] for e in io if e[0] not in self._d_addresses or (e[1] == "INPUT" and e[0] not in
                                                                         self._d_shapes)]
        if missing:
            self._d_log(None, "ERROR", f"enqueueV3: address or shape not set for {missing}")
            return False
        shapes = dict(self._d_shapes)
        addresses = dict(self._d_addresses)
        out_shapes = {e[0]: tuple(self.get_tensor_shape(e[0])) for e in io if e[1] == "OUTPUT"}

        def op() -> None:
            feeds = {}
            for name, _, dtype, _ in (e for e in io if e[1] == "INPUT"):
                np_type = np.dtype(TRT_TO_NP[dtype])
                n = int(np.prod(shapes[name])) * np_type.itemsize
                feeds[name] = gpu.view(addresses[name], n, "enqueueV3").view(np_type).reshape(shapes[name]).copy()
            outputs = self._d_engine._d_run(feeds)
            for (name, _, dtype, _), value in zip((e for e in io if e[1] == "OUTPUT"), outputs):
                value = np.ascontiguousarray(value, dtype=TRT_TO_NP[dtype])
                if value.shape != out_shapes[name]:
                    raise RuntimeError(f"double: output {name} shape {value.shape} != {out_shapes[name]}")
                gpu.view(addresses[name], value.nbytes, "enqueueV3")[:] = value.view(np.uint8).reshape(-1)
            if self._d_engine._d_dla_run is not None:
                gpu.log.append(("dla_execute", self._d_engine._d_dla_run))
            gpu.log.append(("execute", {k: v.shape[0] for k, v in feeds.items()}))
        stream.enqueue(op, "enqueueV3")
        return True


def _engine_run(self: Any, feeds: dict) -> list:
    import onnxruntime as ort

    if self._d_session is None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        object.__setattr__(self, "_d_session", ort.InferenceSession(self._d_onnx, opts,
                                                                    providers=["CPUExecutionProvider"]))
    return self._d_session.run(None, feeds)


ICudaEngine._d_run = _engine_run  # type: ignore[attr-defined]
OnnxParser._d_check_zero_points = _check_zero_points  # type: ignore[attr-defined]

IMPLS: dict[str, type] = {
    cls.__name__: cls for cls in (ILogger, Logger, Dims, IHostMemory, ITensor, INetworkDefinition, ParserError,
                                  OnnxParser, IOptimizationProfile, ITimingCache, IInt8Calibrator,
                                  IInt8EntropyCalibrator2, IInt8EntropyCalibrator, IInt8MinMaxCalibrator,
                                  IProgressMonitor, IBuilderConfig, Builder, Runtime, ICudaEngine, EngineInspector,
                                  IExecutionContext, ILayer)
}
