"""ONNX Runtime backend: builds FP32 / FP16 / INT8 ONNX artifacts and runs them on the CPU (CUDA EP when present).

* ``fp32`` — the exported ONNX, graph-optimised offline (ORT's *extended* level, portable across CPUs).
* ``fp16`` — :func:`edgeres.quantization.to_fp16`'s model (FP32 I/O, sensitive ops kept FP32). ORT's CPU kernels
  mostly lack FP16, so expect it to be *slower* than FP32 here; the build reports the measured ratio.
* ``int8`` — :func:`edgeres.quantization.quantize_qdq` with unsigned activations (zero point 128: the same grid as
  TensorRT's signed symmetric INT8), the form ORT's AVX2 kernels run fastest (see ``../shared/TENSORRT.md``).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from edgeres.version import __version__
from edgeres.backends.base import BackendName, BatchProfile, Precision, Sidecar, StageTimes, write_sidecar
from edgeres.card import ModelCard
from edgeres.errors import BackendError, InputError, ModelError
from edgeres.io import atomic_path, sha256_file

log = logging.getLogger(__name__)

NAME = BackendName.ONNXRUNTIME.value


def ort_version() -> str:
    """The installed ONNX Runtime version, e.g. ``"1.32.0"``."""
    return ort.__version__


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads do not help ORT's GEMMs); at least 1."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        proc, phys, core = None, "0", None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "processor":
                proc = int(value)
            elif key == "physical id":
                phys = value
            elif key == "core id":
                core = value
            elif not line.strip() and proc is not None:
                if proc in allowed:
                    cores.add((phys, core if core is not None else str(proc)))
                proc, phys, core = None, "0", None
    except (OSError, ValueError):
        cores = set()
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def default_providers() -> list[str]:
    """CUDA first when this ORT build has it, then the CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session_options(*, threads: int | None = None, spinning: bool = True,
                    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> ort.SessionOptions:
    """Session options edgeres uses everywhere.

    Args:
        threads: intra-op threads; None = physical cores.
        spinning: let idle pool threads spin; turn off when other threads (image decoding) share the cores.
        level: graph optimisation level.
    """
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = level
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _session(path: Path, so: ort.SessionOptions, providers: Sequence[str] | None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), so, providers=list(providers or default_providers()))
    except Exception as exc:  # ORT raises its own untyped errors (Fail, InvalidGraph, NotImplemented...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"ONNX Runtime {ort_version()} cannot load {path}: {first}") from exc


def _save_with_card(model: Any, out: Path, card: ModelCard) -> None:
    import onnx

    from edgeres.card import attach_card_to_onnx, card_for_file

    attach_card_to_onnx(model, card_for_file(card, out.parent))
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))


def _optimise(src: Path, out: Path, card: ModelCard) -> None:
    """Save ORT's *extended* graph optimisations (fusions, constant folding; no CPU-specific layouts)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="edgeres-ort-") as tmpdir:
        optimised = Path(tmpdir) / "optimised.onnx"
        so = session_options(threads=1, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        so.optimized_model_filepath = str(optimised)
        try:
            _session(src, so, ["CPUExecutionProvider"])
        except BackendError:
            _raise_write_cause(optimised, src.stat().st_size)  # ORT hides why its write failed; find out
            raise
        model = onnx.load(str(optimised))
    _save_with_card(model, out, card)


def _raise_write_cause(path: Path, size: int) -> None:
    """Write ``size`` bytes where ONNX Runtime failed to write ``path``: a full disk or a size limit then raises
    the OSError (with its errno) that ORT's own message leaves out. Returns when the write works."""
    probe = path.with_name(path.name + ".probe")
    try:
        with open(probe, "wb") as f:
            chunk = bytes(1 << 20)
            for start in range(0, size, len(chunk)):
                f.write(chunk[:min(len(chunk), size - start)])
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        if probe.exists():
            probe.unlink()


def build(onnx_path: str | Path, *, precision: Precision | str, out: str | Path, card: ModelCard,
          source_onnx_sha256: str, profile: BatchProfile = BatchProfile(), ranges: Any = None,
          int8_provenance: dict[str, Any] | None = None, threads: int | None = None,
          keep_fp32: Sequence[str] = ()) -> Sidecar:
    """Build an ONNX Runtime artifact and its sidecar.

    Args:
        onnx_path: the FP32 ONNX carrying the model card.
        precision: fp32, fp16 or int8.
        out: the artifact path (an ``.onnx`` file); the sidecar goes to ``<out>.json``.
        card: the model card to carry.
        source_onnx_sha256: sha256 of ``onnx_path``, recorded in the sidecar.
        profile: the batch sizes the artifact is meant for (ORT accepts any; runners enforce it like TensorRT).
        ranges: a :class:`calibration.ranges.Ranges`; required for int8.
        int8_provenance: what to record about the ranges (method, images, hashes).
        threads: recorded as the default intra-op thread count for runners of this artifact.
        keep_fp32: int8: node names left in FP32 (no Q/DQ).

    Returns:
        The sidecar written beside ``out``.
    """
    precision = Precision(precision)
    src, out = Path(onnx_path), Path(out)
    if out.suffix != ".onnx":
        raise InputError(f"an ONNX Runtime artifact must end in .onnx, got {out}")
    if precision is Precision.INT8 and ranges is None:
        raise InputError(f"int8 needs calibration ranges for {src}; pass --calib DIR or a ranges file")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Artifact and sidecar are one unit: the artifact is built under a hidden name, the sidecar written first and
    # the artifact renamed into place last, so no interruption leaves an artifact that nothing vouches for.
    staging = out.with_name(f".{out.stem}.{os.getpid()}.building.onnx")
    int8: dict[str, Any] = {}
    try:
        if precision is Precision.FP32:
            _optimise(src, staging, card)
        elif precision is Precision.FP16:
            from edgeres.quantization import to_fp16

            to_fp16(src, staging)
        else:
            from edgeres.quantization import quantize_qdq

            quantize_qdq(src, ranges, out=staging, activations="u8", keep_fp32=list(keep_fp32))
            int8 = {"mode": "explicit", "activations": "u8", **(int8_provenance or {})}
        _mark(staging, card, precision)
        _session(staging, session_options(threads=1), ["CPUExecutionProvider"])  # it loads before we vouch for it
        sidecar = Sidecar(
            backend=NAME, precision=precision.value, card=card, artifact_file=out.name,
            artifact_sha256=sha256_file(staging), source_onnx_sha256=source_onnx_sha256,
            backend_version=ort_version(), profile={"min": profile.min, "opt": profile.opt, "max": profile.max},
            int8=int8, fingerprint={"onnxruntime": ort_version(), "providers": default_providers()},
            options={"threads": threads}, edgeres_version=__version__,
        )
        write_sidecar(out, sidecar)
        os.replace(staging, out)
    finally:
        if staging.exists():
            staging.unlink()
    log.info("built %s (%s, onnxruntime %s)", out, precision.value, ort_version())
    return sidecar


