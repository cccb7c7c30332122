"""The ``edgeres`` command line: one click command per arrow of the pipeline.

Each command parses options, calls one public edgeres function and prints its result (a table for humans,
``--json`` or ``--out`` for machines). Errors from edgeres become one-line ``Error: ...`` messages with a non-zero
exit; ``edgeres --debug ...`` shows the traceback instead.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from edgeres import __version__
from edgeres.errors import EdgeresError

log = logging.getLogger("edgeres")


EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # 128 + signal number, as shells report it


class Interrupted(KeyboardInterrupt):
    """SIGTERM (from `timeout`, systemd, CI runners) raised like Ctrl-C, so every cleanup runs."""

    signal_name = "SIGTERM"


class _EdgeresGroup(click.Group):
    """Turns EdgeresError into click's one-line error (exit 1, or the error's own exit code), any I/O error into a
    one-line error naming the file and the cause, and an interrupt into one line and exit 130 (Ctrl-C) / 143
    (SIGTERM), after temporary files were removed on the way out."""

    def invoke(self, ctx: click.Context) -> Any:
        def debug() -> bool:  # set by the group's callback, inside super().invoke
            return bool(ctx.obj and ctx.obj.get("debug"))

        try:
            return super().invoke(ctx)
        except EdgeresError as exc:
            if debug():
                raise
            err = click.ClickException(str(exc))
            err.exit_code = getattr(exc, "exit_code", 1)
            if ctx.invoked_subcommand == "check" and err.exit_code == 1:
                err.exit_code = 2  # anything that stops the gate is an input error, never "regression"
            raise err from None
        except OSError as exc:
            if debug():
                raise
            from edgeres.io import describe_os_error

            err = click.ClickException(describe_os_error(exc))
            err.exit_code = 2 if ctx.invoked_subcommand == "check" else 1
            raise err from None
        except KeyboardInterrupt as exc:
            from edgeres.io import remove_own_locks

            remove_own_locks()
            name = getattr(exc, "signal_name", "SIGINT")
            click.echo(f"Error: interrupted ({name}); no partial output was left", err=True)
            ctx.exit(EXIT_INTERRUPTED[name])


@click.group(cls=_EdgeresGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeres")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and results; no progress bars.")
@click.option("--max-image-pixels", type=click.IntRange(min=1), envvar="EDGERES_MAX_IMAGE_PIXELS",
              help="Largest image (width x height) decoded; larger ones are refused as possible decompression "
                   "bombs [Pillow's 89,478,485; env EDGERES_MAX_IMAGE_PIXELS].")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, max_image_pixels: int | None) -> None:
    """edgeres: train a ResNet, export it to ONNX, calibrate INT8, build a TensorRT (or ONNX Runtime) engine,
    run it on images, benchmark it and gate regressions."""
    if max_image_pixels is not None:
        from PIL import Image

        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_image_pixels
        ctx.call_on_close(lambda: setattr(Image, "MAX_IMAGE_PIXELS", previous))  # for callers in the same process
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def quiet_flag(ctx: click.Context) -> bool:
    """Whether progress bars should be silenced for this invocation."""
    return bool(ctx.obj and ctx.obj.get("quiet"))


def echo_json(obj: Any) -> None:
    """Print machine-readable output (strict JSON: a NaN is an error, never a bare ``NaN``)."""
    from edgeres.io import dumps_json

    click.echo(dumps_json(obj, what="JSON output"))


# --- data commands ---
@cli.group()
def data() -> None:
    """Built-in datasets."""


@data.command("digits")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the train/val split.")
@click.option("--force", is_flag=True, help="Replace an existing non-empty folder.")
def data_digits(out_dir: Path, seed: int, force: bool) -> None:
    """Write scikit-learn's handwritten digits (1,797 real 8x8 scans) as an image folder OUT_DIR/{train,val}/<class>/."""
    from edgeres.digits import write_digits

    ds = write_digits(out_dir, seed=seed, force=force)
    click.echo(f"wrote {len(ds.train.samples)} train and {len(ds.val.samples)} val images of "
               f"{len(ds.classes)} classes to {out_dir}")
# --- end data commands ---


# --- train/export commands ---
def _model_choice() -> click.Choice:
    from edgeres.architectures import names  # not edgeres.models: that imports torch for every command

    return click.Choice(names())


