"""TensorRT engines: build one from ONNX. The one module of edgeres that imports ``tensorrt``.

TensorRT is imported lazily. Version differences (8.5/8.6, 10.x, 11.x) are decided once, by feature detection,
in :class:`Features`; everything else asks it. Only the tensor-name API (8.5+) and ``execute_async_v3`` are used.
The runner lives in :mod:`edgeres.backends.tensorrt_runner` (it gets TensorRT through :func:`_trt`) and is
re-exported here as ``TensorRTRunner``.

::

    sidecar = build_engine(Path("m.int8.onnx"), out=Path("m.engine"), precision=Precision.INT8, card=card,
                           source_onnx_sha256=sha, profile=BatchProfile(1, 8, 32))
    with TensorRTRunner(Path("m.engine")) as runner:
        logits = runner.infer(batch)
        print(runner.last_stage_times)
"""
from __future__ import annotations

import itertools
import json
import logging
import re
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from edgeres.backends import cuda as cu
from edgeres.backends.base import BatchProfile, Precision, Sidecar, write_sidecar
from edgeres.card import ModelCard
from edgeres.errors import BackendError, BackendUnavailable, InputError, ModelError
from edgeres.io import atomic_path, sha256_file, write_bytes_atomic

if TYPE_CHECKING:  # the re-export below, for type checkers
    from edgeres.backends.tensorrt_runner import TensorRTRunner  # noqa: F401

log = logging.getLogger(__name__)

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # present on Jetson (L4T)
JETSON_WORKSPACE_SHARE = 0.5  # default workspace on Jetson: this share of available memory (shared with the CPU)
_INT8_MODES = ("explicit", "implicit")
HIGH_PRECISIONS = ("fp16", "fp32")  # what INT8 engines run their unquantized layers in


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


# ---------------------------------------------------------------- fingerprint


def l4t_release(path: Path | None = None) -> str | None:
    """The L4T release of a Jetson ("R36.4.0") from ``/etc/nv_tegra_release``, or None elsewhere."""
    path = path or NV_TEGRA_RELEASE
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
    return f"R{m.group(1)}.{m.group(2)}" if m else first.strip("# ").strip()


def machine_fingerprint(trt: ModuleType) -> dict[str, Any]:
    """TensorRT version, GPU, CUDA and L4T of this machine (what an engine is bound to)."""
    info = cu.device_info(0)
    return {"tensorrt": _numeric_version(trt.__version__), "gpu": info.name, "compute_capability": info.compute_capability,
            "cuda": info.cuda_version, "driver": info.driver_version, "l4t": l4t_release()}


def runtime_can_load(built: str, runtime: str, *, version_compatible: bool) -> bool:
    """Whether TensorRT ``runtime`` can deserialize an engine that TensorRT ``built`` made.

    NVIDIA's rules (developer guide, "Version Compatibility"; TensorRT 11.4 support matrix): an ordinary engine
    runs only on the version that built it; a version-compatible one (built by 8.6 or later) on the same or a
    *later* runtime of its major, and across majors only 8.6+ -> 10.x and 10.x -> 11.x. Never on an older runtime.
    """
    b, r = _version_tuple(built), _version_tuple(runtime)
    if b == r:
        return True
    if not version_compatible or r < b or b < (8, 6):
        return False
    return b[0] == r[0] or (b[0], r[0]) in {(8, 10), (10, 11)}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in _numeric_version(version).split(".")[:3])


