"""Benchmark an artifact: latency per batch size, throughput, per-stage times, the environment it ran in.

Definitions follow trtexec's: an *inference* is one ``runner.infer`` call on one batch; its *latency* is the host
wall time of that call (host→device copy, compute and device→host copy where the backend has them);
*throughput* is inferences divided by the total host wall time of the timed loop, and images/s is that times
the batch size. Preprocessing (decode + resize + normalise) is timed separately on real images from the card's
dataset when it can be found, else on synthetic JPEGs, because it runs on the CPU on every backend::

    result = bench("model.int8.onnx", batches=(1, 8), duration_s=2.0)
    print(edgeres.report.bench_table(result))
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgeres.backends.base import Runner, read_sidecar_for, sidecar_path
from edgeres.card import ModelCard
from edgeres.environment import Environment, collect
from edgeres.errors import InputError
from edgeres.io import sha256_file, write_json_atomic
from edgeres.progress import Progress
from edgeres.timing import LatencyStats, stage_summary, summarize, throughput

log = logging.getLogger(__name__)

DEFAULT_BATCHES = (1, 8, 32)
MIN_ITERATIONS = 10  # a duration-bound loop still times at least this many calls (trtexec's --iterations default)
PREPROCESS_IMAGES = 32  # images decoded to time preprocessing
RESULT_FORMAT = 1
_clock = time.perf_counter  # the timing loops' clock (tests swap in a virtual one to make verdicts deterministic)


@dataclass
class ArtifactInfo:
    """What an artifact is, for records and baseline matching."""

    path: str
    sha256: str
    model_sha256: str  # the source ONNX an engine was built from; a plain ONNX's own hash
    backend: str
    precision: str
    arch: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe_artifact(artifact: str | Path, *, runner: Runner | None = None) -> ArtifactInfo:
    """Hash an artifact and read what it is from its sidecar (or, for a plain ONNX, from ``runner``).

    Raises:
        InputError: when the file does not exist.
    """
    path = Path(artifact)
    if not path.is_file():
        raise InputError(f"artifact {path} not found; build one with `edgeres build` or export an ONNX")
    path = path.resolve()
    sha = sha256_file(path)
    if sidecar_path(path).exists():
        side = read_sidecar_for(path)
        return ArtifactInfo(str(path), sha, side.source_onnx_sha256 or sha, side.backend, side.precision,
                            side.card.arch)
    backend = getattr(runner, "backend", "onnxruntime")
    precision = getattr(runner, "precision", "fp32")
    arch = runner.card.arch if runner is not None else ""
    return ArtifactInfo(str(path), sha, sha, backend, precision, arch)


def runner_environment(runner: Runner, info: ArtifactInfo) -> Environment:
    """The environment record of a measurement of ``info`` with ``runner``: a GPU is the device when the runner
    is TensorRT (named by the CUDA driver, which Jetsons have but not nvidia-smi) or ONNX Runtime with the CUDA
    provider first."""
    providers = list(getattr(runner, "providers", None) or [])
    gpu = info.backend == "tensorrt" or providers[:1] == ["CUDAExecutionProvider"]
    version, gpu_label = getattr(runner, "backend_version", None), None
    if info.backend == "tensorrt":
        try:
            from edgeres.backends import cuda, tensorrt

            gpu_label = cuda.device_info(0).name
            version = version or tensorrt.trt_version()
        except Exception as exc:  # noqa: BLE001 - the record is best effort; the run itself already worked
            log.debug("cannot ask the CUDA driver for the GPU name: %s", exc)
    return collect(backend=info.backend, backend_version=version, threads=getattr(runner, "threads", None),
                   gpu=gpu, gpu_name=gpu_label, artifact_sha256=info.sha256)


@dataclass
class CallTimes:
    """Raw timings of one timed loop: per-call latency and stage times (ms), and the loop's wall time (s)."""

    latency_ms: list[float]
    wall_s: float
    stages_ms: dict[str, list[float | None]]