@cli.command()
@click.argument("data_dir")
@click.option("--arch", default="resnet20", show_default=True, type=_model_choice(), help="Architecture.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint (.pt).")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs [recipe: digits 10, CIFAR 160, ImageNet 90].")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size [recipe: digits 32, else 128].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate [recipe: digits 0.05, else 0.1 x batch/128].")
@click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "step"]))
@click.option("--weight-decay", default=1e-4, show_default=True, type=click.FloatRange(min=0))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--size", type=click.IntRange(min=8), help="Input size [32 CIFAR-family, 224 ImageNet-family].")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction held out for validation, for ROOT/<class>/* folders.")
@click.option("--hflip/--no-hflip", default=None, help="Random horizontal flips [on, except for digits].")
@click.option("--shortcut", type=click.Choice(["A", "B"]), help="CIFAR-family shortcut option [A].")
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue from --out's last finished epoch.")
@click.option("--force", is_flag=True, help="Replace an existing --out (without --resume).")
@click.pass_context
def train(ctx: click.Context, data_dir: str, arch: str, out: Path, epochs: int | None, batch_size: int | None,
          lr: float | None, schedule: str, weight_decay: float, seed: int, size: int | None,
          val_split: float | None, hflip: bool | None, shortcut: str | None, threads: int | None, resume: bool,
          force: bool) -> None:
    """Train ARCH on DATA_DIR (an image folder, or the built-in name 'digits') and write a checkpoint."""
    from edgeres import api
    from edgeres.training import TrainConfig

    cfg = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
                      weight_decay=weight_decay, seed=seed, size=size, val_split=val_split, hflip=hflip,
                      model_options={"shortcut": shortcut} if shortcut else {}, threads=threads)
    result = api.train(data_dir, out=out, config=cfg, resume=resume, force=force, quiet=quiet_flag(ctx))
    click.echo(f"trained {result.arch} for {result.epochs_run} epochs in {result.seconds:.1f}s -> {result.checkpoint}")
    click.echo(f"best val top-1: {100 * result.best_val_top1:.1f}% (last epoch {100 * result.final_val_top1:.1f}%)")


@cli.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="ONNX file to write.")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (>= 17).")
@click.option("--batch", default="dynamic", show_default=True, help="'dynamic' or a fixed batch size.")
@click.option("--arch", help="Architecture of a bare state dict (e.g. torchvision weights).")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@click.pass_context
def export(ctx: click.Context, checkpoint: Path, out: Path, opset: int, batch: str, arch: str | None,
           force: bool) -> None:
    """Export CHECKPOINT to ONNX and check it against PyTorch with ONNX Runtime."""
    from edgeres.exporting import export_onnx

    result = export_onnx(checkpoint, out=out, opset=opset, batch=batch, force=force, arch=arch,
                         quiet=quiet_flag(ctx))
    click.echo(f"wrote {result.path} (opset {result.opset})")
    click.echo(f"parity on {result.parity_images} {result.parity_source} images at batch "
               f"{'/'.join(map(str, result.batch_sizes))}: max |dlogit| {result.max_abs_diff:.2e}, "
               f"top-1 agreement {100 * result.top1_agreement:.1f}%")
# --- end train/export commands ---


# --- calibration commands ---
def _calibration_methods() -> list[str]:
    from calibration import Method

    return [m.value for m in Method]


def _trt_algorithms() -> list[str]:
    from calibration.trt_cache import Algorithm

    return [a.value for a in Algorithm]


