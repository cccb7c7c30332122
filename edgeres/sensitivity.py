"""Per-layer INT8 sensitivity, and the greedy search that keeps an accuracy budget by leaving layers in float.

Every variant is the very Q/DQ model the build would make (:func:`edgeres.quantization.quantize_model`, the ``s8``
TensorRT form), built from one set of calibration ranges and run on ONNX Runtime with graph optimisations off, so
Q/DQ execute as written (no integer kernels, no u8×s8 saturation): the execution whose accuracy predicts a
TensorRT engine. For each quantizable layer (a Conv/Gemm/MatMul with constant weights) two variants are measured
against FP32 on labelled images:

* *only this layer INT8* — the damage the layer does on its own;
* *all layers INT8 except this one* — what keeping it in float wins back.

::

    report = measure_sensitivity("model.onnx", ranges, images, labels)
    report.layers[0].node            # the most sensitive layer
    plan = fit_budget("model.onnx", ranges, images, labels, max_drop_pp=0.5, order=report.ranking())
    plan.kept                        # the layers left in float
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edgeres.comparison import compare_logits, top_k_accuracy
from edgeres.errors import InputError
from edgeres.progress import Progress

log = logging.getLogger(__name__)

EVAL_BATCH = 64


@dataclass(frozen=True)
class Layer:
    """A quantizable layer: the ONNX node and the activation tensor its INT8 input quantizes."""

    node: str
    op: str
    tensor: str


@dataclass
class LayerSensitivity:
    """The measured cost of quantizing one layer, in top-1 percentage points and logits, against FP32."""

    node: str
    op: str
    tensor: str
    only_top1_drop_pp: float  # top-1 drop with only this layer INT8
    only_logit_error: float  # mean |Δlogit| with only this layer INT8
    except_top1_drop_pp: float  # top-1 drop with every layer INT8 but this one
    except_logit_error: float  # mean |Δlogit| with every layer INT8 but this one

    @property
    def score(self) -> tuple[float, float]:
        """Sort key, most sensitive first: the top-1 damage of this layer alone, then (on the many ties at 0 pp)
        its logit damage alone."""
        return (self.only_top1_drop_pp, self.only_logit_error)


@dataclass
class SensitivityReport:
    """Sensitivity of every quantizable layer, most sensitive first."""

    model: str
    images: int
    fp32_top1: float  # percent
    int8_top1: float  # percent, every layer INT8
    int8_logit_error: float
    layers: list[LayerSensitivity] = field(default_factory=list)
    equalize: bool = False
    data: str = ""  # where the labelled images came from
    calibration: dict[str, Any] = field(default_factory=dict)  # method and images of the one calibration pass

    def ranking(self) -> list[str]:
        """Node names, most sensitive first."""
        return [layer.node for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "images": self.images, "fp32_top1": self.fp32_top1,
                "int8_top1": self.int8_top1, "int8_top1_drop_pp": self.fp32_top1 - self.int8_top1,
                "int8_logit_error": self.int8_logit_error, "equalize": self.equalize, "data": self.data,
                "calibration": self.calibration,
                "layers": [asdict(layer) for layer in self.layers]}


@dataclass
class BudgetPlan:
    """The layers a budget leaves in float, and what was measured with them."""

    kept: list[str]  # node names left in float, in the order they were given up
    top1_drop_pp: float  # measured with ``kept`` in float
    fp32_top1: float
    int8_top1: float
    layers_total: int
    images: int
    max_drop_pp: float

    @property
    def int8_layers(self) -> int:
        return self.layers_total - len(self.kept)

    def to_dict(self) -> dict[str, Any]:
        return {"high_precision_layers": list(self.kept), "measured_top1_drop_pp": round(self.top1_drop_pp, 4),
                "max_drop_pp": self.max_drop_pp, "fp32_top1": self.fp32_top1, "int8_top1": self.int8_top1,
                "int8_layers": self.int8_layers, "layers": self.layers_total, "eval_images": self.images}


def labelled_images(onnx_path: str | os.PathLike[str], *, data: str | os.PathLike[str] | None = None,
                    limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Held-out labelled images for accuracy measurements, preprocessed per the model card.

    ``data`` is a dataset root (its ``val/`` split is used) or a folder of class folders; by default the
    validation split of the dataset recorded in the card. Class folders are matched to the card's class names.
    At most ``limit`` images, sampled evenly across classes (seeded).

    Returns:
        (images, labels, where they came from).

    Raises:
        InputError: no card, no data given or recorded, classes the model does not know, no images.
    """
    from edgeres.card import calibration_images, read_onnx_card
    from edgeres.data import load_batch, open_dataset, scan_image_folder

    onnx_path = Path(onnx_path)
    card = read_onnx_card(str(onnx_path))
    if card is None:
        raise InputError(f"{onnx_path} carries no model card; export it with `edgeres export`")
    if data is None:
        root = card.dataset.get("root")
        if not root or not Path(root).is_dir():
            raise InputError(f"{onnx_path.name}'s card records no validation data on this machine; pass --eval-data "
                             f"DIR (a folder of class folders, never the calibration images)")
        folder, where = open_dataset(root).val, f"the validation split of {root}"
    else:
        data = Path(data)
        if not data.is_dir():
            raise InputError(f"{data}: folder not found; pass a folder of class folders with labelled images")
        if (data / "val").is_dir():
            folder, where = open_dataset(data).val, f"{data}/val"
        else:
            folder, where = scan_image_folder(data), str(data)
    unknown = [c for c in folder.classes if c not in card.class_names]
    if unknown:
        raise InputError(f"{where} has class folder(s) {', '.join(unknown[:3])} that {onnx_path.name} does not know; "
                         f"its classes are {', '.join(card.class_names[:5])}...")
    calibration = {c.resolve() for c in calibration_images(card) if c.is_file()}
    overlap = [path for path, _ in folder.samples if Path(path).resolve() in calibration]
    if overlap:
        raise InputError(f"{where} holds {len(overlap)} of the calibration images (e.g. {overlap[0]}); accuracy "
                         f"must be measured on held-out images: pass the validation folder")
    samples = [(path, card.class_names.index(folder.classes[label])) for path, label in folder.samples]
    if limit is not None and len(samples) > limit:
        rng = np.random.default_rng(seed)
        samples = [samples[i] for i in sorted(rng.choice(len(samples), size=limit, replace=False))]
    if not samples:
        raise InputError(f"{where} holds no labelled images; give a folder of class folders")
    images = load_batch([path for path, _ in samples], card.preprocess)
    return images, np.array([label for _, label in samples]), f"{len(samples)} images of {where}"


