"""The degradation study: He et al. (2016), Fig. 6 and Table 6, on your own data, plus what INT8 does to each net.

Plain and residual CIFAR-family networks of each depth are trained with one recipe and seed (:func:`edgeres.training`),
then exported (:func:`edgeres.exporting.export_onnx`), built for ONNX Runtime at FP32 and INT8 with entropy
calibration (:func:`edgeres.building.build_artifact`), scored on the validation split, timed at batch 1, and probed
for their most INT8-sensitive layer (:func:`edgeres.sensitivity.measure_sensitivity`). Nothing here trains or
quantizes on its own: it orchestrates those steps and writes, into one folder::

    DIR/study.json               the settings (a rerun with the same settings resumes)
    DIR/<net>/model.pt           the checkpoint, resumable like `edgeres train --resume`
    DIR/<net>/row.json           the network's finished measurements (a resumed study does not redo them)
    DIR/table.md, table.json     one row per network
    DIR/curves.png               train (dashed) and val (bold) error per epoch; plain left, residual right

::

    result = run_study("digits", out="study", config=StudyConfig(depths=(20, 56), epochs=30))
    result.rows[0]["train_error"]
"""
from __future__ import annotations

import logging
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeres import models
from edgeres.errors import InputError
from edgeres.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

STUDY_FORMAT = "edgeres-study-degradation-1"
TABLE_COLUMNS = ("network", "params", "train err %", "val err %", "FP32 top-1 %", "INT8 top-1 %",
                 "FP32 ms", "INT8 ms", "worst INT8 layer", "its drop pp")


@dataclass
class StudyConfig:
    """One study: every network gets this recipe (``None``: the ``edgeres train`` recipe's default)."""

    depths: tuple[int, ...] = (20, 56)  # each 6n + 2; a plain and a residual net per depth
    shortcut: str = "A"  # the residual nets' shortcut option where shapes change (A: the paper's CIFAR choice)
    epochs: int | None = None  # digits: 10
    seed: int = 0  # one seed for every network: same initialisation stream, same batch order
    batch_size: int | None = None  # digits: 32
    lr: float | None = None  # digits: 0.05
    threads: int | None = None  # torch and ONNX Runtime threads; default: their own
    calib_images: int = 512  # entropy calibration images (all of them when fewer)
    sensitivity_images: int = 300  # held-out images for the per-layer sensitivity
    latency_s: float = 1.0  # timed seconds per artifact at batch 1

    def settings(self) -> dict[str, Any]:
        """What must match for a rerun to resume (latency time and threads may change)."""
        d = asdict(self)
        d["depths"] = list(self.depths)
        return {k: v for k, v in d.items() if k not in ("threads", "latency_s")}


@dataclass
class StudyResult:
    out: Path
    rows: list[dict[str, Any]]
    trained: list[str]  # networks trained (or resumed) by this run; the others were finished before
    verdict: dict[str, Any] = field(default_factory=dict)