def check_fingerprint(recorded: dict[str, Any], here: dict[str, Any], *, artifact: Path) -> None:
    """Explain why an engine cannot run here, before TensorRT's bare version-tag assertion would."""
    rebuild = f"rebuild it on this machine with `edgeres build MODEL.onnx --backend tensorrt` ({artifact})"
    built, now = recorded.get("tensorrt"), here["tensorrt"]
    if built and not runtime_can_load(str(built), str(now), version_compatible=bool(recorded.get("version_compatible"))):
        why = ("a version-compatible engine runs only on the same or a later TensorRT (same major, or 8.6+ -> 10, "
               "10 -> 11)" if recorded.get("version_compatible") else "engines are bound to their TensorRT version")
        raise BackendError(f"engine {artifact.name} was built by TensorRT {built} but {now} is installed ({why}); "
                           f"{rebuild}")
    if recorded.get("compute_capability") and recorded["compute_capability"] != here["compute_capability"]:
        raise BackendError(f"engine {artifact.name} was built for a GPU of compute capability "
                           f"{recorded['compute_capability']} ({recorded.get('gpu')}) but this GPU is "
                           f"{here['gpu']} ({here['compute_capability']}); {rebuild}")
    if recorded.get("gpu") and recorded["gpu"] != here["gpu"]:
        log.warning("engine %s was built on %s and runs on %s (same compute capability): it works, but its "
                    "tactics were timed on the other GPU", artifact.name, recorded["gpu"], here["gpu"])
    if recorded.get("l4t") != here.get("l4t") and recorded.get("l4t") and here.get("l4t"):
        log.warning("engine %s was built on L4T %s, this Jetson runs %s", artifact.name, recorded["l4t"], here["l4t"])


# ---------------------------------------------------------------- builder


def build_engine(onnx_path: Path, *, out: Path, precision: Precision, card: ModelCard, source_onnx_sha256: str,
                 profile: BatchProfile = BatchProfile(), int8_mode: str = "explicit",
                 calibration_cache: Path | None = None, workspace_mb: int | None = None,
                 timing_cache: Path | None = None, opt_level: int | None = None, dla_core: int | None = None,
                 version_compatible: bool = False, tf32: bool = True, high_precision: str = "fp16",
                 keep_float_layers: Sequence[str] = (), progress: bool = True,
                 calibration_data: Iterable[np.ndarray] | None = None) -> Sidecar:
    """Build a TensorRT engine from ONNX and write it with its sidecar, atomically.

    Args:
        onnx_path: the FP32 ONNX, or for ``int8_mode="explicit"`` the Q/DQ ONNX from :mod:`edgeres.quantize`.
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
            11.x): a Q/DQ ONNX whose float part is FP16 (:func:`edgeres.quantize.convert_fp16`).
        keep_float_layers: int8: layers (ONNX node names) the Q/DQ ONNX leaves without Q/DQ. Strongly typed
            networks keep them in float by their types; weakly typed ones (8.x, implicit INT8 on 10.x) get a
            precision constraint (``ILayer.precision`` + ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``).
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
                      high_precision=high_precision, keep_float_layers=tuple(keep_float_layers), progress=progress,
                      calibration_data=calibration_data if on_device else None, ctx=ctx)


def _build(trt: ModuleType, feat: Features, fingerprint: dict[str, Any], onnx_path: Path, *, out: Path,
           precision: Precision, card: ModelCard, source_onnx_sha256: str, profile: BatchProfile, int8_mode: str,
           calibration_cache: Path | None, workspace_mb: int | None, timing_cache: Path | None,
           opt_level: int | None, dla_core: int | None, version_compatible: bool, tf32: bool,
           high_precision: str, keep_float_layers: tuple[str, ...], progress: bool,
           calibration_data: Iterable[np.ndarray] | None, ctx: cu.CudaContext) -> Sidecar:
    with tempfile.TemporaryDirectory(prefix="edgeres-trt-") as tmp:
        src = _network_source(onnx_path, precision, int8_mode, feat, Path(tmp), high_precision=high_precision)
        logger = _Logger(trt)
        builder = trt.Builder(logger.trt_logger)
        network = _parse(trt, builder, src, feat, logger)
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
        with atomic_path(out) as tmp_engine:
            tmp_engine.write_bytes(bytes(serialized))
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
        artifact_sha256=sha256_file(out), source_onnx_sha256=source_onnx_sha256, backend_version=_numeric_version(trt.__version__),
        profile=_profile_dict(profile), int8=int8, fingerprint=fingerprint,
        options={"workspace_mb": workspace_mb, "timing_cache": str(timing_cache) if timing_cache else None,
                 "opt_level": opt_level, "dla_core": dla_core, "version_compatible": version_compatible,
                 "tf32": flags["tf32"], "dla_layers": flags["dla_layers"],
                 "int8_mode": int8_mode if precision is Precision.INT8 else None, "layer_precisions": layers},
    )
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


def _load_onnx(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX file ({exc})") from exc


def _onnx_ops(path: Path) -> set[str]:
    return {node.op_type for node in _load_onnx(path).graph.node}


def _check_symmetric_int8(model: Any, path: Path) -> None:
    """TensorRT's ONNX parser takes only INT8 Q/DQ with zero point 0 (onnx-tensorrt, QuantDequantLinearHelper:
    "TensorRT only supports symmetric quantization"); refuse the u8 ONNX Runtime form before TensorRT does."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            continue
        if zp.data_type == TensorProto.UINT8 or np.any(numpy_helper.to_array(zp) != 0):
            raise ModelError(f"{path} holds asymmetric or UINT8 Q/DQ ({node.op_type} {node.name!r}, zero point "
                             f"{zp.name!r}): that is the ONNX Runtime form (`edgeres quantize --activations u8`), "
                             f"which TensorRT's parser rejects; build from the FP32 ONNX (edgeres makes the "
                             f"signed Q/DQ itself) or quantize with --activations s8")


