"""Backends behind one interface: :func:`build` writes an artifact (+ sidecar), :func:`open` returns a runner.

``backend="auto"`` picks TensorRT when its Python bindings import and a CUDA device exists, else ONNX Runtime,
and logs which one and why (:func:`choose_backend`). TensorRT is imported lazily, only here and only when
asked for, so everything works on machines without it::

    path = edgeres.backends.build("m.onnx", precision="int8", out="m.int8.onnx", ranges=ranges)
    with edgeres.backends.open(path) as runner:
        logits = runner.infer(batch)
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from edgeres.backends.base import (
    BackendName, BatchProfile, Precision, Runner, Sidecar, StageTimes, read_sidecar_for, sidecar_path,
    write_sidecar,
)
from edgeres.backends.options import TensorRTOptions
from edgeres.errors import BackendError, BackendUnavailable, InputError, ModelError
from edgeres.io import sha256_file

log = logging.getLogger(__name__)

__all__ = [
    "BackendName", "BatchProfile", "Precision", "Runner", "Sidecar", "StageTimes", "TensorRTOptions", "artifact_suffix",
    "build", "choose_backend", "open", "read_sidecar_for", "sidecar_path", "write_sidecar",
]

_ORT_OPTIONS = {"threads", "spinning", "providers"}


def _tensorrt() -> ModuleType:
    """The TensorRT backend module, imported only when needed (it imports TensorRT lazily itself)."""
    try:
        from edgeres.backends import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(f"the TensorRT backend cannot be imported ({exc})") from exc
    return tensorrt


def _tensorrt_status() -> tuple[bool, str]:
    try:
        return _tensorrt().is_available()
    except BackendUnavailable as exc:
        return False, str(exc)


def choose_backend(backend: BackendName | str = BackendName.AUTO) -> tuple[BackendName, str]:
    """Resolve ``auto`` to a concrete backend.

    Returns:
        The backend and a short reason, e.g. ``(ONNXRUNTIME, "TensorRT unavailable: no CUDA device")``.

    Raises:
        BackendUnavailable: when TensorRT is asked for by name and cannot run here.
    """
    try:
        backend = BackendName(backend)
    except ValueError:
        choices = ", ".join(b.value for b in BackendName)
        raise InputError(f"unknown backend {backend!r}; choose one of {choices}") from None
    if backend is BackendName.ONNXRUNTIME:
        return backend, "requested with --backend onnxruntime"
    ok, why = _tensorrt_status()
    if backend is BackendName.TENSORRT:
        if not ok:
            raise BackendUnavailable(f"TensorRT cannot run here ({why}); use --backend onnxruntime or auto")
        return backend, "requested with --backend tensorrt"
    if ok:
        reason = f"auto: TensorRT available ({why})" if why else "auto: TensorRT and a CUDA device are available"
        choice = BackendName.TENSORRT
    else:
        reason = f"auto: TensorRT unavailable ({why}), using ONNX Runtime on the CPU"
        choice = BackendName.ONNXRUNTIME
    log.info("backend %s — %s", choice.value, reason)
    return choice, reason


def artifact_suffix(backend: BackendName | str) -> str:
    """File suffix of an artifact: ``.engine`` for TensorRT, ``.onnx`` for ONNX Runtime."""
    return ".engine" if BackendName(backend) is BackendName.TENSORRT else ".onnx"


def build(onnx_path: str | Path, *, backend: BackendName | str = BackendName.AUTO, precision: Precision | str,
          out: str | Path, profile: BatchProfile = BatchProfile(), ranges: Any = None,
          int8_provenance: dict[str, Any] | None = None, threads: int | None = None,
          tensorrt: TensorRTOptions = TensorRTOptions(), keep_fp32: Sequence[str] = (),
          progress: bool = True) -> Path:
    """Build an artifact (engine or ONNX) plus its sidecar from an FP32 ONNX that carries the model card.

    Args:
        onnx_path: the FP32 ONNX (from ``edgeres export``).
        backend: auto, tensorrt or onnxruntime.
        precision: fp32, fp16 or int8.
        out: the artifact path; see :func:`artifact_suffix`.
        profile: batch sizes the artifact must accept (min:opt:max).
        ranges: calibration ranges (``calibration.ranges.Ranges``); required for int8.
        int8_provenance: recorded in the sidecar's ``int8`` section (ranges file, method, images, hashes).
        threads: ONNX Runtime intra-op threads recorded as the runner default.
        tensorrt: how TensorRT builds the engine (ONNX Runtime ignores them, with a warning).
        keep_fp32: int8: node names left without Q/DQ (in float: FP32 on ONNX Runtime, ``high_precision`` on
            TensorRT, held there by precision constraints on weakly typed builds).
        progress: TensorRT: show build progress.

    Returns:
        The artifact path.
    """
    from edgeres.card import read_onnx_card

    src = Path(onnx_path)
    if not src.is_file():
        raise InputError(f"ONNX model {src} not found; export one with `edgeres export`")
    precision = Precision(precision)
    chosen, _reason = choose_backend(backend)
    card = read_onnx_card(str(src))
    if card is None:
        raise ModelError(f"{src} carries no edgeres model card; export it with `edgeres export` first")
    if precision is Precision.INT8 and ranges is None:
        raise InputError(f"int8 needs calibration ranges for {src}; pass --calib DIR")
    out = Path(out)
    source_sha = sha256_file(src)
    if chosen is BackendName.ONNXRUNTIME:
        from edgeres.backends import onnxruntime as ort_backend

        ignored = tensorrt.flags_set()
        if ignored:
            log.warning("ONNX Runtime ignores the TensorRT option(s) %s", ", ".join(ignored))

        ort_backend.build(src, precision=precision, out=out, card=card, source_onnx_sha256=source_sha,
                          profile=profile, ranges=ranges, int8_provenance=int8_provenance, threads=threads,
                          keep_fp32=keep_fp32)
        return out
    return _build_tensorrt(src, precision=precision, out=out, card=card, source_sha=source_sha, profile=profile,
                           ranges=ranges, int8_provenance=int8_provenance or {}, options=tensorrt,
                           keep_fp32=tuple(keep_fp32), progress=progress)


def _build_tensorrt(src: Path, *, precision: Precision, out: Path, card: Any, source_sha: str,
                    profile: BatchProfile, ranges: Any, int8_provenance: dict[str, Any], options: TensorRTOptions,
                    keep_fp32: tuple[str, ...] = (), progress: bool = True) -> Path:
    trt = _tensorrt()
    onnx_for_trt, cache = src, None
    int8: dict[str, Any] = {}
    if precision is Precision.INT8 and options.int8_mode == "explicit":
        onnx_for_trt = out.with_name(out.stem + ".qdq.onnx")
        int8 = _write_qdq_for_tensorrt(trt, src, ranges, onnx_for_trt, options=options, keep_fp32=keep_fp32)
    elif precision is Precision.INT8:
        cache = out.with_name(out.stem + ".cache")
        int8 = _write_trt_cache(trt, ranges, cache)
    trt.build_engine(
        onnx_for_trt, out=out, precision=precision, card=card, source_onnx_sha256=source_sha, profile=profile,
        options=options, calibration_cache=cache, keep_float_layers=keep_fp32,
        int8_provenance={**int8, **int8_provenance}, progress=progress,
    )
    return out


def _write_qdq_for_tensorrt(trt: ModuleType, src: Path, ranges: Any, out: Path, *, options: TensorRTOptions,
                            keep_fp32: tuple[str, ...]) -> dict[str, Any]:
    """Explicit INT8: the signed Q/DQ model TensorRT gets, kept beside the engine (its CPU accuracy predicts the
    engine's); returns the sidecar's int8 provenance of it."""
    from edgeres.quantization import quantize_qdq

    if options.high_precision == "fp16" and trt.qdq_builds_strongly_typed():
        import tempfile

        from edgeres.quantization import to_fp16

        # strongly typed TensorRT takes the unquantized part's precision from the ONNX: the kept Q/DQ
        # model is exactly what TensorRT parses, so its CPU accuracy still predicts the engine's
        with tempfile.TemporaryDirectory(prefix="edgeres-qdq-") as tmp:
            staged = Path(tmp) / "fp32-rest.qdq.onnx"
            quantize_qdq(src, ranges, out=staged, activations="s8", keep_fp32=keep_fp32)
            to_fp16(staged, out)
    else:
        quantize_qdq(src, ranges, out=out, activations="s8", keep_fp32=keep_fp32)
    return {"mode": "explicit", "activations": "s8", "qdq_onnx": out.name, "qdq_onnx_sha256": sha256_file(out)}


def _write_trt_cache(trt: ModuleType, ranges: Any, cache: Path) -> dict[str, Any]:
    """Implicit INT8: the ranges as the calibration cache of the calibrator TensorRT would have used."""
    from calibration import trt_cache

    algorithm = trt_cache.algorithm_for(getattr(ranges, "method", ""))
    trt_cache.write(cache, ranges, trt_version=trt.trt_version(), algorithm=algorithm)
    return {"mode": "implicit", "cache": cache.name, "cache_sha256": sha256_file(cache), "algorithm": algorithm}


def _plain_onnx_runner(path: Path, opts: dict[str, Any]) -> Runner:
    """A plain ONNX with the card in its metadata (from export or quantize) runs on ORT as is."""
    import onnx

    from edgeres.backends.onnxruntime import OnnxRuntimeRunner
    from edgeres.card import card_from_file, card_from_onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX file ({exc})") from exc
    card = card_from_onnx(model)
    if card is None:
        raise ModelError(f"{path} has no sidecar and carries no edgeres model card; export it with `edgeres export` "
                         f"or build it with `edgeres build`")
    card = card_from_file(card, path.parent)  # its dataset paths are relative to the file
    ops = {node.op_type for node in model.graph.node}
    fp16 = any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    precision = Precision.INT8 if "QuantizeLinear" in ops or "QLinearConv" in ops else (
        Precision.FP16 if fp16 else Precision.FP32)
    del model
    return OnnxRuntimeRunner(path, card=card, precision=precision, **opts)


def open(artifact: str | Path, **opts: Any) -> Runner:  # noqa: A001 - the backend's verb, like io.open
    """Open an artifact for inference.

    Args:
        artifact: the artifact file (engine or ``.onnx``) with its sidecar, or a plain ONNX carrying the card.
        **opts: runner options: ``threads``, ``spinning``, ``providers`` (ONNX Runtime).

    Returns:
        A runner (a context manager).

    Raises:
        BackendError: the sidecar is missing or unreadable, the file does not match it, or this machine's
            backend/version cannot run it; the message says what to rebuild.
    """
    path = Path(artifact)
    unknown = set(opts) - _ORT_OPTIONS  # TensorRT runners take no options
    if unknown:
        raise InputError(f"unknown runner option(s) {', '.join(sorted(unknown))} for {path}")
    if not path.is_file():
        raise InputError(f"artifact {path} not found; build one with `edgeres build`")
    ort_opts = {k: v for k, v in opts.items() if k in _ORT_OPTIONS and v is not None}
    if not sidecar_path(path).exists():
        if path.suffix == ".onnx":
            return _plain_onnx_runner(path, ort_opts)
        raise BackendError(f"{path} has no sidecar {sidecar_path(path).name}, so nothing vouches for it; rebuild "
                           f"it with `edgeres build MODEL.onnx --precision ...`")
    sidecar = read_sidecar_for(path)
    rebuild = (f"`edgeres build MODEL.onnx --precision {sidecar.precision} --backend {sidecar.backend}`")
    actual = sha256_file(path)
    if actual != sidecar.artifact_sha256:
        raise BackendError(f"{path} does not match its sidecar (sha256 {actual[:12]}… != {sidecar.artifact_sha256[:12]}…):"
                           f" the file changed after it was built; rebuild it with {rebuild}")
    if sidecar.backend == BackendName.ONNXRUNTIME.value:
        from edgeres.backends.onnxruntime import OnnxRuntimeRunner, check_runnable

        check_runnable(sidecar, path)
        if "threads" not in ort_opts and sidecar.options.get("threads"):
            ort_opts["threads"] = int(sidecar.options["threads"])
        return OnnxRuntimeRunner(path, card=sidecar.card, precision=sidecar.precision,
                                 profile=BatchProfile(**sidecar.profile), **ort_opts)
    if sidecar.backend == BackendName.TENSORRT.value:
        return _open_tensorrt(path, sidecar, rebuild)
    raise BackendError(f"{path} was built for unknown backend {sidecar.backend!r}; rebuild it with {rebuild}")


def _open_tensorrt(path: Path, sidecar: Sidecar, rebuild: str) -> Runner:
    ok, why = _tensorrt_status()
    if not ok:
        raise BackendUnavailable(
            f"{path} is a TensorRT {sidecar.backend_version} engine but TensorRT cannot run here ({why}); build an "
            f"ONNX Runtime artifact instead: `edgeres build MODEL.onnx --precision {sidecar.precision} "
            f"--backend onnxruntime`"
        )
    trt = _tensorrt()
    installed = trt.trt_version()
    portable = bool(sidecar.options.get("version_compatible") or sidecar.fingerprint.get("version_compatible"))
    if sidecar.backend_version and not trt.runtime_can_load(sidecar.backend_version, installed,
                                                            version_compatible=portable):
        why = ("a version-compatible engine runs only on the same or a later TensorRT" if portable
               else "engines are bound to their TensorRT version")
        raise BackendError(f"{path} was built by TensorRT {sidecar.backend_version} but {installed} is installed "
                           f"({why}): rebuild it here with {rebuild}")
    return trt.TensorRTRunner(path)