@cli.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Calibration images: class folders, a dataset root or a flat folder [the card's training set].")
@click.option("--method", default="entropy", show_default=True, type=click.Choice(_calibration_methods()),
              help="How activations become ranges (entropy = TensorRT's EntropyCalibration2).")
@click.option("--images", default=512, show_default=True, type=click.IntRange(min=1), help="Images to sample.")
@click.option("--batch", "batch_size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Images decoded per batch (ONNX Runtime runs 8 at a time, bounding memory).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the image sampling.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Ranges JSON [MODEL.ranges.json].")
@click.option("--trt-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a TensorRT calibration cache (for implicit INT8 on TensorRT 8.5-10.x).")
@click.option("--trt-version", default="10.3", show_default=True,
              help="TensorRT that reads the cache (8.5.2, 8.6, 10.3, ...); its header must match.")
@click.option("--trt-algorithm", type=click.Choice(_trt_algorithms()),
              help="Calibrator named in the cache header [MinMaxCalibration for minmax, else EntropyCalibration2].")
@click.option("--equalize", is_flag=True,
              help="Calibrate the cross-layer range-equalised graph (recorded; quantize/build equalise the same way).")
@click.option("--force", is_flag=True, help="Replace existing --out / --trt-cache files.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def calibrate(ctx: click.Context, model: Path, data: Path | None, method: str, images: int, batch_size: int,
              seed: int, out: Path | None, trt_cache: Path | None, trt_version: str, trt_algorithm: str | None,
              equalize: bool, force: bool, as_json: bool) -> None:
    """Compute INT8 ranges of MODEL (an FP32 ONNX) from calibration images."""
    from edgeres import api

    result = api.calibrate(model, data=data, method=method, images=images, batch_size=batch_size, seed=seed,
                           out=out, trt_cache=trt_cache, trt_version=trt_version, trt_algorithm=trt_algorithm,
                           equalize=equalize, force=force, quiet=quiet_flag(ctx))
    summary = result.to_dict()
    if as_json:
        echo_json(summary)
        return
    rows = [("tensors", summary["tensors"]), ("method", summary["method"]), ("images", summary["images"]),
            ("time", f"{result.seconds:.1f} s ({summary['images'] / max(result.seconds, 1e-9):.0f} img/s)"),
            ("amax", f"{summary['amax_min']:.4g} .. {summary['amax_max']:.4g}"), ("ranges", result.path)]
    if result.trt_cache is not None:
        rows.append(("TensorRT cache", f"{result.trt_cache} ({result.trt_header})"))
    for key, value in rows:
        click.echo(f"{key:<15} {value}")


@cli.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ranges", "ranges_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Ranges JSON from `edgeres calibrate` on this very MODEL.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="INT8 Q/DQ ONNX to write.")
@click.option("--activations", default="s8", show_default=True, type=click.Choice(["s8", "u8"]),
              help="s8: the TensorRT form; u8: the fast ONNX Runtime CPU form (same grid, zero point 128).")
@click.option("--keep-fp32", multiple=True, metavar="NAME",
              help="A node name or op type to leave in FP32 (repeatable), e.g. --keep-fp32 Gemm.")
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
def quantize(model: Path, ranges_path: Path, out: Path, activations: str, keep_fp32: tuple[str, ...],
             per_tensor: bool, force: bool) -> None:
    """Write the INT8 Q/DQ twin of MODEL (an FP32 ONNX) from its calibration ranges."""
    from edgeres import api

    result = api.quantize(model, ranges_path, out=out, activations=activations, keep_fp32=keep_fp32,
                          per_channel=not per_tensor, force=force)
    click.echo(f"wrote {result.path} ({result.activations} activations, {result.qdq_points} activation Q/DQ "
               f"points, {result.size_ratio:.2f}x the FP32 size)")