def qdq_builds_strongly_typed(feat: Features | None = None) -> bool:
    """Whether a Q/DQ network is built strongly typed (10.x, 11.x): its types, not flags, set precision.
    ``feat`` defaults to the installed TensorRT's."""
    feat = feat if feat is not None else Features.detect(_trt())
    return feat.always_strongly_typed or feat.strongly_typed is not None


def _float16_qdq(model: Any) -> bool:
    """Whether a Q/DQ model's scales are FP16 (its float part already FP16)."""
    from onnx import TensorProto

    inits = {i.name: i.data_type for i in model.graph.initializer}
    return any(node.op_type == "QuantizeLinear" and inits.get(node.input[1]) == TensorProto.FLOAT16
               for node in model.graph.node)


def _network_source(onnx_path: Path, precision: Precision, int8_mode: str, feat: Features, tmp: Path, *,
                    high_precision: str = "fp16") -> Path:
    """The ONNX TensorRT parses: the given one, or an FP16-typed copy (fp16 on 11.x; the float part of a Q/DQ
    network built strongly typed with ``high_precision="fp16"``)."""
    model = _load_onnx(onnx_path)
    has_qdq = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    if has_qdq:
        _check_symmetric_int8(model, onnx_path)
    fp16_qdq = has_qdq and _float16_qdq(model)
    del model
    if (precision is Precision.INT8 and has_qdq and high_precision == "fp16" and qdq_builds_strongly_typed(feat)
            and not fp16_qdq):
        from edgeres.quantize import to_fp16

        return to_fp16(onnx_path, tmp / (onnx_path.stem + ".fp16.onnx"))
    if precision is Precision.INT8 and int8_mode == "explicit" and not has_qdq:
        raise ModelError(f"{onnx_path} has no QuantizeLinear/DequantizeLinear nodes, so it cannot make an explicit "
                         f"INT8 engine; quantize it first (`edgeres quantize`) or use --int8-mode implicit")
    if precision is Precision.INT8 and int8_mode == "implicit":
        if not feat.implicit_int8:
            raise InputError(f"--int8-mode implicit (calibration cache) was removed in TensorRT 11; TensorRT "
                             f"{feat.era} builds INT8 from a Q/DQ ONNX only: use --int8-mode explicit")
        if has_qdq:
            raise ModelError(f"{onnx_path} is already a Q/DQ ONNX; --int8-mode implicit needs the FP32 ONNX")
    if precision is Precision.FP16 and feat.always_strongly_typed:
        # 11.x: no FP16 flag; the network's types decide, so feed an FP16-typed ONNX (FP32 I/O)
        from edgeres.quantize import to_fp16

        return to_fp16(onnx_path, tmp / (onnx_path.stem + ".fp16.onnx"))
    return onnx_path