def time_calls(runner: Runner, batch: np.ndarray, *, duration_s: float | None = None, iterations: int | None = None,
               warmup_s: float = 0.0, transfers: bool = True, min_iterations: int = MIN_ITERATIONS,
               max_iterations: int | None = None) -> CallTimes:
    """Time ``runner.infer(batch)`` in a loop, after ``warmup_s`` of untimed calls (at least one).

    Args:
        runner: an open runner.
        batch: the input batch.
        duration_s: run until this much wall time has passed (and ``min_iterations`` calls were made).
        iterations: run exactly this many calls instead.
        warmup_s: untimed calls first, for this long.
        transfers: when False, latency is the runner's compute stage only (host↔device copies excluded);
            throughput always counts the whole call.
        min_iterations: the least number of calls of a duration-bound loop.
        max_iterations: the most calls of a duration-bound loop (None: no limit).
    """
    if (duration_s is None) == (iterations is None):
        raise InputError("give either a duration or a number of iterations, not both")
    if iterations is not None and iterations < 1:
        raise InputError(f"iterations must be at least 1, got {iterations}")
    if duration_s is not None and duration_s <= 0:
        raise InputError(f"duration must be positive, got {duration_s} s")
    clock = _clock
    start = clock()
    runner.infer(batch)
    while clock() - start < warmup_s:
        runner.infer(batch)
    latency: list[float] = []
    stages: dict[str, list[float | None]] = {"h2d": [], "compute": [], "d2h": []}
    begin = clock()
    end = begin
    while True:
        t0 = clock()
        runner.infer(batch)
        end = clock()
        wall_ms = (end - t0) * 1e3
        st = runner.last_stage_times
        if st is not None:
            stages["h2d"].append(st.h2d_ms)
            stages["compute"].append(st.compute_ms)
            stages["d2h"].append(st.d2h_ms)
        latency.append(wall_ms if transfers or st is None else st.compute_ms)
        n = len(latency)
        if iterations is not None:
            if n >= iterations:
                break
        elif (end - begin >= duration_s and n >= min_iterations) or n == max_iterations:  # type: ignore[operator]
            break
    return CallTimes(latency_ms=latency, wall_s=end - begin, stages_ms=stages)


@dataclass
class BatchResult:
    """Timings of one batch size."""

    batch: int
    iterations: int
    wall_s: float
    latency: LatencyStats  # ms per inference (one batch)
    throughput: float  # inferences per second of host wall time
    images_per_s: float
    stages: dict[str, LatencyStats]  # h2d / compute / d2h, where the runner reports them
    samples_ms: list[float] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "iterations": self.iterations, "wall_s": self.wall_s,
                "latency_ms": self.latency.to_dict(), "throughput": self.throughput,
                "images_per_s": self.images_per_s, "stages_ms": {k: v.to_dict() for k, v in self.stages.items()},
                "samples_ms": [round(x, 4) for x in self.samples_ms]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchResult:
        return cls(batch=int(data["batch"]), iterations=int(data["iterations"]), wall_s=float(data["wall_s"]),
                   latency=LatencyStats.from_dict(data["latency_ms"]), throughput=float(data["throughput"]),
                   images_per_s=float(data["images_per_s"]),
                   stages={k: LatencyStats.from_dict(v) for k, v in data.get("stages_ms", {}).items()},
                   samples_ms=[float(x) for x in data.get("samples_ms", [])])


@dataclass
class PreprocessTiming:
    """Decode + preprocess time of one image, on the CPU."""

    source: str  # "images" (from the card's dataset) or "synthetic"
    detail: str  # the folder, or the synthetic image size
    per_image: LatencyStats

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "detail": self.detail, "per_image_ms": self.per_image.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessTiming:
        return cls(data["source"], data["detail"], LatencyStats.from_dict(data["per_image_ms"]))