@cli.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Labelled held-out images: a dataset root (its val/) or class folders [the card's validation set].")
@click.option("--images", default=500, show_default=True, type=click.IntRange(min=1),
              help="At most this many labelled images (sampled across classes).")
@click.option("--calib", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Calibration images [the calibration set recorded in the model card].")
@click.option("--calib-method", default="entropy", show_default=True, type=click.Choice(_calibration_methods()),
              help="Range method of the one calibration pass every variant shares.")
@click.option("--calib-images", default=512, show_default=True, type=click.IntRange(min=1),
              help="Calibration images to sample.")
@click.option("--equalize", is_flag=True, help="Measure the cross-layer range-equalised model.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a bar plot (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.pass_context
def sensitivity(ctx: click.Context, model: Path, data: Path | None, images: int, calib: Path | None,
                calib_method: str, calib_images: int, equalize: bool, out: Path | None, plot: Path | None,
                as_json: bool) -> None:
    """Measure how much quantizing each layer of MODEL (an FP32 ONNX) to INT8 costs, most sensitive first."""
    from edgeres import api
    from edgeres.sensitivity import sensitivity_table

    report = api.sensitivity_report(model, data=data, images=images, calib=calib, method=calib_method,
                                    calib_images=calib_images, equalize=equalize, out=out, plot=plot,
                                    quiet=quiet_flag(ctx))
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(sensitivity_table(report))
# --- end calibration commands ---


# --- bench/check commands ---
def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """click callback: "1s", "500ms", "2" -> seconds."""
    from edgeres.benchmarking import parse_duration
    from edgeres.errors import InputError

    if value is None:
        return None
    try:
        return parse_duration(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("bench")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.option("--server", metavar="URL", help="Load the model served at URL instead of running ARTIFACT here.")
@click.option("--model", help="With --server: the served model [the only edgeres model there].")
@click.option("--concurrency", default="1,4,16", show_default=True,
              help="With --server: client threads per level, comma-separated.")
@click.option("--batch", "batches", default="1,8,32", show_default=True,
              help="Batch sizes, comma-separated; sizes outside the artifact's profile are skipped with a note. "
                   "With --server: one size, images per request [1].")
@click.option("--warmup", default="1s", show_default=True, callback=_duration_option,
              help="Untimed calls before each batch size (1s, 500ms, 2).")
@click.option("--duration", default="5s", show_default=True, callback=_duration_option,
              help="Timed wall time per batch size.")
@click.option("--iterations", type=click.IntRange(min=1), help="Timed calls per batch size, instead of --duration.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the result as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: latency distribution per batch size, throughput vs batch size (needs matplotlib).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a Markdown report to paste into a pull request.")
@click.option("--no-transfers", is_flag=True, help="Latency without host<->device copies (the compute stage only).")
@click.option("--threads", type=click.IntRange(min=1), help="Backend worker threads [physical cores].")
@click.pass_context
def bench_cmd(ctx: click.Context, artifact: Path | None, server: str | None, model: str | None, concurrency: str,
              batches: str, warmup: float, duration: float, iterations: int | None, out: Path | None,
              plot: Path | None, report: Path | None, no_transfers: bool, threads: int | None) -> None:
    """Time ARTIFACT at several batch sizes: latency percentiles, throughput, images/s, stage split. With
    --server URL: time the served model under concurrent clients (`edgeres bench --server URL --concurrency 1,4,16`)."""
    from click.core import ParameterSource

    from edgeres import api
    from edgeres.report import bench_table
    from edgeres.serve.client import ServerBenchResult, server_bench_table

    if artifact is None and server is None:
        raise click.UsageError("Missing argument 'ARTIFACT' (or --server URL).")

    def given(name: str) -> bool:  # the API applies its own defaults (they depend on the mode)
        return ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE

    result = api.bench(artifact, server=server, model=model, batches=batches if given("batches") else None,
                       concurrency=concurrency, warmup_s=warmup, duration_s=duration if given("duration") else None,
                       iterations=iterations,
                       transfers=not no_transfers, threads=threads, out=out, report=report, plot=plot,
                       quiet=quiet_flag(ctx))
    click.echo(server_bench_table(result) if isinstance(result, ServerBenchResult) else bench_table(result))
    for path in (out, report, plot):
        if path is not None:
            click.echo(f"wrote {path}")


@cli.command("check")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.option("--baseline", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Baseline JSON to compare with (or to write with --update-baseline).")
@click.option("--server", metavar="URL", help="Gate the model `edgeres serve` serves at URL instead of ARTIFACT.")
@click.option("--model", help="With --server: the served model [the only edgeres model there].")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Labelled images <class>/<image> for accuracy [the baseline's folder].")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The FP32 model: ARTIFACT's top-1 must keep --tol-reference of its top-1.")
@click.option("--update-baseline", is_flag=True, help="Measure and (over)write --baseline instead of comparing.")
@click.option("--allow-mismatch", is_flag=True,
              help="Compare with a baseline of another artifact/model/device (with a warning) instead of refusing.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML for CI.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Write the verdict as Markdown.")
@click.option("--tol-accuracy-pp", default=0.5, show_default=True, type=click.FloatRange(min=0),
              help="Largest allowed top-1/top-5 drop, in percentage points.")
@click.option("--tol-reference", default=0.99, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Smallest allowed fraction of the reference's top-1 (MLPerf: 0.99).")
@click.option("--tol-latency", default=0.10, show_default=True, type=click.FloatRange(min=0),
              help="Largest allowed growth of median and p99 latency (0.10 = +10%).")
@click.option("--no-latency", is_flag=True, help="Skip latency: accuracy only (fast).")
@click.option("--side-by-side/--no-side-by-side", default=None,
              help="Time the baseline's artifact in alternating rounds with ARTIFACT and compare with those, not the "
                   "stored samples: machine drift cancels out [on whenever the baseline's artifact is on disk, "
                   "unchanged, and is another file than ARTIFACT].")
@click.option("--batch", "batches",
              help="Batch sizes for latency [the baseline's; new baseline: 1 and the profile's opt].")
@click.option("--trials", default=5, show_default=True, type=click.IntRange(min=1),
              help="Alternating latency trials (more trials: narrower intervals, fewer inconclusive verdicts).")
@click.option("--trial-duration", default="500ms", show_default=True, callback=_duration_option,
              help="Timed wall time per trial and batch size (the artifact and its probe alternate in it).")
@click.option("--threads", type=click.IntRange(min=1), help="Backend worker threads [physical cores].")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON instead of a table.")
@click.pass_context
def check_cmd(ctx: click.Context, artifact: Path | None, baseline: Path, server: str | None, model: str | None,
              data: Path | None, reference: Path | None, update_baseline: bool, allow_mismatch: bool,
              junit: Path | None, report: Path | None, tol_accuracy_pp: float, tol_reference: float,
              tol_latency: float, no_latency: bool, side_by_side: bool | None, batches: str | None, trials: int,
              trial_duration: float, threads: int | None, as_json: bool) -> None:
    """Gate ARTIFACT (or the model served at --server URL) against a baseline: accuracy and latency, each
    PASS / FAIL / INCONCLUSIVE.

    Latency is judged relative to a machine-speed probe timed beside ARTIFACT in both runs (or side by side with
    the baseline's artifact), so a busier machine gives INCONCLUSIVE, not FAIL; each row says why. A served
    model's latency is the client's time per request, compared with the stored samples (not load-normalised).

    Exit status: 0 pass, 1 regression, 2 usage or input error, 3 inconclusive (latency too noisy to tell).
    """
    from edgeres.checking import LatencyPlan, Tolerances, check as run_check
    from edgeres.report import check_table

    tolerances = Tolerances(accuracy_pp=tol_accuracy_pp, reference_ratio=tol_reference, latency_median=tol_latency,
                            latency_p99=tol_latency)
    plan = LatencyPlan(batches=batches, trials=trials, trial_duration_s=trial_duration)
    result = run_check(artifact, baseline=baseline, server=server, model=model, data=data, reference=reference,
                       tolerances=tolerances, update_baseline=update_baseline, allow_mismatch=allow_mismatch,
                       latency=not no_latency, plan=plan, threads=threads, side_by_side=side_by_side,
                       junit=junit, report=report, quiet=quiet_flag(ctx))
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(check_table(result))
    ctx.exit(result.exit_code)
# --- end bench/check commands ---


# --- build/infer commands ---
def _precisions() -> list[str]:
    from edgeres.backends import Precision

    return [p.value for p in Precision]


def _backends() -> list[str]:
    from edgeres.backends import BackendName

    return [b.value for b in BackendName]


def _tensorrt_choices(name: str) -> list[str]:
    from edgeres.backends import options

    return list(getattr(options, name))


def _print_rows(rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


@cli.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--precision", required=True, type=click.Choice(_precisions()), help="Precision of the artifact.")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(_backends()),
              help="auto = TensorRT when it can run here, else ONNX Runtime.")
@click.option("--calib", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="INT8 calibration images [the calibration set recorded in the model card].")
@click.option("--calib-method", default="entropy", show_default=True,
              type=click.Choice(_calibration_methods()), help="INT8 range method.")
@click.option("--calib-images", default=512, show_default=True, type=click.IntRange(min=1),
              help="Calibration images to sample.")
@click.option("--batch", default="1:8:32", show_default=True, help="Batch profile: N or min:opt:max.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [beside MODEL].")
@click.option("--force", is_flag=True, help="Rebuild an existing artifact (and re-export a checkpoint).")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads [physical cores].")
@click.option("--verify-images", default=16, show_default=True, type=click.IntRange(min=0),
              help="Images for the check against the FP32 ONNX (0 skips it).")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), help="TensorRT: builder workspace (MB).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="TensorRT: timing cache file.")
@click.option("--dla-core", type=click.IntRange(min=0), help="TensorRT: build for this DLA core (Jetson).")
@click.option("--int8-mode", default="explicit", show_default=True, type=click.Choice(_tensorrt_choices("INT8_MODES")),
              help="TensorRT: Q/DQ ONNX (explicit) or calibration cache (implicit, TensorRT 8.5-10.x).")
@click.option("--opt-level", type=click.IntRange(0, 5), help="TensorRT: builder optimisation level.")
@click.option("--version-compatible", is_flag=True, help="TensorRT: engine runnable by later TensorRT versions.")
@click.option("--high-precision", default="fp16", show_default=True,
              type=click.Choice(_tensorrt_choices("HIGH_PRECISIONS")),
              help="TensorRT int8: precision of the layers left unquantized.")
@click.option("--no-tf32", is_flag=True, help="TensorRT: strict FP32 (FP32 layers may not use TF32 tensor cores).")
@click.option("--max-drop", type=float, metavar="PP",
              help="int8: top-1 budget in percentage points vs FP32; the most sensitive layers stay in float.")
@click.option("--eval-data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Labelled held-out images for --max-drop [the card's validation set].")
@click.option("--exclude-layers", metavar="NAME,...", default="",
              help="int8: layers (ONNX node names) always left in float; `edgeres sensitivity` lists them.")
@click.option("--equalize", is_flag=True, help="int8: cross-layer range equalisation before calibration.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def build(ctx: click.Context, model: Path, precision: str, backend: str, calib: Path | None, calib_method: str,
          calib_images: int, batch: str, out_dir: Path | None, force: bool, threads: int | None,
          verify_images: int, workspace_mb: int | None, timing_cache: Path | None, dla_core: int | None,
          int8_mode: str, opt_level: int | None, version_compatible: bool, high_precision: str, no_tf32: bool,
          max_drop: float | None, eval_data: Path | None, exclude_layers: str, equalize: bool,
          as_json: bool) -> None:
    """Build an engine/artifact from MODEL (an exported .onnx or a .pt checkpoint) and verify it against FP32."""
    from edgeres.backends import BatchProfile, TensorRTOptions
    from edgeres.building import Int8Options, build_artifact, build_table

    int8 = Int8Options(calib_method=calib_method, calib_images=calib_images, max_drop=max_drop, eval_data=eval_data,
                       exclude_layers=tuple(name for name in exclude_layers.split(",") if name.strip()),
                       equalize=equalize)
    tensorrt = TensorRTOptions(int8_mode=int8_mode, workspace_mb=workspace_mb, timing_cache=timing_cache,
                               opt_level=opt_level, dla_core=dla_core, version_compatible=version_compatible,
                               high_precision=high_precision, tf32=not no_tf32)
    result = build_artifact(model, precision=precision, backend=backend, calib_dir=calib, int8=int8,
                            profile=BatchProfile.parse(batch), out_dir=out_dir, force=force, threads=threads,
                            verify_images=verify_images, quiet=quiet_flag(ctx), tensorrt=tensorrt)
    if as_json:
        echo_json(result.to_dict())
    else:
        _print_rows(build_table(result))


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.argument("images", type=click.Path(path_type=Path), required=False)
@click.option("--server", metavar="URL", help="Infer through `edgeres serve` at URL; then give only IMAGES.")
@click.option("--model", help="With --server: the served model [the only edgeres model there].")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1), help="Images per inference call.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Classes per image.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write results.json or results.csv.")
@click.option("--strict", is_flag=True, help="Exit 1 when any file was skipped (results are still written).")
@click.option("--threads", type=click.IntRange(min=1), help="Inference threads [physical cores].")
@click.option("--workers", type=click.IntRange(min=1), help="Decoding threads [CPU count, at most 4].")
@click.option("--json", "as_json", is_flag=True, help="Print the full results as JSON.")
@click.pass_context
def infer(ctx: click.Context, artifact: Path, images: Path | None, server: str | None, model: str | None,
          batch: int, top_k: int, out: Path | None, strict: bool, threads: int | None, workers: int | None,
          as_json: bool) -> None:
    """Classify every image under IMAGES with ARTIFACT (a built artifact or an exported ONNX), or with the model
    served at --server URL (`edgeres infer IMAGES --server URL`)."""
    from edgeres import api
    from edgeres.errors import DataError

    if server is not None:  # the one positional argument is then IMAGES
        if images is not None:
            raise click.UsageError("with --server give only IMAGES (the server holds the model)")
        artifact, images = None, artifact
    elif images is None:
        raise click.UsageError("Missing argument 'IMAGES' (or give only IMAGES with --server URL).")
    try:
        result = api.infer(artifact, images, server=server, model=model, batch=batch, top_k=top_k, out=out,
                           strict=strict, threads=threads, workers=workers, quiet=quiet_flag(ctx))
    except DataError as exc:
        if getattr(exc, "result", None) is None:
            raise
        _render_infer(exc.result, out, as_json)  # --strict: the good files are still reported
        raise
    _render_infer(result, out, as_json)


def _render_infer(result: Any, out: Path | None, as_json: bool) -> None:
    from edgeres.inference import predictions_table, summary_table

    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(predictions_table(result, max_rows=20 if out is not None else None))
        click.echo("")
        click.echo(summary_table(result))
        if out is not None:
            click.echo(f"wrote {out}")


@cli.command("compare")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as one JSON object.")
def compare_results(results: tuple[Path, ...], as_json: bool) -> None:
    """Print the summaries of several `edgeres infer --out X.json` RESULTS side by side (accuracy, latency)."""
    from edgeres import api
    from edgeres.inference import compare_table

    summaries = api.compare(results)
    if as_json:
        echo_json(summaries)
    else:
        click.echo(compare_table(summaries))
# --- end build/infer commands ---


# --- serve commands (issue 14) ---
def _device_choices() -> list[str]:
    from edgeres.serve.repository import Device

    return [d.value for d in Device]


@cli.command("export-triton")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model repository folder (created if missing; other models in it are kept).")
@click.option("--name", help="Model name [from the artifact's file name].")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(min=1), help="Model instances.")
@click.option("--max-queue-delay-us", default=100, show_default=True, type=click.IntRange(min=0),
              help="How long the dynamic batcher may wait to fill a batch.")
@click.option("--device", default="gpu", show_default=True, type=click.Choice(_device_choices()),
              help="Instance kind (cpu: ONNX artifacts only).")
@click.option("--tensorrt-ep", is_flag=True, help="ONNX: run through ONNX Runtime's TensorRT execution provider.")
@click.option("--force", is_flag=True, help="Replace an existing model folder of the same name.")
def export_triton_cmd(artifact: Path, repo: Path, name: str | None, instances: int, max_queue_delay_us: int,
                      device: str, tensorrt_ep: bool, force: bool) -> None:
    """Write ARTIFACT into a Triton model repository for NVIDIA's Triton containers (config.pbtxt checked
    against Triton's schema, labels from the model card, version folder 1)."""
    from edgeres.serve.repository import export_triton

    folder = export_triton(artifact, repo, name=name, instances=instances, max_queue_delay_us=max_queue_delay_us,
                           device=device, tensorrt_ep=tensorrt_ep, force=force)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        click.echo(f"wrote {path}")
    click.echo(f"serve it: docker run --gpus all -p 8000:8000 -v {repo.resolve()}:/models "
               f"nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")


@cli.command("serve")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="HTTP (KServe v2) port on 127.0.0.1; 0 = any free port.")
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(0, 65535), help="gRPC port.")
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(0, 65535),
              help="Prometheus metrics port.")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runner instances per model (one process each).")