def _parse(trt: ModuleType, builder: Any, src: Path, feat: Features, logger: _Logger) -> Any:
    flags = 0
    if feat.explicit_batch is not None:  # 8.x: ONNX needs an explicit-batch network
        flags |= 1 << int(feat.explicit_batch)
    if feat.strongly_typed is not None and _wants_strong_types(src):  # 10.x: Q/DQ networks built strongly typed
        flags |= 1 << int(feat.strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger.trt_logger)
    if not parser.parse(src.read_bytes(), str(src)):
        raise ModelError(f"TensorRT cannot parse {src.name}: " + "; ".join(_parser_errors(parser, src, feat)))
    # keep the parser alive as long as the network: on older versions the parser owns the weights
    return _NetworkHolder(network, parser, flags)


@dataclass
class _NetworkHolder:
    network: Any
    parser: Any
    flags: int


def _wants_strong_types(src: Path) -> bool:
    return "QuantizeLinear" in _onnx_ops(src)


def _parser_errors(parser: Any, src: Path, feat: Features) -> list[str]:
    """One line per parser error: node, operator and message."""
    import onnx

    nodes = onnx.load(str(src), load_external_data=False).graph.node
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        index = err.node()
        if feat.named_parser_errors:  # 10.x+: the parser names the node and operator itself
            name, op = err.node_name(), err.node_operator()
        else:  # 8.x: only the node index; look it up in the ONNX
            node = nodes[index] if 0 <= index < len(nodes) else None
            name, op = (node.name, node.op_type) if node is not None else ("", "")
        where = f"node {index} {name!r} ({op})" if index >= 0 else "model"
        lines.append(f"{where}: {err.desc()}")
    return lines or ["no error reported by the parser"]


def _configure(trt: ModuleType, builder: Any, net: _NetworkHolder, config: Any, feat: Features, *,
               precision: Precision, int8_mode: str, calibration_cache: Path | None, profile: BatchProfile,
               workspace_mb: int | None, opt_level: int | None, dla_core: int | None, version_compatible: bool,
               tf32: bool, high_precision: str, integrated: bool, calibration_data: Iterable[np.ndarray] | None,
               ctx: cu.CudaContext, keep_float_layers: tuple[str, ...] = ()) -> dict[str, Any]:
    network = net.network
    calibrator = device_calibration = None
    strongly = feat.always_strongly_typed or bool(feat.strongly_typed is not None and net.flags
                                                  & (1 << int(feat.strongly_typed)))
    _add_profile(builder, network, config, profile)
    if not strongly:  # 8.5-10.x weakly typed networks: precision comes from flags
        if precision is Precision.FP16:
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision is Precision.INT8:
            config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ on 8.x needs it too
            if high_precision == "fp16":  # layers without INT8 kernels/scales fall back to FP16, not FP32
                config.set_flag(trt.BuilderFlag.FP16)
            if keep_float_layers:
                _pin_float_layers(trt, network, config, keep_float_layers, high_precision)
            if int8_mode == "implicit":
                if calibration_data is not None:
                    device_calibration = _DeviceCalibration(trt, ctx, calibration_data)
                    device_calibration.pin_profile(builder, network, config)
                    calibrator = device_calibration.calibrator
                    config.int8_calibrator = calibrator
                else:
                    calibrator = _attach_calibrator(trt, config, calibration_cache)
    if workspace_mb is None and integrated:
        workspace_mb = _jetson_workspace_mb()
    if workspace_mb is not None:
        if workspace_mb <= 0:
            raise InputError(f"--workspace must be a positive number of MiB, got {workspace_mb}")
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if opt_level is not None:
        _set_opt_level(trt, config, feat, opt_level)
    dla_layers = _use_dla(trt, builder, network, config, dla_core, precision, profile) if dla_core is not None else None
    if version_compatible:
        if not hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"):  # 8.6+
            raise InputError(f"--version-compatible needs TensorRT 8.6 or newer (installed: {trt.__version__})")
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)  # on by default: FP32 layers may run as TF32 on Ampere+
    if tf32_flag is not None and not tf32:
        config.clear_flag(tf32_flag)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for the engine inspector
    builder_flags = sorted(name for name, flag in trt.BuilderFlag.__members__.items() if config.get_flag(flag))
    network_flags = sorted(name for name, flag in trt.NetworkDefinitionCreationFlag.__members__.items()
                           if net.flags & (1 << int(flag)))
    # the caller keeps the calibrator alive through the build: TensorRT holds only a raw pointer to it
    return {"builder": builder_flags, "network": network_flags, "strongly_typed": strongly, "calibrator": calibrator,
            "device_calibration": device_calibration, "dla_layers": dla_layers,
            "tf32": bool(tf32_flag is not None and config.get_flag(tf32_flag))}


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
    if not 0 <= opt_level <= 5:
        raise InputError(f"--opt-level must be 0..5, got {opt_level}")
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