ARTIFACT_METADATA_KEY = "edgeres.artifact"  # marks an ONNX file as an artifact edgeres built (--force may replace it)


def _mark(path: Path, card: ModelCard, precision: Precision) -> None:
    """Give a freshly built ONNX the model card and the artifact marker (one load and save)."""
    import onnx

    model = onnx.load(str(path))
    for prop in list(model.metadata_props):
        if prop.key == ARTIFACT_METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = ARTIFACT_METADATA_KEY, f"{NAME}/{precision.value}"
    _save_with_card(model, path, card)


def is_artifact(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX file that edgeres built as an artifact (it carries the marker)."""
    from edgeres.card import load_onnx
    from edgeres.errors import EdgeresError

    try:
        model = load_onnx(path)
    except EdgeresError:
        return False
    return any(prop.key == ARTIFACT_METADATA_KEY for prop in model.metadata_props)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_runnable(sidecar: Sidecar, artifact: Path) -> None:
    """Refuse an artifact built by a newer ONNX Runtime than this one (its graph may use ops we lack)."""
    built = sidecar.backend_version
    if built and _version_tuple(built) > _version_tuple(ort_version()):
        raise BackendError(
            f"{artifact} was built with onnxruntime {built} but {ort_version()} is installed; rebuild it here with "
            f"`edgeres build MODEL --backend onnxruntime --precision {sidecar.precision}` or upgrade onnxruntime"
        )


def profile_of(session: ort.InferenceSession) -> BatchProfile:
    """The batch sizes a plain ONNX accepts: fixed when its batch axis is a number, else 1:8:1024."""
    dim = session.get_inputs()[0].shape[0]
    if isinstance(dim, int) and dim > 0:
        return BatchProfile(dim, dim, dim)
    return BatchProfile(1, 8, 1024)


class OnnxRuntimeRunner:
    """Runs batches through an ONNX file with ONNX Runtime; reports compute time per call.

    Args:
        path: the ONNX file.
        card: its model card.
        precision: what the file holds (fp32, fp16, int8), for reports.
        profile: batch sizes to accept; None = what the file's input shape allows.
        threads: intra-op threads; None = physical cores.
        spinning: let idle ORT threads spin (fastest alone; turn off when decoding shares the cores).
        providers: ORT execution providers; None = CUDA when available, then CPU.
    """

    backend = NAME

    def __init__(self, path: str | Path, *, card: ModelCard, precision: Precision | str = Precision.FP32,
                 profile: BatchProfile | None = None, threads: int | None = None, spinning: bool = True,
                 providers: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.card = card
        self.precision = Precision(precision).value
        self.threads = threads or physical_cores()
        self._session = _session(self.path, session_options(threads=self.threads, spinning=spinning), providers)
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        self._input_fp16 = inp.type == "tensor(float16)"
        output = self._session.get_outputs()[0]
        classes = output.shape[-1] if len(output.shape) == 2 else None
        if isinstance(classes, int) and classes != card.num_classes:
            raise ModelError(f"{self.path} gives {classes} scores per image but its model card names "
                             f"{card.num_classes} classes: labels would be wrong; rebuild it from the model's own "
                             "export")
        self._output_names = [output.name]
        self.profile = profile or profile_of(self._session)
        self._sample_shape = tuple(card.preprocess.input_shape)
        self.providers = self._session.get_providers()
        self.last_stage_times: StageTimes | None = None

    def __enter__(self) -> OnnxRuntimeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (float32, the card's layout) and return the logits, shape (batch, classes)."""
        if self._session is None:
            raise BackendError(f"runner for {self.path} is closed")
        if batch.ndim != 4 or batch.shape[1:] != self._sample_shape:
            raise InputError(f"batch must have shape (N, {', '.join(map(str, self._sample_shape))}) for "
                             f"{self.path.name}, got {tuple(batch.shape)}")
        n = batch.shape[0]
        if not self.profile.min <= n <= self.profile.max:
            raise InputError(f"batch size {n} is outside {self.path.name}'s profile {self.profile}; rebuild with "
                             f"--batch covering it")
        if self._input_fp16:
            batch = batch.astype(np.float16)
        elif batch.dtype != np.float32:
            batch = batch.astype(np.float32)
        start = time.perf_counter()
        logits = self._session.run(self._output_names, {self._input_name: batch})[0]
        ms = (time.perf_counter() - start) * 1e3
        self.last_stage_times = StageTimes(compute_ms=ms, total_ms=ms)
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)

    def close(self) -> None:
        self._session = None