@click.option("--max-queue-delay-us", default=500, show_default=True, type=click.IntRange(min=0),
              help="How long the dynamic batcher may wait to fill a batch.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime threads per instance [cores / 2 / instances].")
@click.option("--name", help="Tensor model name [from the artifact's file name]; the image model adds _image.")
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path),
              help="Write the generated repository here and keep it [a temporary folder].")
@click.option("--ready-timeout", default=120, show_default=True, type=click.IntRange(min=1),
              help="Seconds to wait for the server and its models.")
@click.pass_context
def serve(ctx: click.Context, artifact: Path, http_port: int, grpc_port: int, metrics_port: int, instances: int,
          max_queue_delay_us: int, threads: int | None, name: str | None, repo: Path | None,
          ready_timeout: int) -> None:
    """Serve ARTIFACT with Triton on 127.0.0.1 until Ctrl-C or SIGTERM: a tensor model (FP32 images in, logits
    out) and an image model (encoded image bytes in, top-k classes out), dynamically batched."""
    import time

    from edgeres import api
    from edgeres.serve.triton import ServerError

    click.echo(f"starting Triton for {artifact} ...", err=True)
    with api.serve_artifact(artifact, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                            instances=instances, max_queue_delay_us=max_queue_delay_us, threads=threads, name=name,
                            repo=repo, ready_timeout_s=ready_timeout) as (server, served):
        _print_endpoints(server, served)
        try:  # Ctrl-C/SIGTERM while serving is how it ends: a clean stop, exit 0 (while starting: "interrupted")
            while server.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            click.echo("stopping Triton ...", err=True)
        else:
            raise ServerError(f"Triton exited unexpectedly (code {server.process.returncode}): {server.log_tail()}")
    click.echo("stopped", err=True)