def _attach_calibrator(trt: ModuleType, config: Any, calibration_cache: Path | None) -> Any:
    """8.5-10.x implicit INT8: a calibrator that serves a cache computed elsewhere (no data on the device)."""
    from calibration import trt_cache

    if calibration_cache is None:
        raise InputError("--int8-mode implicit needs a calibration cache (from `edgeres calibrate`)")
    header, _ = trt_cache.read(calibration_cache)
    data = Path(calibration_cache).read_bytes()
    base = trt.IInt8MinMaxCalibrator if "MinMax" in header else trt.IInt8EntropyCalibrator2

    class CacheCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.header = header

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            return None  # no data here: everything comes from the cache

        def read_calibration_cache(self) -> bytes:
            return data

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    expected = trt_cache.version_number(_numeric_version(trt.__version__))
    if trt_cache.parse_header(header).number != expected:
        raise InputError(f"calibration cache {calibration_cache} is for {header}, but TensorRT {trt.__version__} "
                         f"reads only TRT-{expected}-...: it would silently ignore it; rewrite the cache with "
                         f"--trt-version {trt.__version__}")
    calibrator = CacheCalibrator()
    config.int8_calibrator = calibrator
    return calibrator


class _DeviceCalibration:
    """8.5-10.x implicit INT8 calibrated on the device: batches go through pycuda to TensorRT's calibrator.

    TensorRT reads each calibration batch at the *opt* shape of the calibration profile (profile 0 when none is
    set) and ignores ``get_batch_size`` (NvInfer.h ``IBuilderConfig::setCalibrationProfile``: "MIN and MAX values
    will be overwritten by kOPT"). So the images are re-cut into batches of one size B, the calibration profile is
    pinned to min = opt = max = B, and the short last batch is completed with images from its own start (repeating
    real images rather than padding with zeros, which would skew the histograms).
    """

    def __init__(self, trt: ModuleType, ctx: cu.CudaContext, data: Iterable[np.ndarray]) -> None:
        batches = iter(data)
        first = next(batches, None)
        if first is None or len(first) == 0:
            raise InputError("calibration on the device got no batches; give at least one calibration batch")
        first = np.asarray(first, dtype=np.float32)
        self.batch_size = int(first.shape[0])
        self._rows = itertools.chain(first, (row for batch in batches for row in np.asarray(batch, dtype=np.float32)))
        outer = self

        class DeviceCalibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)
                self.header: str | None = None
                self.batches = 0
                self.cache: bytes | None = None
                self.buffer: cu.Buffer | None = None

            def get_batch_size(self) -> int:
                return outer.batch_size  # ignored by TensorRT for explicit-batch networks; kept truthful

            def get_batch(self, names: list[str]) -> list[int] | None:
                batch = outer._next_batch()
                if batch is None:
                    return None
                if self.buffer is None:  # called inside build_engine's context
                    self.buffer = cu.Buffer(ctx.cuda, batch.shape, np.float32)
                self.buffer.host[:] = batch
                ctx.cuda.memcpy_htod(self.buffer.device, self.buffer.host)
                self.batches += 1
                return [self.buffer.ptr]

            def read_calibration_cache(self) -> bytes | None:
                return None  # calibrate from the data

            def write_calibration_cache(self, cache: Any) -> None:
                self.cache = bytes(cache)
                self.header = self.cache.split(b"\n", 1)[0].decode(errors="replace")

        self.calibrator = DeviceCalibrator()

    def _next_batch(self) -> np.ndarray | None:
        rows = [row for _, row in zip(range(self.batch_size), self._rows)]
        if not rows:
            return None
        real = len(rows)
        while len(rows) < self.batch_size:  # a short last batch: repeat its own images
            rows.append(rows[(len(rows) - real) % real])
        return np.stack(rows)

    def pin_profile(self, builder: Any, network: Any, config: Any) -> None:
        """Calibrate at exactly the calibration batch: a calibration profile with min = opt = max = B."""
        calib_profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = (self.batch_size, *tuple(tensor.shape)[1:])
            calib_profile.set_shape(tensor.name, shape, shape, shape)
        if not config.set_calibration_profile(calib_profile):
            raise BackendError(f"TensorRT rejected the calibration profile of batch {self.batch_size}")

    def free(self) -> None:
        if self.calibrator.buffer is not None:
            self.calibrator.buffer.free()
            self.calibrator.buffer = None

    def save(self, path: Path | None) -> None:
        """Keep TensorRT's calibration cache so later builds need no data."""
        if path is not None and self.calibrator.cache is not None:
            write_bytes_atomic(path, self.calibrator.cache)


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


