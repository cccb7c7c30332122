"""The public pipeline: one function per ``edgeres`` command, each doing everything its command does.

``import edgeres`` exposes these lazily (``edgeres.train``, ``edgeres.calibrate``, ...). Each function takes and
returns typed objects, raises :class:`edgeres.errors.EdgeresError` subclasses, and holds the command's own rules
(default output names, overwrite guards, outputs that may not replace inputs, side outputs such as a TensorRT
calibration cache or a Markdown report), so ``cli.py`` only parses options, makes one call and renders the
result. Functions that already did all of that live in their modules and are re-exported as they are
(``edgeres.export`` is :func:`edgeres.exporting.export_onnx`, ``edgeres.build`` is
:func:`edgeres.building.build_artifact`, ``edgeres.check`` is :func:`edgeres.checking.check`, ``edgeres.open``
is :func:`edgeres.backends.open`).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from edgeres.backends.base import artifact_inputs
from edgeres.errors import InputError, UsageError
from edgeres.io import outputs_safe

if TYPE_CHECKING:
    from calibration import Ranges
    from edgeres.benchmarking import BenchResult
    from edgeres.inference import InferResult
    from edgeres.sensitivity import SensitivityReport
    from edgeres.serve.client import ServerBenchResult
    from edgeres.serve.repository import ServingRepository
    from edgeres.serve.triton import TritonServer
    from edgeres.training import TrainConfig, TrainResult

PathLike = str | os.PathLike[str]


def train(data: PathLike, *, out: PathLike, config: TrainConfig | None = None, resume: bool = False,
          force: bool = False, quiet: bool = False, **settings: Any) -> TrainResult:
    """Train a ResNet on an image folder (or the built-in ``"digits"``) and write a checkpoint with its card.

    Args:
        data: ``ROOT`` with ``train/`` and ``val/`` class folders, ``ROOT/<class>/*`` (with ``val_split``), or
            ``"digits"``.
        out: the checkpoint (``.pt``).
        config: the run's :class:`edgeres.training.TrainConfig`; or give its fields as keywords instead
            (``arch="resnet20", epochs=2``).
        resume: continue ``out`` from its last finished epoch.
        force: start over even though ``out`` exists.
        quiet: no progress bars.

    Raises:
        InputError: ``out`` exists without ``resume``/``force``, an unknown setting, ``out`` is the data.
    """
    from edgeres.training import TrainConfig, train as run_training

    if config is not None and settings:
        raise InputError(f"give config or its fields ({', '.join(sorted(settings))}), not both")
    try:
        cfg = config or TrainConfig(**settings)
    except TypeError as exc:
        raise InputError(f"unknown training setting: {exc}; see edgeres.training.TrainConfig") from None
    out = Path(out)
    if out.exists() and not (resume or force):
        raise InputError(f"{out} already exists; pass --resume to continue it or --force to start over")
    outputs_safe({"DATA_DIR": data if Path(data).exists() else None}, {"--out": out})
    return run_training(data, out=out, config=cfg, resume=resume, quiet=quiet)


@dataclass
class CalibrationResult:
    """What :func:`calibrate` measured and wrote."""

    model: Path
    ranges: Ranges
    path: Path  # the ranges JSON
    seconds: float
    trt_cache: Path | None = None
    trt_header: str | None = None  # e.g. "TRT-100300-EntropyCalibration2"

    def to_dict(self) -> dict[str, Any]:
        amax = sorted(self.ranges.amax.values())
        return {"model": str(self.model), "ranges": str(self.path), "method": self.ranges.method,
                "images": self.ranges.num_images, "tensors": len(amax), "seconds": round(self.seconds, 2),
                "amax_min": amax[0], "amax_max": amax[-1],
                "trt_cache": str(self.trt_cache) if self.trt_cache else None, "trt_header": self.trt_header}


def default_ranges_path(model: PathLike) -> Path:
    """Where :func:`calibrate` writes ranges when not told: ``MODEL.ranges.json`` beside the model."""
    model = Path(model)
    return model.with_name(f"{model.stem}.ranges.json")


def calibrate(model: PathLike, *, data: PathLike | None = None, method: str = "entropy", images: int = 512,
              batch_size: int = 32, seed: int = 0, out: PathLike | None = None, trt_cache: PathLike | None = None,
              trt_version: str = "10.3", trt_algorithm: str | None = None, equalize: bool = False,
              force: bool = False, quiet: bool = False) -> CalibrationResult:
    """Compute INT8 ranges of an FP32 ONNX from calibration images and write them (and a TensorRT cache).

    Args:
        model: the FP32 ONNX (exported by edgeres: its card names the calibration set).
        data: calibration images; None = the card's calibration list or training set.
        method: ``entropy``, ``minmax``, ``percentile`` or ``mse``.
        images: images to sample; ``batch_size``: images decoded per batch; ``seed``: the sampling's seed.
        out: the ranges JSON; None = :func:`default_ranges_path`.
        trt_cache: also write a TensorRT calibration cache here (implicit INT8 on TensorRT 8.5-10.x).
        trt_version: the TensorRT that reads the cache; its header is checked before calibrating.
        trt_algorithm: the calibrator named in the header; None = :func:`calibration.trt_cache.algorithm_for`.
        equalize: calibrate the cross-layer range-equalised graph.
        force: replace existing outputs.
        quiet: no progress bar.

    Raises:
        InputError: an output exists without ``force`` or is an input, a bad TensorRT version, bad data.
    """
    from calibration import CalibrationError
    from calibration import trt_cache as cache
    from edgeres.calibrating import calibrate as compute_ranges

    model = Path(model)
    out = Path(out) if out is not None else default_ranges_path(model)
    trt_cache = Path(trt_cache) if trt_cache is not None else None
    outputs_safe({"MODEL": model, "--data": data}, {"--out": out, "--trt-cache": trt_cache})
    for target in (out, trt_cache):
        if target is not None and target.exists() and not force:
            raise InputError(f"{target} already exists; pass --force to overwrite it")
    algorithm = trt_algorithm or cache.algorithm_for(method).value
    try:
        if trt_cache is not None:  # a bad version is refused before minutes of calibration, not after
            cache.format_header(trt_version, algorithm)
        start = time.perf_counter()
        ranges = compute_ranges(model, data=data, method=method, images=images, batch_size=batch_size, seed=seed,
                                quiet=quiet, equalize=equalize)
        seconds = time.perf_counter() - start
        ranges.save(out)
        header = None if trt_cache is None else cache.write(trt_cache, ranges, trt_version=trt_version,
                                                             algorithm=algorithm)
    except CalibrationError as exc:
        raise InputError(str(exc)) from exc
    return CalibrationResult(model=model, ranges=ranges, path=out, seconds=seconds, trt_cache=trt_cache,
                             trt_header=header)


@dataclass
class QuantizeResult:
    """The Q/DQ model :func:`quantize` wrote."""

    path: Path
    activations: str  # "s8" or "u8"
    qdq_points: int  # activation QuantizeLinear nodes
    size_ratio: float  # file size over the FP32 model's

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "activations": self.activations, "qdq_points": self.qdq_points,
                "size_ratio": round(self.size_ratio, 4)}


def quantize(model: PathLike, ranges: PathLike | Ranges, *, out: PathLike, activations: str = "s8",
             keep_fp32: Sequence[str] = (), per_channel: bool = True, force: bool = False) -> QuantizeResult:
    """Write the INT8 Q/DQ twin of an FP32 ONNX from its calibration ranges.

    Args:
        model: the FP32 ONNX the ranges were calibrated on.
        ranges: the ranges JSON or a :class:`calibration.Ranges`.
        out: the Q/DQ ONNX to write.
        activations: ``s8`` (TensorRT's form) or ``u8`` (the fast ONNX Runtime CPU form).
        keep_fp32: node names or op types left in floating point.
        per_channel: per-output-channel weight scales.
        force: replace an existing ``out``.

    Raises:
        InputError: ranges of another model, ``out`` exists without ``force`` or is an input.
    """
    import onnx

    from edgeres.quantization import quantize_qdq

    model = Path(model)
    ranges_input = ranges if isinstance(ranges, (str, os.PathLike)) else None
    outputs_safe({"MODEL": model, "--ranges": ranges_input}, {"--out": out})
    written = quantize_qdq(model, ranges, out=out, activations=activations, keep_fp32=list(keep_fp32),
                           per_channel=per_channel, force=force)
    nodes = onnx.load(str(written), load_external_data=False).graph.node
    return QuantizeResult(path=written, activations=str(activations),
                          qdq_points=sum(n.op_type == "QuantizeLinear" for n in nodes),
                          size_ratio=written.stat().st_size / model.stat().st_size)


def infer(artifact: PathLike | None = None, images: PathLike | None = None, *, server: str | None = None,
          model: str | None = None, batch: int = 8, top_k: int = 5, out: PathLike | None = None,
          strict: bool = False, threads: int | None = None, workers: int | None = None,
          quiet: bool = False) -> InferResult:
    """Classify every image under ``images`` with an artifact, or with the model served at ``server``.

    Args:
        artifact: a built artifact or an exported ONNX; None with ``server``.
        images: the image folder (or one image).
        server: the URL of ``edgeres serve`` (or a Triton serving an edgeres model) instead of ``artifact``.
        model: with ``server``: the served model; None = the only edgeres model there.
        batch: images per call; ``top_k``: classes per image.
        out: also write the results (``.json`` or ``.csv``), before ``strict`` is applied.
        strict: raise :class:`edgeres.errors.DataError` when any file was skipped (the result rides on it as
            ``.result``).
        threads: inference threads; ``workers``: decoding threads; ``quiet``: no progress bar.

    Raises:
        InputError: a bad ``out`` suffix, ``artifact`` and ``server`` both or neither, a folder as artifact.
        DataError: no readable image; with ``strict``, a skipped file.
    """
    from edgeres.inference import infer_folder, raise_if_skipped

    if out is not None and Path(out).suffix.lower() not in (".json", ".csv"):
        raise InputError(f"--out must end in .json or .csv, got {out}")
    if images is None:
        raise InputError("no images given: pass the image folder (IMAGES)")
    if (artifact is None) == (server is None):
        raise UsageError("give an artifact or a server URL (--server), not both or neither")
    if artifact is not None and Path(artifact).is_dir():
        raise UsageError(f"{artifact} is a folder; ARTIFACT is a built artifact or an ONNX file")
    outputs_safe({**(artifact_inputs(artifact) if artifact is not None else {}), "IMAGES": images}, {"--out": out})
    with contextlib.ExitStack() as stack:
        remote = None
        if server is not None:
            from edgeres.serve.client import RemoteRunner

            remote = stack.enter_context(RemoteRunner(server, model))
        result = infer_folder(server or artifact, images, batch=batch, top_k=top_k, workers=workers,
                              threads=threads, quiet=quiet, runner=remote)
    if out is not None:
        result.write(out)
    if strict:
        raise_if_skipped(result)
    return result


def bench(artifact: PathLike | None = None, *, server: str | None = None, model: str | None = None,
          batches: Sequence[int] | str | None = None, concurrency: Sequence[int] | str = (1, 4, 16),
          warmup_s: float = 1.0, duration_s: float | None = None, iterations: int | None = None,
          transfers: bool = True, threads: int | None = None, out: PathLike | None = None,
          report: PathLike | None = None, plot: PathLike | None = None,
          quiet: bool = False) -> BenchResult | ServerBenchResult:
    """Time an artifact at several batch sizes, or the model served at ``server`` under concurrent clients.

    Args:
        artifact: the artifact to time; None with ``server``.
        server: the URL of a served edgeres model; ``model``: which one (None = the only one).
        batches: batch sizes (local; default 1, 8, 32) or the one images-per-request size (server; default 1).
        concurrency: with ``server``: client threads per level.
        warmup_s: untimed warm-up per level; then ``duration_s`` of timed wall time (default 5 s) or
            ``iterations`` timed calls (requests with ``server``), not both.
        transfers: False times the compute stage only (local).
        threads: backend worker threads (local).
        out: write the result as JSON; ``report``: as Markdown; ``plot``: a PNG (local only; needs matplotlib,
            checked before measuring).
        quiet: no progress output.

    Raises:
        InputError: ``artifact`` and ``server`` both or neither, a report/plot with ``server``, a plot not ending
            in ``.png``, matplotlib missing for ``plot``, outputs that would overwrite inputs.
    """
    if (artifact is None) == (server is None):
        raise UsageError("give an artifact or a server URL (--server), not both or neither")
    if duration_s is not None and iterations is not None:
        raise UsageError("give --duration or --iterations, not both")
    if duration_s is None and iterations is None:
        duration_s = 5.0
    if server is not None:
        return _bench_server(server, model=model, batches=batches, concurrency=concurrency, warmup_s=warmup_s,
                             duration_s=duration_s, iterations=iterations, out=out, report=report, plot=plot)
    from edgeres.benchmarking import DEFAULT_BATCHES, bench as run_bench
    from edgeres.report import bench_markdown, plot_bench, require_matplotlib, write_markdown

    if plot is not None:
        if Path(plot).suffix.lower() != ".png":
            raise UsageError(f"--plot {plot} must end in .png (the plot is a PNG image)")
        require_matplotlib()  # fail before measuring, not after
    outputs_safe(artifact_inputs(artifact), {"--out": out, "--report": report, "--plot": plot})
    result = run_bench(artifact, batches=DEFAULT_BATCHES if batches is None else batches, warmup_s=warmup_s,
                       duration_s=duration_s, iterations=iterations, transfers=transfers, threads=threads,
                       quiet=quiet)
    if out is not None:
        result.write_json(out)
    if report is not None:
        write_markdown(report, bench_markdown(result))
    if plot is not None:
        plot_bench(result, plot)
    return result


def _bench_server(server: str, *, model: str | None, batches: Sequence[int] | str | None,
                  concurrency: Sequence[int] | str, warmup_s: float, duration_s: float | None,
                  iterations: int | None, out: PathLike | None, report: PathLike | None,
                  plot: PathLike | None) -> ServerBenchResult:
    from edgeres.benchmarking import parse_batches
    from edgeres.serve.client import bench_server

    if plot is not None or report is not None:
        raise UsageError("--plot and --report apply to a local bench; with --server use --out")
    try:
        sizes = (1,) if batches is None else parse_batches(batches)
    except InputError:
        sizes = ()
    if len(sizes) != 1:
        raise UsageError(f"with --server give one batch size (images per request), got {batches!r}")
    outputs_safe({}, {"--out": out})
    result = bench_server(server, model=model, concurrency=concurrency, batch=sizes[0], duration_s=duration_s,
                          requests=iterations, warmup_s=warmup_s)
    if out is not None:
        result.write_json(out)
    return result


def sensitivity_report(model: PathLike, *, data: PathLike | None = None, images: int | None = 500,
                       calib: PathLike | None = None, method: str = "entropy", calib_images: int = 512,
                       equalize: bool = False, out: PathLike | None = None, plot: PathLike | None = None,
                       quiet: bool = False) -> SensitivityReport:
    """How much quantizing each layer of an FP32 ONNX to INT8 costs, most sensitive first (``edgeres
    sensitivity``): one calibration pass, then every layer's INT8 variant scored on labelled held-out images.

    Args:
        model: the FP32 ONNX.
        data: labelled held-out images; None = the card's validation set. ``images``: at most this many.
        calib: calibration images; None = the card's calibration set. ``method``/``calib_images``: of that pass.
        equalize: measure the cross-layer range-equalised model.
        out: also write the report as JSON; ``plot``: as a bar plot (PNG).
        quiet: no progress bars.

    Raises:
        InputError: no labelled data, too few calibration images, an output that would overwrite an input.
    """
    from edgeres.io import write_json_atomic
    from edgeres.sensitivity import plot_sensitivity, run_sensitivity

    outputs_safe({"MODEL": model, "--data": data, "--calib": calib}, {"--out": out, "--plot": plot})
    report = run_sensitivity(model, data=data, images=images, calib=calib, method=method,
                             calib_images=calib_images, equalize=equalize, quiet=quiet)
    if out is not None:
        write_json_atomic(out, report.to_dict())
    if plot is not None:
        plot_sensitivity(report, plot)
    return report


def compare(results: Sequence[PathLike]) -> dict[str, dict[str, Any]]:
    """The summaries of several ``edgeres infer --out X.json`` results, keyed by the shortest labels that tell
    their paths apart (``edgeres compare``); render with :func:`edgeres.inference.compare_table`."""
    from edgeres.inference import distinct_labels, load_summary

    return {label: load_summary(path) for label, path in zip(distinct_labels(results), results)}


def environment_report() -> dict[str, Any]:
    """What ``edgeres env`` reports: Python, the packages edgeres uses (versions, where they come from) and which
    backend ``auto`` picks here and why."""
    from edgeres.backends import choose_backend
    from edgeres.environment import software_report

    report = software_report()
    chosen, why = choose_backend("auto")
    report["backend"] = {"auto": chosen.value, "why": why}
    return report


@contextlib.contextmanager
def serve_artifact(artifact: PathLike, *, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                   instances: int = 1, max_queue_delay_us: int = 500, threads: int | None = None,
                   name: str | None = None, repo: PathLike | None = None,
                   ready_timeout_s: float = 120.0) -> Iterator[tuple[TritonServer, ServingRepository]]:
    """Serve an artifact with Triton on 127.0.0.1 for the ``with`` block (``edgeres serve``): a tensor model
    (FP32 images in, logits out) and an image model (encoded image bytes in, top-k classes out), dynamically
    batched up to the artifact's max batch. The server and every process it started are gone on exit.

    Args:
        artifact: a built artifact or an exported ONNX with its card.
        http_port, grpc_port, metrics_port: ports; 0 = any free one (the CLI's defaults are 8000/8001/8002).
        instances: runner instances per model; ``threads``: ONNX Runtime threads per instance.
        max_queue_delay_us: how long the dynamic batcher may wait to fill a batch.
        name: the tensor model's name; None = from the file name (the image model adds ``_image``).
        repo: write the generated repository here and keep it; None = a temporary folder.
        ready_timeout_s: how long to wait for the server and its models.

    Yields:
        The running server (``http_url``, ``grpc_url``, ``metrics_url``) and the served repository.

    Raises:
        InputError: ports in use or equal; ServerError: Triton missing (said before anything is written) or not
            ready in time.
    """
    import tempfile

    from edgeres.serve.repository import serving_repository
    from edgeres.serve.triton import Ports, TritonServer, find_triton

    find_triton()
    ports = Ports.resolve(http_port, grpc_port, metrics_port)
    with tempfile.TemporaryDirectory(prefix="edgeres-serve-") as tmp:
        served = serving_repository(artifact, Path(repo) if repo is not None else Path(tmp) / "models", name=name,
                                    instances=instances, max_queue_delay_us=max_queue_delay_us, threads=threads)
        server = TritonServer(served.root, ports=ports, ready_timeout_s=ready_timeout_s)
        try:
            server.start()
            yield server, served
        finally:
            server.stop()