def _print_endpoints(server: Any, served: Any) -> None:
    card = served.artifact.card
    click.echo(f"serving {served.artifact.backend}, {served.artifact.precision}, batch up to "
               f"{served.artifact.profile.max}", err=True)
    click.echo(f"HTTP     {server.http_url}   (KServe v2)")
    click.echo(f"gRPC     {server.grpc_url}")
    click.echo(f"metrics  {server.metrics_url}")
    click.echo(f"process  {server.process.pid} (its own process group; the backend stubs are in it)")
    click.echo(f"models   {served.tensor_model} (FP32 {card.input_name} {list(card.preprocess.input_shape)} -> "
               f"{card.output_name}), {served.image_model} (image bytes -> top-k classes)")
    click.echo(f"try      edgeres infer IMAGES --server {server.http_url}   |   edgeres bench --server "
               f"{server.http_url}")
    click.echo("Ctrl-C stops the server.", err=True)


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted()


@cli.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def env_cmd(as_json: bool) -> None:
    """Which Python, packages and TensorRT edgeres uses here, their versions and where they come from (on a Jetson:
    JetPack's TensorRT and pycuda, from the system, through a venv with --system-site-packages)."""
    from edgeres import api

    report = api.environment_report()
    if as_json:
        echo_json(report)
        return
    click.echo(f"python   {report['python']} ({report['executable']}; "
               f"{'venv' if report['venv'] else 'no venv'}"
               f"{', system site packages' if report['system_site_packages'] else ''})")
    if report["jetson"]:
        click.echo(f"jetson   {report['jetson']}")
    for name, info in report["packages"].items():
        where = f"{info['location']} ({info['from']})" if info["location"] else "not installed"
        click.echo(f"{name:<12} {info['version'] or '-':<12} {where}")
    click.echo(f"backend  {report['backend']['auto']}: {report['backend']['why']}")