def quantizable_layers(model: Any, *, equalize: bool = False) -> list[Layer]:
    """The layers the ``s8`` Q/DQ form quantizes, in graph order (``model`` is not modified)."""
    from edgeres.quantization import fold_batchnorm, placement
    from edgeres.quantization.equalize import equalize as equalize_graph
    from edgeres.quantization.graph import GraphIndex, data_inputs

    folded = fold_batchnorm(model)
    if equalize:
        equalize_graph(folded)
    place = placement(folded, "s8")
    index = GraphIndex.of(folded.graph)
    layers = []
    for i in place.weighted:
        node = folded.graph.node[i]
        inputs = data_inputs(node, index)
        layers.append(Layer(node=node.name, op=node.op_type, tensor=inputs[0] if inputs else ""))
    unnamed = [layer for layer in layers if not layer.node]
    if unnamed:
        raise InputError(f"{len(unnamed)} quantizable node(s) have no name; per-layer choices need named nodes "
                         f"(re-export the model with edgeres export)")
    return layers


def check_layer_names(model: Any, names: Iterable[str]) -> list[str]:
    """``names`` if each names a quantizable layer; otherwise a one-line InputError listing some that do."""
    known = [layer.node for layer in quantizable_layers(model)]
    wanted = [n.strip() for n in names if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        sample = ", ".join(known[:6]) + (", ..." if len(known) > 6 else "")
        raise InputError(f"--exclude-layers: {', '.join(unknown)} is not a quantizable layer of the model; "
                         f"quantizable layers: {sample} (edgeres sensitivity lists them all)")
    return wanted


class _Evaluator:
    """Runs Q/DQ variants of one FP32 model on fixed labelled images and scores them against FP32."""

    def __init__(self, model_path: Path, amax: dict[str, float], images: np.ndarray, labels: np.ndarray, *,
                 equalize: bool) -> None:
        import onnx

        if len(images) == 0:
            raise InputError("no labelled images to measure accuracy on; give a folder of class folders")
        self.path = model_path
        self.source = onnx.load(str(model_path))
        self.amax = amax
        self.images = images
        self.labels = np.asarray(labels)
        self.equalize = equalize
        self.fp32 = self.run(self.source.SerializeToString())
        self.fp32_top1 = self.top1(self.fp32)

    def run(self, serialized: bytes) -> np.ndarray:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: self.images[i:i + EVAL_BATCH]})[0]
                               for i in range(0, len(self.images), EVAL_BATCH)])

    def top1(self, logits: np.ndarray) -> float:
        return 100.0 * top_k_accuracy(logits, self.labels, k=1)

    def variant(self, keep_fp32: Sequence[str]) -> tuple[float, float]:
        """(top-1 drop in pp, mean |Δlogit|) of the Q/DQ model with ``keep_fp32`` left in float."""
        from edgeres.quantization import quantize_model

        qmodel = quantize_model(self.source, self.amax, keep_fp32=keep_fp32, equalize=self.equalize)
        logits = self.run(qmodel.SerializeToString())
        return self.fp32_top1 - self.top1(logits), compare_logits(self.fp32, logits).mean_abs_diff


