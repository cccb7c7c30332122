"""The build pipeline behind ``edgeres build``: checkpoint → ONNX → (ranges) → artifact → verification.

``build_artifact`` accepts an exported ONNX or a ``.pt`` checkpoint (exported first), picks the backend
(``auto``: TensorRT when it can run here, else ONNX Runtime, with the reason), calibrates for INT8 — reusing a
ranges file (in the output folder, or ``edgeres calibrate``'s beside the model) only when its provenance (model
sha256, method and its options, image count, calibration-set manifest, preprocessing) matches, never a stale
one — builds the artifact and its sidecar, and finally checks the
artifact against the FP32 ONNX on a few calibration images (top-1 agreement, max |Δlogit|, speed ratio)::

    result = build_artifact("runs/x/model.pt", precision="int8", out_dir="runs/x")
    result.artifact, result.backend_reason, result.verification.top1_agreement
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeres.backends import (BackendName, BatchProfile, Precision, Sidecar, TensorRTOptions, artifact_suffix,
                              choose_backend, sidecar_path)
from edgeres.card import ModelCard
from edgeres.errors import InputError, ModelError

log = logging.getLogger(__name__)

VERIFY_IMAGES = 16  # "a few calibration images"
SPEED_REPEATS = 3  # timed passes over the verification images (the best is kept)
CALIB_SEED = 0
EVAL_IMAGES = 500  # labelled held-out images an accuracy budget (--max-drop) is measured on


@dataclass
class Verification:
    """The artifact against the FP32 ONNX on the same images."""

    images: int
    source: str  # "calibration images" or "random inputs" (no images known)
    top1_agreement: float  # 0..1
    max_abs_diff: float  # largest |Δlogit|
    batch: int
    reference_ms: float  # best per-image time of the FP32 ONNX on ONNX Runtime (CPU)
    artifact_ms: float  # best per-image time of the artifact

    @property
    def speedup(self) -> float:
        """FP32-ONNX time / artifact time: above 1 means the artifact is faster."""
        return self.reference_ms / self.artifact_ms if self.artifact_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "source": self.source, "top1_agreement": self.top1_agreement,
                "max_abs_diff": self.max_abs_diff, "batch": self.batch, "reference_ms_per_image": self.reference_ms,
                "artifact_ms_per_image": self.artifact_ms, "speedup_vs_fp32_onnx": self.speedup}


@dataclass
class BuildResult:
    """What ``build_artifact`` made, from what, on which backend and why, and how it compares to FP32."""

    artifact: Path
    sidecar: Sidecar
    backend: str
    backend_reason: str
    precision: str
    onnx: Path  # the FP32 ONNX it was built from
    exported: bool  # the ONNX was exported from a checkpoint by this build
    ranges: Path | None = None
    ranges_reused: bool | None = None
    verification: Verification | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": str(self.artifact), "backend": self.backend, "backend_reason": self.backend_reason,
            "backend_version": self.sidecar.backend_version, "precision": self.precision, "onnx": str(self.onnx),
            "exported": self.exported, "ranges": str(self.ranges) if self.ranges else None,
            "ranges_reused": self.ranges_reused, "profile": self.sidecar.profile,
            "verification": self.verification.to_dict() if self.verification else None,
            "notes": list(self.notes), "seconds": round(self.seconds, 3),
        }


def build_artifact(model_path: str | os.PathLike[str], *, precision: Precision | str,
                   backend: BackendName | str = BackendName.AUTO, calib_dir: str | os.PathLike[str] | None = None,
                   int8: Int8Options | None = None, profile: BatchProfile = BatchProfile(),
                   out_dir: str | os.PathLike[str] | None = None, force: bool = False, threads: int | None = None,
                   verify_images: int = VERIFY_IMAGES, quiet: bool = False,
                   tensorrt: TensorRTOptions = TensorRTOptions()) -> BuildResult:
    """Build an artifact for ``backend`` at ``precision`` and verify it against the FP32 ONNX.

    Args:
        model_path: an exported ``.onnx`` (with its card) or an edgeres ``.pt`` checkpoint (exported first).
        precision: fp32, fp16 or int8.
        backend: auto, tensorrt or onnxruntime.
        calib_dir: calibration images for int8, and the images the verification runs on at every precision;
            None = the calibration set recorded in the model card.
        int8: how an int8 build calibrates and what it leaves in float (:class:`Int8Options`); its float
            options (``max_drop``, ``exclude_layers``, ``equalize``) are refused at other precisions.
        profile: batch sizes the artifact must accept.
        out_dir: where the artifact (and ranges, and an exported ONNX) go; None = beside the model.
        force: replace an existing artifact (and re-export a checkpoint).
        threads: ONNX Runtime intra-op threads recorded for the artifact's runners.
        verify_images: images used for the check against FP32 (0 skips it).
        quiet: no progress bars.
        tensorrt: how TensorRT builds the engine (int8 mode, workspace, timing cache, optimisation level, DLA core,
            version compatibility, the int8 float layers' precision, TF32); ONNX Runtime ignores them.

    Returns:
        The artifact, the chosen backend and why, the ranges used and the verification numbers.
    """
    from edgeres.io import check_writable_dir, exclusive_lock

    start = time.perf_counter()
    precision = Precision(precision)
    int8 = int8 if int8 is not None else Int8Options()
    int8.check_applies(precision)
    model_path = Path(model_path)
    out_dir = Path(out_dir) if out_dir is not None else model_path.parent
    chosen, reason = choose_backend(backend)
    _check_model_path(model_path)
    artifact = out_dir / f"{model_path.stem}.{precision.value}{artifact_suffix(chosen)}"
    if model_path.is_file() and artifact.resolve() == model_path.resolve():
        raise InputError(f"the artifact would overwrite its source {model_path}; choose another --out")
    check_writable_dir(out_dir)
    created = not out_dir.exists()
    try:
        with exclusive_lock(artifact, what="artifact"):  # two builds into one --out: the second is refused
            return _build_locked(model_path, artifact, precision=precision, chosen=chosen, reason=reason,
                                 calib_dir=calib_dir, int8=int8, profile=profile, out_dir=out_dir, force=force,
                                 threads=threads, verify_images=verify_images, quiet=quiet, start=start,
                                 tensorrt=tensorrt)
    finally:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed build leaves no empty --out folder behind


def _build_locked(model_path: Path, artifact: Path, *, precision: Precision, chosen: BackendName, reason: str,
                  calib_dir: Any, int8: Int8Options, profile: BatchProfile, out_dir: Path, force: bool,
                  threads: int | None, verify_images: int, quiet: bool, start: float,
                  tensorrt: TensorRTOptions) -> BuildResult:
    from edgeres import backends
    from edgeres.backends import read_sidecar_for
    from edgeres.io import refuse_overwriting_inputs

    refuse_overwriting_inputs({"MODEL": model_path, "--calib": calib_dir},
                              {"the artifact": artifact, "its sidecar": sidecar_path(artifact),
                               "--timing-cache": tensorrt.timing_cache})
    if artifact.exists() and not _made_by_edgeres(artifact):
        raise InputError(f"{artifact} exists and is not an edgeres artifact (no {sidecar_path(artifact).name}); "
                         "move it, or build into another folder with --out")
    if artifact.exists() and not force:
        raise InputError(f"{artifact} already exists; pass --force to rebuild it")
    onnx_path, exported = _onnx_for(model_path, out_dir=out_dir, force=force, quiet=quiet)
    card = _servable_card(onnx_path, profile)
    ranges = ranges_path = reused = None
    provenance: dict[str, Any] = {}
    keep: list[str] = []
    if precision is Precision.INT8:
        ranges, ranges_path, reused, provenance, keep = _int8_plan(onnx_path, card, int8, calib_dir=calib_dir,
                                                                   out_dir=out_dir, force=force, quiet=quiet)
    backends.build(onnx_path, backend=chosen, precision=precision, out=artifact, profile=profile, ranges=ranges,
                   int8_provenance=provenance, threads=threads, progress=not quiet, tensorrt=tensorrt,
                   keep_fp32=keep)
    result = BuildResult(artifact=artifact, sidecar=read_sidecar_for(artifact), backend=chosen.value,
                         backend_reason=reason, precision=precision.value, onnx=onnx_path, exported=exported,
                         ranges=ranges_path, ranges_reused=reused)
    if verify_images > 0:
        inputs, source = verification_inputs(onnx_path, card, calib_dir=calib_dir, count=verify_images)
        result.verification = verify(artifact, onnx_path, inputs, source=source, profile=profile, threads=threads)
        result.notes += _notes(result)
    result.seconds = time.perf_counter() - start
    return result


def _int8_plan(onnx_path: Path, card: ModelCard, int8: Int8Options, *, calib_dir: Any, out_dir: Path, force: bool,
               quiet: bool) -> tuple[Any, Path, bool, dict[str, Any], list[str]]:
    """The ranges (reused or calibrated now), their file and whether reused, the sidecar's int8 provenance, and the
    layers to keep in float."""
    exclude = int8.layers(onnx_path)
    ranges, ranges_path, reused = _ranges_for(onnx_path, card, calib_dir=calib_dir, method=int8.calib_method,
                                              images=int8.calib_images, out_dir=out_dir, force=force, quiet=quiet,
                                              equalize=int8.equalize)
    provenance = {"ranges_file": ranges_path.name, "method": ranges.method, "num_images": ranges.num_images,
                  "model_sha256": ranges.model_sha256, "manifest_sha256": ranges.manifest_sha256,
                  "ranges_reused": reused, "equalized": int8.equalize, "options": int8.to_dict()}
    keep = int8.plan(onnx_path, ranges, exclude, quiet=quiet, provenance=provenance)
    return ranges, ranges_path, reused, provenance, keep


def _onnx_for(model_path: Path, *, out_dir: Path, force: bool, quiet: bool) -> tuple[Path, bool]:
    """The FP32 ONNX to build from: the file itself, or the checkpoint exported beside the artifact."""
    _check_model_path(model_path)
    if model_path.suffix.lower() == ".onnx":
        return model_path, False
    from edgeres.exporting import export_onnx

    onnx_path = out_dir / f"{model_path.stem}.onnx"
    if onnx_path.exists() and not force:
        # decided by content, never by file time: `cp -p`, rsync and git keep or fake time stamps
        from edgeres.exporting import checkpoint_sha256_of
        from edgeres.io import sha256_file

        recorded = checkpoint_sha256_of(_load_onnx(onnx_path))
        if recorded == sha256_file(model_path):
            log.info("reusing %s, exported from this very %s (pass --force to re-export)", onnx_path, model_path)
            return onnx_path, False
        why = (f"was exported from another checkpoint (sha256 {recorded[:12]}…)" if recorded else
               "does not record which checkpoint it was exported from")
        raise InputError(f"{onnx_path} {why}, not from {model_path}; pass --force to re-export it")
    if onnx_path.exists() and not _is_export(onnx_path):
        raise InputError(f"{onnx_path} is in the way of exporting {model_path} and was not written by edgeres (no "
                         "model card); move it, or build into another folder with --out")
    log.info("exporting %s to %s", model_path, onnx_path)
    export_onnx(model_path, out=onnx_path, force=True, verify=True, quiet=quiet)
    return onnx_path, True


def _check_model_path(model_path: Path) -> None:
    if not model_path.is_file():
        raise InputError(f"model {model_path} not found; pass an exported .onnx or an edgeres .pt checkpoint")
    if model_path.suffix.lower() not in (".onnx", ".pt", ".pth"):
        raise InputError(f"cannot build from {model_path}: expected an .onnx model or a .pt checkpoint")


def _made_by_edgeres(path: Path) -> bool:
    """Whether the artifact file in the way is edgeres's own, which ``--force`` may replace: it has its sidecar,
    or it is an ONNX carrying the artifact marker (a build interrupted by an older edgeres, a lost sidecar).
    Anything else, say an `edgeres quantize` output under that name, is the user's."""
    if sidecar_path(path).exists():
        return True
    if path.suffix != ".onnx":
        return False
    from edgeres.backends.onnxruntime import is_artifact

    return is_artifact(path)


def _is_export(path: Path) -> bool:
    """Whether an ONNX in the way of an export carries an edgeres model card (so edgeres wrote it)."""
    from edgeres.card import read_onnx_card

    try:
        return read_onnx_card(path) is not None
    except ModelError:
        return False


def _load_onnx(onnx_path: Path) -> Any:
    from edgeres.card import load_onnx

    return load_onnx(onnx_path)


def _servable_card(onnx_path: Path, profile: BatchProfile) -> ModelCard:
    """The model's card, once the model is known to be one edgeres can build and serve (nothing written yet)."""
    from edgeres.card import card_from_file, card_from_onnx
    from edgeres.servable import check_servable

    model = _load_onnx(onnx_path)
    card = card_from_onnx(model)
    if card is None:
        raise ModelError(f"{onnx_path} carries no edgeres model card; export it with `edgeres export`")
    card = card_from_file(card, onnx_path.parent)
    check_servable(model, card, onnx_path, profile=profile)
    return card


# --- calibration ranges ---------------------------------------------------------------------------------------

def calibration_images(onnx_path: Path, card: ModelCard, *, calib_dir: str | os.PathLike[str] | None,
                       images: int) -> list[Path]:
    """The calibration images ``edgeres calibrate`` would sample: from ``calib_dir``, else the model card's
    calibration list or training set.

    Raises:
        InputError: no calibration set is given or recorded; the message says how to pass one.
    """
    from edgeres.calibrating import select_images

    try:
        return select_images(onnx_path, card, data=calib_dir, images=images, batch_size=1, seed=CALIB_SEED,
                             option="--calib")
    except InputError as exc:
        if calib_dir is None:
            raise InputError(f"int8 needs calibration images and none could be found ({str(exc).split(';')[0]}); "
                             "pass --calib DIR (a folder of training-like images, e.g. your train/ folder) to "
                             "`edgeres build`") from exc
        raise


def _reusable(path: Path, *, model_sha: str, method: str, images: int, manifest: str, card: ModelCard) -> Any:
    """The ranges at ``path`` when every piece of provenance matches, else None (logged)."""
    from calibration import make_collector
    from calibration.errors import CalibrationError
    from calibration.ranges import Ranges

    if not path.is_file():
        return None
    try:
        ranges = Ranges.load(path)
    except CalibrationError as exc:
        log.warning("not reusing %s: %s", path, exc)
        return None
    wanted = {"model_sha256": model_sha, "method": method, "num_images": images, "manifest_sha256": manifest,
              "preprocess": card.preprocess.to_dict(), "options": dict(make_collector(method).options)}
    have = {"model_sha256": ranges.model_sha256, "method": ranges.method, "num_images": ranges.num_images,
            "manifest_sha256": ranges.manifest_sha256, "preprocess": ranges.preprocess,
            # the collector's own options (bins, percentile); edgeres.calibrating may record more beside them
            "options": {k: ranges.options.get(k) for k in wanted["options"]}}
    stale = [k for k in wanted if _norm(have[k]) != _norm(wanted[k])]
    if stale:
        log.info("not reusing %s: its %s differ(s) from this build's; recalibrating", path, ", ".join(stale))
        return None
    return ranges


def _norm(value: Any) -> Any:
    """Compare JSON round-tripped values (tuples vs lists) as equal."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Int8Options:
    """How an INT8 build calibrates and what it leaves in float; recorded in the sidecar's ``int8`` section
    (``options``, from :meth:`to_dict`)."""

    calib_method: str = "entropy"  # entropy, minmax, percentile or mse
    calib_images: int = 512  # calibration images to sample
    max_drop: float | None = None  # top-1 budget in pp vs FP32: the most sensitive layers stay in float until met
    eval_data: Path | None = None  # labelled held-out images for max_drop; None: the card's validation set
    exclude_layers: tuple[str, ...] = ()  # ONNX node names always left in float
    equalize: bool = False  # cross-layer range equalisation before calibration

    def __post_init__(self) -> None:
        from calibration import parse_method
        from calibration.errors import CalibrationError

        try:
            object.__setattr__(self, "calib_method", parse_method(self.calib_method).value)
        except CalibrationError as exc:
            raise InputError(str(exc)) from exc
        if self.max_drop is not None and not self.max_drop >= 0:  # NaN too: no drop would ever exceed it
            raise InputError(f"--max-drop must be 0 or more percentage points, got {self.max_drop}")
        if not self.calib_images >= 1:
            raise InputError(f"--calib-images must be at least 1, got {self.calib_images}")
        object.__setattr__(self, "exclude_layers", tuple(self.exclude_layers))
        if self.eval_data is not None:
            object.__setattr__(self, "eval_data", Path(self.eval_data))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings, layers as a list)."""
        return {"calib_method": self.calib_method, "calib_images": self.calib_images, "max_drop": self.max_drop,
                "eval_data": str(self.eval_data) if self.eval_data is not None else None,
                "exclude_layers": list(self.exclude_layers), "equalize": self.equalize}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Int8Options:
        """The options a sidecar's ``int8.options`` records (keys it lacks take the defaults)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def check_applies(self, precision: Precision) -> None:
        """The float options mean nothing below int8: a one-line error before any work."""
        if precision is not Precision.INT8 and (self.max_drop is not None or self.exclude_layers or self.equalize):
            raise InputError("--max-drop, --exclude-layers and --equalize apply to --precision int8 only")

    def layers(self, onnx_path: Path) -> list[str]:
        """The --exclude-layers, each checked to name a quantizable layer of the model (before calibrating)."""
        import onnx

        from edgeres.sensitivity import check_layer_names

        return check_layer_names(onnx.load(str(onnx_path)), self.exclude_layers) if self.exclude_layers else []

    def plan(self, onnx_path: Path, ranges: Any, exclude: list[str], *, quiet: bool,
             provenance: dict[str, Any]) -> list[str]:
        """The layers to keep in float (recorded in ``provenance``, the sidecar's int8 section)."""
        from edgeres.sensitivity import fit_budget, labelled_images

        if self.max_drop is None:
            if exclude:
                provenance["high_precision_layers"] = list(exclude)
            return list(exclude)
        x, y, where = labelled_images(onnx_path, data=self.eval_data, limit=EVAL_IMAGES)
        plan = fit_budget(onnx_path, ranges, x, y, max_drop_pp=self.max_drop, exclude=exclude,
                          equalize=self.equalize, quiet=quiet)
        provenance.update(plan.to_dict(), eval_data=where)
        return plan.kept


def _ranges_for(onnx_path: Path, card: ModelCard, *, calib_dir: Any, method: str, images: int, out_dir: Path,
                force: bool, quiet: bool, equalize: bool = False) -> tuple[Any, Path, bool]:
    from calibration import content_hash
    from calibration.errors import CalibrationError

    from edgeres.calibrating import DEFAULT_BATCH, calibrate
    from edgeres.io import sha256_file

    try:  # method: already checked and normalised by Int8Options
        chosen = calibration_images(onnx_path, card, calib_dir=calib_dir, images=images)
        manifest = content_hash(chosen)  # by content: a `cd` does not change it
    except CalibrationError as exc:
        raise InputError(str(exc)) from exc
    form = f"{method}.eq" if equalize else method  # ranges of the equalised graph are another file
    path = out_dir / f"{onnx_path.stem}.{form}.ranges.json"
    model_sha = sha256_file(onnx_path)
    # this build's own file first, then what `edgeres calibrate` writes beside the model (its --out default and
    # the method-named form); each is reused only if every piece of provenance matches
    candidates = dict.fromkeys([path, onnx_path.with_name(f"{onnx_path.stem}.{form}.ranges.json"),
                                onnx_path.with_name(f"{onnx_path.stem}.ranges.json")])
    for candidate in candidates:
        ranges = _reusable(candidate, model_sha=model_sha, method=method, images=len(chosen), manifest=manifest,
                           card=card)
        if ranges is not None and bool(ranges.options.get("equalize", False)) != equalize:
            log.info("not reusing %s: it was calibrated %s range equalisation", candidate,
                     "with" if ranges.options.get("equalize") else "without")
            ranges = None
        if ranges is not None:
            log.info("reusing ranges %s (same model, method, options, %d images, calibration set)", candidate,
                     len(chosen))
            return ranges, candidate, True
    if path.exists() and not force:  # a ranges file that does not fit is the user's until --force says otherwise
        raise InputError(f"{path} exists but does not fit this build (another model, method, image count or "
                         "calibration set: see the log); pass --force to recalibrate and replace it, or move it")
    ranges = calibrate(onnx_path, data=calib_dir, method=method, images=len(chosen),
                       batch_size=min(DEFAULT_BATCH, len(chosen)), seed=CALIB_SEED, quiet=quiet, equalize=equalize)
    try:
        ranges.save(path)
    except CalibrationError as exc:
        raise InputError(str(exc)) from exc
    return ranges, path, False


# --- verification ---------------------------------------------------------------------------------------------

def verification_inputs(onnx_path: Path, card: ModelCard, *, calib_dir: Any = None, count: int = VERIFY_IMAGES,
                        seed: int = 0) -> tuple[np.ndarray, str]:
    """``count`` preprocessed calibration images (a seeded, class-balanced sample), or seeded noise when none are
    known."""
    from edgeres.comparison import real_or_noise

    return real_or_noise(lambda: calibration_images(onnx_path, card, calib_dir=calib_dir, images=count),
                         card.preprocess, count=count, seed=seed, real="calibration images", noise="random inputs",
                         warning="no calibration images given (--calib) or recorded in the model card ({reason}); "
                                 "verifying on random inputs", skip_unreadable=True)


def verify(artifact: Path, reference_onnx: Path, inputs: np.ndarray, *, source: str,
           profile: BatchProfile = BatchProfile(), threads: int | None = None) -> Verification:
    """Run ``inputs`` through the artifact and through the FP32 ONNX on ONNX Runtime; compare logits and time."""
    from edgeres import backends
    from edgeres.comparison import compare_logits

    batch = max(profile.min, min(profile.opt, profile.max, len(inputs)))
    chunks = _chunks(inputs, batch)
    with backends.open(reference_onnx, threads=threads) as ref:
        ref_logits, ref_s = _run_all(ref, chunks)
    with backends.open(artifact, threads=threads) as run:
        art_logits, art_s = _run_all(run, chunks)
    n = len(inputs)
    compared = compare_logits(ref_logits[:n], art_logits[:n])
    return Verification(images=n, source=source, top1_agreement=compared.top1_agreement,
                        max_abs_diff=compared.max_abs_diff, batch=batch, reference_ms=ref_s * 1e3 / n,
                        artifact_ms=art_s * 1e3 / n)


def _chunks(inputs: np.ndarray, batch: int) -> list[np.ndarray]:
    """Fixed-size batches, the last zero-padded (so fixed-profile engines accept it)."""
    out = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.ascontiguousarray(chunk, dtype=np.float32))
    return out


def _run_all(runner: Any, chunks: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    """Logits of all chunks (first pass, also the warm-up) and the best of a few timed passes (seconds)."""
    logits = np.concatenate([runner.infer(c) for c in chunks])
    best = float("inf")
    for _ in range(SPEED_REPEATS):
        t0 = time.perf_counter()
        for c in chunks:
            runner.infer(c)
        best = min(best, time.perf_counter() - t0)
    return logits, best


def _notes(result: BuildResult) -> list[str]:
    v = result.verification
    notes = []
    if v is None:
        return notes
    if v.source == "random inputs":
        notes.append("verified on random inputs (no calibration images known): agreement says little about "
                     "accuracy; pass --calib DIR")
    if result.precision == Precision.FP16.value and result.backend == BackendName.ONNXRUNTIME.value \
            and v.speedup < 1.0:
        notes.append(f"FP16 ran {1 / v.speedup:.2f}x slower than the FP32 ONNX in this check on this CPU: ONNX "
                     f"Runtime's CPU kernels lack most FP16 ops and insert casts; prefer fp32 or int8 on CPUs, "
                     f"fp16 on GPUs")
    if result.precision == Precision.INT8.value and result.backend == BackendName.ONNXRUNTIME.value:
        notes.append("ONNX Runtime int8 uses unsigned activations (zero point 128, TensorRT's grid); on CPUs "
                     "without VNNI its u8xs8 kernels can saturate, so its accuracy is reported for this form only")
    return notes


def build_table(result: BuildResult) -> list[tuple[str, str]]:
    """(field, value) rows for the CLI's summary table."""
    location = result.sidecar.fingerprint.get("tensorrt_location")  # JetPack's TensorRT or a wheel's
    rows = [("artifact", str(result.artifact)), ("backend", f"{result.backend} {result.sidecar.backend_version}"
                                                            + (f" (from {location})" if location else "")),
            ("why", result.backend_reason), ("precision", result.precision),
            ("from", str(result.onnx) + (" (exported now)" if result.exported else "")),
            ("batch profile", "{min}:{opt}:{max}".format(**result.sidecar.profile))]
    if result.ranges is not None:
        rows.append(("ranges", f"{result.ranges} ({'reused' if result.ranges_reused else 'calibrated now'})"))
    int8 = result.sidecar.int8 or {}
    if int8.get("equalized"):
        rows.append(("equalisation", "cross-layer range equalisation applied before calibration"))
    if int8.get("high_precision_layers") is not None:
        kept = int8["high_precision_layers"]
        rows.append(("layers in float", ", ".join(kept) if kept else "none"))
    if int8.get("measured_top1_drop_pp") is not None:
        rows.append(("accuracy budget", f"{int8['measured_top1_drop_pp']:.2f} pp measured <= {int8['max_drop_pp']} pp "
                                        f"({int8['int8_layers']} of {int8['layers']} layers INT8, "
                                        f"{int8['eval_images']} held-out images)"))
    v = result.verification
    if v is not None:
        rows += [("verified on", f"{v.images} {v.source}, batch {v.batch}"),
                 ("top-1 agreement", f"{v.top1_agreement * 100:.2f}%"),
                 ("max |Δlogit|", f"{v.max_abs_diff:.3g}"),
                 ("speed vs FP32 ONNX", f"{v.speedup:.2f}x ({v.artifact_ms:.2f} vs {v.reference_ms:.2f} ms/image)")]
    rows.append(("build time", f"{result.seconds:.1f} s"))
    rows += [("note", n) for n in result.notes]
    return rows