@dataclass
class BenchResult:
    """Everything one ``bench`` run measured, JSON-able with :meth:`to_dict`."""

    artifact: ArtifactInfo
    profile: str
    settings: dict[str, Any]
    results: list[BatchResult]
    skipped: list[dict[str, Any]]  # {"batch": 64, "reason": "..."}
    preprocess: PreprocessTiming | None
    environment: Environment
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict[str, Any]:
        return {"format": RESULT_FORMAT, "kind": "edgeres.bench", "created": self.created,
                "artifact": self.artifact.to_dict(), "profile": self.profile, "settings": self.settings,
                "results": [r.to_dict() for r in self.results], "skipped": self.skipped,
                "preprocess": self.preprocess.to_dict() if self.preprocess else None,
                "environment": self.environment.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        try:
            return cls(artifact=ArtifactInfo(**data["artifact"]), profile=data["profile"],
                       settings=dict(data["settings"]), results=[BatchResult.from_dict(r) for r in data["results"]],
                       skipped=list(data.get("skipped", [])),
                       preprocess=PreprocessTiming.from_dict(data["preprocess"]) if data.get("preprocess") else None,
                       environment=Environment.from_dict(data["environment"]), created=data.get("created", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not an edgeres bench result ({exc}); write one with `edgeres bench --out`") from exc

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically."""
        return write_json_atomic(path, self.to_dict())


def parse_batches(batches: Sequence[int] | str) -> tuple[int, ...]:
    """``"1,8,32"`` or ``[1, 8, 32]`` → ``(1, 8, 32)``, each a positive integer, duplicates dropped."""
    items = str(batches).split(",") if isinstance(batches, str) else list(batches)
    out: list[int] = []
    for item in items:
        try:
            value = int(str(item).strip())
        except ValueError:
            raise InputError(f"batch sizes must be integers like 1,8,32, got {batches!r}") from None
        if value < 1:
            raise InputError(f"batch sizes must be at least 1, got {value}")
        if value not in out:
            out.append(value)
    if not out:
        raise InputError("give at least one batch size, e.g. --batch 1,8,32")
    return tuple(out)


def parse_duration(text: str | float) -> float:
    """Seconds from ``"1s"``, ``"500ms"``, ``"2"`` (seconds) or ``"1.5m"``; must be >= 0.

    Raises:
        InputError: when the text is not a number with an optional ms / s / m unit.
    """
    raw = str(text).strip().lower()
    scale = 1.0
    for unit, factor in (("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        if raw.endswith(unit):
            raw, scale = raw[: -len(unit)].strip(), factor
            break
    try:
        value = float(raw) * scale
    except ValueError:
        raise InputError(f"a duration must be a number with an optional unit (500ms, 1s, 2), got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise InputError(f"a duration must be finite and >= 0, got {text!r}")
    return value


def split_by_profile(batches: Sequence[int], runner: Runner) -> tuple[list[int], list[dict[str, Any]]]:
    """Batch sizes the runner's profile accepts, and the others with the reason they are skipped."""
    profile = runner.profile
    ok, skipped = [], []
    for b in batches:
        if profile.min <= b <= profile.max:
            ok.append(b)
        else:
            skipped.append({"batch": b, "reason": f"outside the artifact's batch profile {profile} (min:opt:max); "
                                                  f"rebuild with --batch covering {b} to measure it"})
    return ok, skipped


def input_batch(card: ModelCard, batch: int, *, seed: int = 0) -> np.ndarray:
    """A float32 batch of the card's input shape, standard-normal (timing does not depend on the values)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *card.preprocess.input_shape), dtype=np.float32)


def _dataset_images(card: ModelCard, limit: int) -> tuple[list[Path], str] | None:
    root = card.dataset.get("root") if card.dataset else None
    if not root:
        return None
    from edgeres.data import list_images

    for folder in (Path(root) / "val", Path(root)):
        if folder.is_dir():
            try:
                images = list_images(folder)
            except Exception as exc:  # a moved or unreadable dataset only costs the real-image timing
                log.debug("cannot list images in %s: %s", folder, exc)
                continue
            if images:
                step = max(1, len(images) // limit)
                return images[::step][:limit], str(folder)
    return None


@contextlib.contextmanager
def _synthetic_images(card: ModelCard, count: int) -> Iterator[tuple[list[Path], str]]:
    from PIL import Image

    pre = card.preprocess
    short = max(pre.resize or pre.crop, pre.crop)
    size = (640, 480) if short >= 128 else (short * 4 // 3, short)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="edgeres-bench-") as tmp:
        paths = []
        for i in range(count):
            # smooth gradients plus noise compress like a photo, unlike pure noise
            yy, xx = np.mgrid[0:size[1], 0:size[0]]
            base = ((xx * (i + 1) + yy * 3) % 256).astype(np.uint8)
            pixels = np.clip(base[..., None] + rng.integers(-20, 20, (*base.shape, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
            path = Path(tmp) / f"synthetic_{i}.jpg"
            path.write_bytes(buf.getvalue())
            paths.append(path)
        yield paths, f"synthetic {size[0]}x{size[1]} JPEG"


def time_preprocess(card: ModelCard, *, images: int = PREPROCESS_IMAGES) -> PreprocessTiming:
    """Time decoding + preprocessing one image with the card's recipe (real dataset images when the card names
    a dataset folder that still exists, else synthetic JPEGs)."""
    from edgeres.data import load_image

    found = _dataset_images(card, images)
    source = "images" if found else "synthetic"
    with contextlib.ExitStack() as stack:
        paths, detail = found if found else stack.enter_context(_synthetic_images(card, min(images, 8)))
        load_image(paths[0], card.preprocess)  # warm imports and caches
        samples = []
        for path in paths:
            t0 = time.perf_counter()
            load_image(path, card.preprocess)
            samples.append((time.perf_counter() - t0) * 1e3)
    return PreprocessTiming(source=source, detail=detail, per_image=summarize(samples))


def _open(artifact: str | Path, threads: int | None) -> Runner:
    from edgeres import backends

    return backends.open(artifact, threads=threads) if threads else backends.open(artifact)


def bench(artifact: str | Path, *, batches: Sequence[int] | str = DEFAULT_BATCHES, warmup_s: float = 1.0,
          duration_s: float | None = 5.0, iterations: int | None = None, transfers: bool = True,
          threads: int | None = None, preprocess: bool = True, runner: Runner | None = None,
          quiet: bool = False) -> BenchResult:
    """Benchmark an artifact at several batch sizes.

    Args:
        artifact: the artifact file (engine or ONNX) to measure.
        batches: batch sizes; those outside the artifact's profile are skipped with a note.
        warmup_s: untimed calls before each batch size's loop.
        duration_s: timed wall time per batch size (ignored when ``iterations`` is given).
        iterations: timed calls per batch size instead of a duration.
        transfers: False reports latency without host↔device copies (the compute stage).
        threads: backend worker threads (ONNX Runtime intra-op); None = the backend's default.
        preprocess: also time decoding + preprocessing of images.
        runner: an already open runner for ``artifact`` (not closed here); None = open it.
        quiet: no progress output.

    Returns:
        The result; ``to_dict()`` is JSON-able.

    Raises:
        InputError: bad options, a missing artifact, or no batch size the artifact accepts.
    """
    sizes = parse_batches(batches)
    if iterations is not None:
        duration_s = None
    elif duration_s is None or duration_s <= 0:
        raise InputError(f"duration must be positive, got {duration_s}; or give iterations")
    if warmup_s < 0:
        raise InputError(f"warmup must be >= 0 s, got {warmup_s}")
    with contextlib.ExitStack() as stack:
        if runner is None:
            runner = stack.enter_context(_open(artifact, threads))
        info = describe_artifact(artifact, runner=runner)
        run, skipped = split_by_profile(sizes, runner)
        for note in skipped:
            log.warning("skipping batch %d: %s", note["batch"], note["reason"])
        if not run:
            raise InputError(f"no requested batch size ({', '.join(map(str, sizes))}) fits {Path(artifact).name}'s "
                             f"profile {runner.profile}; pick sizes in {runner.profile.min}..{runner.profile.max}")
        results = []
        with Progress(len(run), f"bench {Path(artifact).name}", unit="batch", quiet=quiet) as bar:
            for b in run:
                calls = time_calls(runner, input_batch(runner.card, b), duration_s=duration_s,
                                   iterations=iterations, warmup_s=warmup_s, transfers=transfers)
                results.append(_batch_result(b, calls))
                bar.update(1, batch=b, median_ms=results[-1].latency.median, img_s=results[-1].images_per_s)
        pre = time_preprocess(runner.card) if preprocess else None
        env = runner_environment(runner, info)
        profile = str(runner.profile)
    settings = {"batches": list(sizes), "warmup_s": warmup_s, "duration_s": duration_s, "iterations": iterations,
                "transfers": transfers, "threads": threads,
                "latency": "host wall time per infer call" if transfers else "compute stage only (no transfers)"}
    return BenchResult(artifact=info, profile=profile, settings=settings, results=results, skipped=skipped,
                       preprocess=pre, environment=env)


def _batch_result(batch: int, calls: CallTimes) -> BatchResult:
    n = len(calls.latency_ms)
    qps = throughput(n, calls.wall_s)
    return BatchResult(batch=batch, iterations=n, wall_s=calls.wall_s, latency=summarize(calls.latency_ms),
                       throughput=qps, images_per_s=qps * batch, stages=stage_summary(calls.stages_ms),
                       samples_ms=calls.latency_ms)


def load_result(path: str | Path) -> BenchResult:
    """Read a result written by :meth:`BenchResult.write_json`."""
    import json

    path = Path(path)
    try:
        return BenchResult.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read bench result {path} ({exc})") from exc