def _float_everything_but(layer: str, layers: list[Layer], model: Any) -> list[str]:
    """keep_fp32 for "only ``layer`` INT8": every other layer, and the residual Adds and pools."""
    ops = {node.op_type for node in model.graph.node}
    return [other.node for other in layers if other.node != layer] + sorted(
        ops & {"Add", "MaxPool", "AveragePool", "GlobalAveragePool"})


def measure_sensitivity(model_path: str | os.PathLike[str], ranges: Any, images: np.ndarray,
                        labels: Sequence[int], *, equalize: bool = False, quiet: bool = False) -> SensitivityReport:
    """Measure every quantizable layer of ``model_path`` (one set of ``ranges`` for every variant).

    Args:
        model_path: the FP32 ONNX the ranges were calibrated on.
        ranges: its ``calibration.Ranges`` (or their file).
        images: preprocessed images (N, C, H, W), float32, never the calibration images.
        labels: their class indices.
        equalize: measure the range-equalised model (the ranges must have been calibrated with equalisation).
        quiet: no progress bar.

    Raises:
        InputError: no images, unnamed layers, ranges of another model.
    """
    from edgeres.ranges import load_ranges_for

    model_path = Path(model_path)
    ranges = load_ranges_for(model_path, ranges)
    ev = _Evaluator(model_path, ranges.amax, images, np.asarray(labels), equalize=equalize)
    return _measure(ev, quantizable_layers(ev.source, equalize=equalize), quiet=quiet)


def _measure(ev: _Evaluator, layers: list[Layer], *, quiet: bool) -> SensitivityReport:
    drop_all, error_all = ev.variant([])
    results = []
    with Progress(len(layers), "sensitivity", unit="layer", quiet=quiet) as bar:
        for layer in layers:
            only = ev.variant(_float_everything_but(layer.node, layers, ev.source))
            but = ev.variant([layer.node])
            results.append(LayerSensitivity(layer.node, layer.op, layer.tensor, only[0], only[1], but[0], but[1]))
            bar.update(1)
    results.sort(key=lambda r: r.score, reverse=True)
    return SensitivityReport(model=str(ev.path), images=len(ev.images), fp32_top1=ev.fp32_top1,
                             int8_top1=ev.fp32_top1 - drop_all, int8_logit_error=error_all, layers=results,
                             equalize=ev.equalize)