def parse_depths(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``"20,56"`` -> ``(20, 56)``; every depth must be ``6n + 2`` (8, 14, 20, ...) and name a CIFAR net."""
    items = [str(t).strip() for t in (text.split(",") if isinstance(text, str) else text)]
    depths = []
    for item in items:
        if not item.isdigit() or int(item) < 8 or (int(item) - 2) % 6:
            raise InputError(f"--depths: {item!r} is not a CIFAR ResNet depth; depths must be 6n+2 "
                             f"(8, 14, 20, 32, 44, 56, 110, ...)")
        if models.default_input_size(f"resnet{item}") != 32:
            raise InputError(f"--depths: resnet{item} names the ImageNet ResNet-{item}, not a CIFAR net; "
                             f"pick another 6n+2 depth (e.g. {int(item) - 6} or {int(item) + 6})")
        depths.append(int(item))
    if not depths or len(set(depths)) != len(depths):
        raise InputError(f"--depths: give distinct depths separated by commas, e.g. 20,56 (got {text!r})")
    return tuple(sorted(depths))


def network_names(config: StudyConfig) -> list[str]:
    """The networks of a study, shallow to deep, each plain net before its residual twin."""
    return [f"{kind}{depth}" for depth in config.depths for kind in ("plain", "resnet")]


def run_study(data: str | Path, *, out: str | Path, config: StudyConfig | None = None, force: bool = False,
              quiet: bool = False, on_step: Callable[[str], None] | None = None) -> StudyResult:
    """Train, build and measure every network of the study, resuming what an earlier run left unfinished.

    Args:
        data: an image folder (``train/`` + ``val/``) or the built-in ``"digits"``.
        out: the study folder.
        config: the study's settings.
        force: start over in an ``out`` that holds a finished study, another study or other files.
        quiet: no progress bars.
        on_step: called with one line per step ("plain56 (3/4): training 30 epochs"), for progress.

    Raises:
        InputError: a bad depth, an unusable ``out``, a dataset that cannot be opened.
    """
    from edgeres.training import resolve_dataset

    cfg = config or StudyConfig()
    cfg.depths = parse_depths(cfg.depths)
    if cfg.shortcut.upper() not in ("A", "B"):
        raise InputError(f"--shortcut must be A or B, got {cfg.shortcut!r}")
    out = Path(out)
    names = network_names(cfg)
    try:  # a missing or empty dataset fails here, before anything is written
        resolve_dataset(data, seed=cfg.seed)
    except InputError as exc:
        if "--val-split" not in str(exc):
            raise
        raise InputError(f"{data} has no train/ and val/ class folders; the study needs DATA/train/<class>/ and "
                         "DATA/val/<class>/ images (or the built-in name 'digits')") from None
    _prepare_out(out, cfg, names, force=force)
    step = on_step or (lambda line: None)
    rows, trained = [], []
    for i, name in enumerate(names, start=1):
        where = f"{name} ({i}/{len(names)})"
        row_path = out / name / "row.json"
        if row_path.is_file():
            step(f"{where}: finished in an earlier run, kept")
            rows.append(_read_json(row_path))
            continue
        if _train_network(data, out / name / "model.pt", name, cfg, quiet=quiet, step=step, where=where):
            trained.append(name)
        step(f"{where}: export, FP32/INT8 builds, accuracy, latency, sensitivity")
        row = measure_network(out / name / "model.pt", name=name, config=cfg, quiet=quiet)
        write_json_atomic(row_path, row)
        rows.append(row)
    verdict = degradation_verdict(rows)
    write_json_atomic(out / "table.json", {"format": STUDY_FORMAT, "settings": cfg.settings(), "data": str(data),
                                           "verdict": verdict, "networks": rows})
    write_text_atomic(out / "table.md", table_markdown(rows, verdict=verdict, config=cfg, data=data))
    plot_curves(rows, out / "curves.png")
    return StudyResult(out=out, rows=rows, trained=trained, verdict=verdict)


def _prepare_out(out: Path, cfg: StudyConfig, names: list[str], *, force: bool) -> None:
    """Resume an unfinished study with the same settings; refuse anything else unless ``force``, which starts
    over (removing only what a study writes)."""
    marker = out / "study.json"
    previous = _read_json(marker) if marker.is_file() else None
    resumable = (previous is not None and previous.get("settings") == cfg.settings()
                 and not (out / "table.json").exists())
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the study")
    if out.is_dir() and any(out.iterdir()) and (force or not resumable):
        if not force:
            if previous is None:
                why = "is not empty"
            elif previous.get("settings") != cfg.settings():
                why = "holds a study with other settings"
            else:
                why = "holds a finished study"
            raise InputError(f"--out {out} {why}; pass --force to start over there, or choose another --out")
        for name in {*names, *(previous or {}).get("networks", [])}:  # only what a study writes is removed
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for file in ("table.json", "table.md", "curves.png", "study.json"):
            (out / file).unlink(missing_ok=True)
    elif resumable:
        log.info("resuming the study in %s", out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"format": STUDY_FORMAT, "settings": cfg.settings(), "networks": names})


def _train_network(data: str | Path, checkpoint: Path, name: str, cfg: StudyConfig, *, quiet: bool,
                   step: Callable[[str], None], where: str) -> bool:
    """Train ``name`` into ``checkpoint``, resuming a partial one; False when it had already finished."""
    import torch

    from edgeres.training import TrainConfig, train

    options = {"shortcut": cfg.shortcut.upper()} if name.startswith("resnet") else {}
    tc = TrainConfig(arch=name, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                     model_options=options, threads=cfg.threads)
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["epoch"] >= state["config"]["epochs"]:
            return False
        step(f"{where}: resuming training at epoch {state['epoch'] + 1}/{state['config']['epochs']}")
        train(data, out=checkpoint, config=tc, resume=True, quiet=quiet)
        return True
    step(f"{where}: training" + (f" {cfg.epochs} epochs" if cfg.epochs else ""))
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    train(data, out=checkpoint, config=tc, quiet=quiet)
    return True


def measure_network(checkpoint: Path, *, name: str, config: StudyConfig, quiet: bool = True) -> dict[str, Any]:
    """The table row of one trained network (see :data:`TABLE_COLUMNS`); builds its artifacts beside it."""
    import torch

    from edgeres.backends import open as open_runner
    from edgeres.building import Int8Options, build_artifact
    from edgeres.exporting import export_onnx
    from edgeres.sensitivity import labelled_images, measure_sensitivity
    from edgeres.training import load_checkpoint

    model, card = load_checkpoint(checkpoint)
    history = torch.load(checkpoint, map_location="cpu", weights_only=False)["history"]
    onnx_path = export_onnx(checkpoint, out=checkpoint.with_suffix(".onnx"), force=True, quiet=quiet).path
    fp32 = build_artifact(onnx_path, precision="fp32", backend="onnxruntime", threads=config.threads,
                          verify_images=0, force=True, quiet=quiet)
    int8 = build_artifact(onnx_path, precision="int8", backend="onnxruntime",
                          int8=Int8Options(calib_method="entropy", calib_images=config.calib_images),
                          threads=config.threads, verify_images=0, force=True, quiet=quiet)
    images, labels, where = labelled_images(onnx_path)
    row: dict[str, Any] = {
        "network": name, "residual": name.startswith("resnet"), "depth": int(re.sub(r"\D", "", name)),
        "shortcut": config.shortcut.upper() if name.startswith("resnet") else None,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": len(history), "seed": config.seed,
        "train_error": 100.0 * (1 - history[-1]["train_top1"]),
        "val_error": 100.0 * (1 - history[-1]["val_top1"]),
        "curves": {"train_error": [100.0 * (1 - h["train_top1"]) for h in history],
                   "val_error": [100.0 * (1 - h["val_top1"]) for h in history]},
        "eval": where,
    }
    for precision, built in (("fp32", fp32), ("int8", int8)):
        top1, latency_ms = _score_and_time(built.artifact, images, labels, seconds=config.latency_s,
                                           threads=config.threads, open_runner=open_runner)
        row[f"{precision}_top1"] = top1
        row[f"{precision}_latency_ms"] = latency_ms
    x, y, _ = labelled_images(onnx_path, limit=config.sensitivity_images, seed=config.seed)
    report = measure_sensitivity(onnx_path, int8.ranges, x, y, quiet=quiet)
    worst = report.layers[0]
    row["worst_int8_layer"] = {"node": worst.node, "op": worst.op, "top1_drop_pp": worst.only_top1_drop_pp,
                               "logit_error": worst.only_logit_error, "images": report.images}
    return row


def _score_and_time(artifact: Path, images: np.ndarray, labels: np.ndarray, *, seconds: float,
                    threads: int | None, open_runner: Callable[..., Any]) -> tuple[float, float]:
    """(top-1 % on the labelled images, median ms per batch-1 call) of one built artifact."""
    from edgeres.benchmarking import time_calls
    from edgeres.comparison import top_k_accuracy
    from edgeres.timing import summarize

    with open_runner(artifact, **({"threads": threads} if threads else {})) as runner:
        step = max(1, min(32, runner.profile.max))
        logits = np.concatenate([runner.infer(images[i:i + step]) for i in range(0, len(images), step)])
        top1 = 100.0 * top_k_accuracy(logits, labels, k=1)
        calls = time_calls(runner, images[:1], duration_s=seconds, warmup_s=min(0.5, seconds))
    return top1, summarize(calls.latency_ms).median


def degradation_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper's finding checked on the shallowest and deepest depth: did plain training error rise with depth
    while residual training error did not?"""
    by = {r["network"]: r for r in rows}
    depths = sorted({r["depth"] for r in rows})
    if len(depths) < 2:
        return {"shallow": None, "deep": None, "degradation": None,
                "summary": "one depth only: nothing to compare"}
    lo, hi = depths[0], depths[-1]
    p_lo, p_hi = by[f"plain{lo}"]["train_error"], by[f"plain{hi}"]["train_error"]
    r_lo, r_hi = by[f"resnet{lo}"]["train_error"], by[f"resnet{hi}"]["train_error"]
    plain_degrades, residual_holds = p_hi > p_lo, r_hi <= r_lo
    seen = plain_degrades and residual_holds
    summary = (f"plain-{hi} train error {p_hi:.2f}% vs plain-{lo} {p_lo:.2f}% "
               f"({'higher' if plain_degrades else 'not higher'}); resnet-{hi} {r_hi:.2f}% vs resnet-{lo} "
               f"{r_lo:.2f}% ({'at or below' if residual_holds else 'above'}): the degradation "
               f"{'appeared' if seen else 'did not appear'}")
    return {"shallow": lo, "deep": hi, "plain_deeper_trains_worse": plain_degrades,
            "residual_deeper_trains_no_worse": residual_holds, "degradation": seen, "summary": summary}


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The table's cells, one list per network, in :data:`TABLE_COLUMNS` order."""
    return [[r["network"], f"{r['params']:,}", f"{r['train_error']:.2f}", f"{r['val_error']:.2f}",
             f"{r['fp32_top1']:.2f}", f"{r['int8_top1']:.2f}", f"{r['fp32_latency_ms']:.3f}",
             f"{r['int8_latency_ms']:.3f}", r["worst_int8_layer"]["node"],
             f"{r['worst_int8_layer']['top1_drop_pp']:.2f}"] for r in rows]


def table_markdown(rows: list[dict[str, Any]], *, verdict: dict[str, Any], config: StudyConfig,
                   data: str | Path) -> str:
    from edgeres.report import markdown_table

    first = rows[0] if rows else {}
    recipe = (f"data `{data}`, seed {config.seed}, {first.get('epochs', '?')} epochs, shortcut "
              f"{config.shortcut.upper()}, the `edgeres train` recipe otherwise (batch "
              f"{config.batch_size or 'default'}, lr {config.lr or 'default'})")
    notes = [
        "Train error: the running error of the last epoch's augmented training batches (as in the paper's Fig. 6);"
        " val error: the validation split after that epoch (eval mode).",
        "FP32 / INT8 top-1: the ONNX Runtime artifacts (INT8: entropy calibration) on the whole validation split;"
        " latency: median of batch-1 calls on this CPU.",
        f"Worst INT8 layer: the layer whose INT8 alone costs the most top-1 (pp) on {config.sensitivity_images} "
        "held-out images (`edgeres sensitivity`).",
    ]
    return "\n".join([
        "# Degradation study: plain vs residual, FP32 vs INT8", "", recipe, "",
        markdown_table(TABLE_COLUMNS, table_rows(rows)), "",
        f"**Verdict:** {verdict['summary']}.", "", *[f"- {n}" for n in notes], "",
    ])


def plot_curves(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Fig. 6 style: error per epoch, train dashed and val bold, plain nets left, residual nets right."""
    from edgeres.io import atomic_path
    from edgeres.report import require_matplotlib

    Figure, Canvas = require_matplotlib()
    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    Canvas(fig)
    axes = fig.subplots(1, 2, sharey=True)
    depths = sorted({r["depth"] for r in rows})
    colours = {d: f"C{i}" for i, d in enumerate(depths)}
    for ax, residual, title in ((axes[0], False, "plain"), (axes[1], True, "ResNet")):
        for r in (r for r in rows if r["residual"] is residual):
            epochs = range(1, len(r["curves"]["train_error"]) + 1)
            label = f"{title}-{r['depth']}"
            ax.plot(epochs, r["curves"]["train_error"], linestyle="--", linewidth=1, color=colours[r["depth"]],
                    label=f"{label} train")
            ax.plot(epochs, r["curves"]["val_error"], linestyle="-", linewidth=2.5, color=colours[r["depth"]],
                    label=f"{label} val")
        ax.set(xlabel="epoch", title=f"{title} networks", ylim=(0, None))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.suptitle("training (dashed) and validation (bold) error", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc}); pass --force to start the study over") from None