# --- studies ---
@cli.group()
def study() -> None:
    """Reproduce a result of the ResNet paper on your data, with what deployment does to it."""


@study.command("degradation")
@click.argument("data_dir")
@click.option("--depths", default="20,56", show_default=True, help="Depths (6n+2), comma-separated; a plain and a "
              "residual network each.")
@click.option("--shortcut", default="A", show_default=True, type=click.Choice(["A", "B"]),
              help="Residual shortcut where shapes change (A: zero-padded identity, B: projection).")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs per network [recipe: digits 10, else 160].")
@click.option("--seed", default=0, show_default=True, type=int, help="One seed for every network.")
@click.option("--threads", type=click.IntRange(min=1), help="Torch and ONNX Runtime CPU threads.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Study folder.")
@click.option("--force", is_flag=True, help="Start over in --out (even an unfinished study), or use an --out holding other files.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.pass_context
def study_degradation(ctx: click.Context, data_dir: str, depths: str, shortcut: str, epochs: int | None, seed: int,
                      threads: int | None, out: Path, force: bool, as_json: bool) -> None:
    """Train plain and residual nets of each depth on DATA_DIR (an image folder or 'digits') with one recipe,
    build each at FP32 and INT8, and write curves.png, table.md and table.json into --out (rerun to resume)."""
    from edgeres.study import TABLE_COLUMNS, StudyConfig, parse_depths, run_study, table_rows
    from edgeres.timing import format_table

    cfg = StudyConfig(depths=parse_depths(depths), shortcut=shortcut, epochs=epochs, seed=seed, threads=threads)
    quiet = quiet_flag(ctx)
    result = run_study(data_dir, out=out, config=cfg, force=force, quiet=quiet,
                       on_step=None if quiet else (lambda line: click.echo(f"study: {line}", err=True)))
    if as_json:
        echo_json({"out": str(result.out), "verdict": result.verdict, "networks": result.rows})
        return
    click.echo(format_table(TABLE_COLUMNS, table_rows(result.rows)))
    click.echo(result.verdict["summary"])
    click.echo(f"wrote {out / 'table.md'}, {out / 'table.json'}, {out / 'curves.png'}")


def main() -> None:
    """Console-script entry point: SIGTERM is handled like Ctrl-C (temporary files removed, exit 143)."""
    import signal

    signal.signal(signal.SIGTERM, _raise_interrupted)
    cli(obj={})


if __name__ == "__main__":
    main()