def _layer_summary(trt: ModuleType, serialized: Any, logger: _Logger, *, version_compatible: bool) -> dict[str, int]:
    """Count the engine's layers by output precision (Int8/Half/Float) from the engine inspector."""
    try:
        runtime = trt.Runtime(logger.trt_logger)
        if version_compatible:  # a version-compatible engine embeds host code and loads only when allowed
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(bytes(serialized))
        if engine is None:
            log.warning("no layer information: TensorRT cannot load the engine it built (%s)",
                        logger.last_errors("unknown error"))
            return {}
        info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    except (TypeError, ValueError, RuntimeError) as exc:
        log.debug("no layer information: %s", exc)
        return {}
    counts: Counter[str] = Counter()
    for layer in info.get("Layers", []):
        if isinstance(layer, dict):
            counts[_output_datatype(layer)] += 1
    return dict(sorted(counts.items()))


def _output_datatype(layer: dict[str, Any]) -> str:
    """The data type of a layer's first output. 8.x-10.x: one "Format/Datatype" string; 11.x splits it into
    "Format" and "DataType" (TensorRT 11 migration guide, IEngineInspector JSON output)."""
    outputs = layer.get("Outputs") or [{}]
    first = outputs[0] if isinstance(outputs[0], dict) else {}
    if "DataType" in first:
        return _datatype(str(first["DataType"]))
    return _datatype(str(first.get("Format/Datatype", "")))


_DATATYPES = {"int8": "Int8", "fp16": "Half", "half": "Half", "fp32": "Float", "float": "Float", "int32": "Int32",
              "int64": "Int64", "bf16": "BF16", "fp8": "FP8", "bool": "Bool", "uint8": "UInt8", "int4": "Int4",
              "fp4": "FP4"}


def _datatype(format_datatype: str) -> str:
    """The data type in an inspector "Format/Datatype", e.g. "Thirty-two wide channel vectorized row major Int8
    format" -> "Int8", "Row major linear FP32" -> "Float"."""
    for word in re.findall(r"[A-Za-z0-9]+", format_datatype):
        if word.lower() in _DATATYPES:
            return _DATATYPES[word.lower()]
    return "other"


def __getattr__(name: str) -> Any:
    # ``from edgeres.backends.tensorrt import TensorRTRunner`` keeps working; imported on first use because the
    # runner module imports this one
    if name == "TensorRTRunner":
        from edgeres.backends.tensorrt_runner import TensorRTRunner

        return TensorRTRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