def fit_budget(model_path: str | os.PathLike[str], ranges: Any, images: np.ndarray, labels: Sequence[int], *,
               max_drop_pp: float, order: Sequence[str] | None = None, exclude: Sequence[str] = (),
               equalize: bool = False, quiet: bool = False) -> BudgetPlan:
    """Leave the fewest layers in float that bring the top-1 drop against FP32 within ``max_drop_pp``.

    Layers are given up in ``order`` (default: :func:`measure_sensitivity`'s ranking on these images), after the
    ones ``exclude`` forces. Each step is measured, so the plan's drop is a measurement, not an estimate.

    Raises:
        InputError: a negative budget, no images, or a budget missed even with every layer in float.
    """
    from edgeres.ranges import load_ranges_for

    if not max_drop_pp >= 0:  # NaN too
        raise InputError(f"--max-drop must be 0 or more percentage points, got {max_drop_pp}")
    model_path = Path(model_path)
    ranges = load_ranges_for(model_path, ranges)
    ev = _Evaluator(model_path, ranges.amax, images, np.asarray(labels), equalize=equalize)
    found = quantizable_layers(ev.source, equalize=equalize)
    layers = [layer.node for layer in found]
    if order is None:  # one evaluator serves the ranking and the search: FP32 is run once
        report = _measure(ev, found, quiet=quiet)
        order, drop_all = report.ranking(), report.fp32_top1 - report.int8_top1
    else:
        drop_all = ev.variant([])[0]
    kept = list(dict.fromkeys(exclude))
    queue = [name for name in order if name not in kept]
    drop = ev.variant(kept)[0] if kept else drop_all
    with Progress(len(queue), "accuracy budget", unit="layer", quiet=quiet) as bar:
        while drop > max_drop_pp + 1e-9 and queue:
            kept.append(queue.pop(0))
            drop = ev.variant(kept)[0]
            bar.update(1, drop=f"{drop:.2f}pp")
    if drop > max_drop_pp + 1e-9:
        raise InputError(f"--max-drop {max_drop_pp}: even with all {len(layers)} layers in float the top-1 drop "
                         f"is {drop:.2f} pp on {len(images)} images (the residual Adds and pools stay INT8); raise "
                         f"the budget or build --precision fp16/fp32")
    log.info("accuracy budget %.2f pp: %d of %d layers INT8, measured drop %.2f pp", max_drop_pp,
             len(layers) - len(kept), len(layers), drop)
    return BudgetPlan(kept=kept, top1_drop_pp=drop, fp32_top1=ev.fp32_top1, int8_top1=ev.fp32_top1 - drop_all,
                      layers_total=len(layers), images=len(images), max_drop_pp=max_drop_pp)


def run_sensitivity(model_path: str | os.PathLike[str], *, data: str | os.PathLike[str] | None = None,
                    images: int | None = 500, calib: str | os.PathLike[str] | None = None, method: str = "entropy",
                    calib_images: int = 512, equalize: bool = False, quiet: bool = False) -> SensitivityReport:
    """What ``edgeres sensitivity`` does: one calibration pass, then :func:`measure_sensitivity` on held-out
    labelled images (:func:`labelled_images`)."""
    from edgeres.calibrating import DEFAULT_BATCH, calibrate

    x, y, where = labelled_images(model_path, data=data, limit=images)
    ranges = calibrate(model_path, data=calib, method=method, images=calib_images,
                       batch_size=min(DEFAULT_BATCH, calib_images), quiet=quiet, equalize=equalize)
    report = measure_sensitivity(model_path, ranges, x, y, equalize=equalize, quiet=quiet)
    report.data = where
    report.calibration = {"method": ranges.method, "images": ranges.num_images}
    return report


def sensitivity_table(report: SensitivityReport, *, limit: int | None = None) -> str:
    """A fixed-width table for the terminal, most sensitive first, under a one-line summary."""
    from edgeres.timing import format_table

    headers = ["#", "layer", "op", "only INT8 Δtop-1", "Δlogit", "all but it Δtop-1", "Δlogit"]
    rows = [[str(i), layer.node, layer.op, f"{layer.only_top1_drop_pp:+.2f} pp", f"{layer.only_logit_error:.4f}",
             f"{layer.except_top1_drop_pp:+.2f} pp", f"{layer.except_logit_error:.4f}"]
            for i, layer in enumerate(report.layers[:limit], start=1)]
    head = (f"{report.images} images: FP32 top-1 {report.fp32_top1:.2f}%, all layers INT8 {report.int8_top1:.2f}% "
            f"({report.int8_top1 - report.fp32_top1:+.2f} pp); Δtop-1 is the drop against FP32")
    return head + "\n" + format_table(headers, rows)


def plot_sensitivity(report: SensitivityReport, path: str | os.PathLike[str]) -> Path:
    """A bar plot of each layer's "only this layer INT8" logit error, most sensitive first (PNG, atomically)."""
    from edgeres.io import atomic_path
    from edgeres.report import require_matplotlib

    figure_cls, canvas_cls = require_matplotlib()
    path = Path(path)
    names = [layer.node for layer in report.layers]
    fig = figure_cls(figsize=(max(6.0, 0.35 * len(names)), 4.5))
    canvas_cls(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(names)), [layer.only_logit_error for layer in report.layers], color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("mean |Δlogit| with only this layer INT8")
    twin = ax.twinx()
    twin.plot(range(len(names)), [layer.only_top1_drop_pp for layer in report.layers], "o", color="tab:red")
    twin.set_ylabel("top-1 drop (pp), red dots")
    ax.set_title(f"INT8 sensitivity per layer ({report.images} images)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=120)
    return path
