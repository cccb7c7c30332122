"""Classify a folder of images with an artifact: prefetching decode, fixed-size batches, top-k, accuracy, latency.

Images are found recursively in a stable (sorted relative path) order, decoded and preprocessed with the
artifact's own model card on a pool of worker threads that runs ahead of the model through a bounded queue, and
fed to the runner in fixed-size batches (the last one zero-padded; the padding's outputs are dropped). Bad files
are skipped and listed with the reason. When images sit in folders named after the model's classes, top-1/top-5
accuracy is reported too::

    result = infer_folder("model.int8.onnx", "images/", batch=8, top_k=5)
    result.write("results.json")        # {"results": [...], "skipped": [...], "summary": {...}}
"""
from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeres.comparison import top_k_hits
from edgeres.errors import DataError, EdgeresError, InputError, ModelError
from edgeres.timing import LatencyStats, format_table, stage_summary, stats_table, throughput

log = logging.getLogger(__name__)

TOP5 = 5


@dataclass
class Prediction:
    """One classified file: its top-k (label, probability) pairs, best first, and its true label when known."""

    path: str
    topk: list[tuple[str, float]]
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "topk": [{"label": lab, "prob": prob} for lab, prob in self.topk]}


@dataclass
class Skipped:
    """A file that could not be classified, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class InferResult:
    """Predictions, skipped files and the summary (images, wall time, throughput, latency, accuracy)."""

    predictions: list[Prediction]
    skipped: list[Skipped]
    summary: dict[str, Any]
    latency: dict[str, LatencyStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: ``{"results": [{"path", "topk": [{"label", "prob"}]}], "skipped": [...], "summary"}``."""
        return {"results": [p.to_dict() for p in self.predictions],
                "skipped": [s.to_dict() for s in self.skipped], "summary": self.summary}

    def to_csv(self) -> str:
        """One row per file: ``path, label_1, prob_1, ..., label_k, prob_k, skipped`` (the reason, if skipped)."""
        k = max((len(p.topk) for p in self.predictions), default=0)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", *[f"{name}_{i}" for i in range(1, k + 1) for name in ("label", "prob")], "skipped"])
        for p in self.predictions:
            cells = [c for lab, prob in p.topk for c in (lab, f"{prob:.6f}")]
            writer.writerow([p.path, *cells, *[""] * (2 * k - len(cells)), ""])
        for s in self.skipped:
            writer.writerow([s.path, *[""] * (2 * k), s.reason])
        return buf.getvalue()

    def write(self, out: str | os.PathLike[str], *, force: bool = True) -> Path:
        """Write JSON (``.json``) or CSV (``.csv``) atomically; returns the path."""
        from edgeres.io import write_json_atomic, write_text_atomic

        out = Path(out)
        suffix = out.suffix.lower()
        if suffix == ".json":
            return write_json_atomic(out, self.to_dict(), force=force)
        if suffix == ".csv":
            return write_text_atomic(out, self.to_csv(), force=force)
        raise InputError(f"--out must end in .json or .csv, got {out}")


def infer_folder(artifact_or_model: str | os.PathLike[str], folder: str | os.PathLike[str], *, batch: int = 8,
                 top_k: int = 5, workers: int | None = None, threads: int | None = None,
                 prefetch: int | None = None, strict: bool = False, quiet: bool = False,
                 runner: Any = None) -> InferResult:
    """Classify every image under ``folder`` with an artifact (or a plain ONNX carrying the model card).

    Args:
        artifact_or_model: an artifact built by ``edgeres build``, or an exported ONNX with its card.
        folder: the images, searched recursively; an image file alone works too.
        batch: images per inference call; the last batch is zero-padded to this size.
        top_k: classes reported per image (capped at the number of classes).
        workers: decoding threads; None = the CPU count, at most 4.
        threads: inference threads (ONNX Runtime intra-op); None = the artifact's default (physical cores).
        prefetch: decoded images allowed to wait for the model; None = 2 batches (at least 2 per worker).
        strict: raise :class:`DataError` (after classifying the good files; the result rides on the error as
            ``.result``) when any file was skipped.
        quiet: no progress bar.
        runner: an open runner to use instead of opening ``artifact_or_model`` (e.g. a
            :class:`edgeres.serve.client.RemoteRunner`; not closed here).

    Returns:
        The predictions, skipped files and a summary with throughput, per-batch latency and accuracy.

    Raises:
        DataError: the folder is missing or holds no images; with ``strict``, a file was skipped.
    """
    from edgeres import backends
    from edgeres.data import IMAGE_SUFFIXES, list_images

    folder = Path(folder)
    if batch < 1:
        raise InputError(f"--batch must be >= 1, got {batch}")
    if top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {top_k}")
    workers = workers if workers is not None else max(1, min(4, os.cpu_count() or 1))
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if Path(artifact_or_model).suffix.lower() in (".pt", ".pth"):
        raise InputError(f"{artifact_or_model} is a checkpoint; infer runs a built artifact or an exported ONNX: "
                         f"`edgeres build {artifact_or_model} --precision fp32` first")
    files = list_images(folder, recursive=True)
    if not files:
        raise DataError(f"{folder}: no images found (searched recursively for {' '.join(sorted(IMAGE_SUFFIXES))})")
    load_start = time.perf_counter()
    # idle ORT threads must not spin while the decoders need the same cores
    import contextlib

    opened = contextlib.nullcontext(runner) if runner is not None else \
        backends.open(artifact_or_model, threads=threads, spinning=False)
    with opened as runner:
        if not runner.profile.min <= batch <= runner.profile.max:
            raise InputError(f"--batch {batch} is outside {artifact_or_model}'s batch profile {runner.profile}; "
                             f"pick a batch in {runner.profile.min}..{runner.profile.max} or rebuild with --batch")
        load_s = time.perf_counter() - load_start
        run = _Pipeline(runner, files, folder=folder, batch=batch, top_k=top_k, workers=workers,
                        prefetch=prefetch or max(2 * batch, 2 * workers), quiet=quiet)
        run.go()
    result = run.result(artifact=str(artifact_or_model), load_s=load_s, workers=workers,
                        threads=getattr(runner, "threads", threads))
    if result.skipped and not result.predictions:
        first = result.skipped[0]
        raise DataError(f"{folder}: none of its {len(result.skipped)} image file(s) could be read, first "
                        f"{first.path}: {first.reason}")
    if strict:
        raise_if_skipped(result)
    return result


def _load(path: Path, pre: Any) -> tuple[np.ndarray | None, str | None, float]:
    """Decode + preprocess one file in a worker: (array, None, ms) or (None, reason, ms)."""
    from edgeres.data import load_image

    start = time.perf_counter()
    try:
        x: np.ndarray | None = load_image(path, pre)
        reason = None
    except EdgeresError as exc:
        x, reason = None, _strip_path(str(exc), path)
    except OSError as exc:
        x, reason = None, f"cannot read ({exc.strerror or exc})"
    return x, reason, (time.perf_counter() - start) * 1e3


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


class _Pipeline:
    """Runs the decode pool ahead of the model and collects predictions and per-batch times."""

    def __init__(self, runner: Any, files: Sequence[Path], *, folder: Path, batch: int, top_k: int, workers: int,
                 prefetch: int, quiet: bool) -> None:
        self.runner, self.files, self.folder = runner, list(files), folder
        self.batch, self.workers, self.prefetch, self.quiet = batch, workers, prefetch, quiet
        card = runner.card
        self.pre = card.preprocess
        self.classes = list(card.class_names)
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        self.top_k = min(top_k, len(self.classes))
        self.predictions: list[Prediction] = []
        self.skipped: list[Skipped] = []
        self.times: dict[str, list[float | None]] = {k: [] for k in
                                                      ("preprocess", "input_wait", "inference", "h2d", "compute",
                                                       "d2h")}
        self.hits = {"labelled": 0, "top1": 0, "top5": 0}
        self.wall_s = 0.0

    def go(self) -> None:
        from edgeres.progress import Progress

        buf = np.zeros((self.batch, *self.pre.input_shape), dtype=np.float32)
        members: list[Path] = []
        pre_ms = wait_ms = 0.0
        pending: deque[tuple[Path, Future[tuple[np.ndarray | None, str | None, float]]]] = deque()
        todo = iter(self.files)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="edgeres-decode") as pool, \
                Progress(len(self.files), "infer", unit="img", quiet=self.quiet) as bar:

            def fill() -> None:
                while len(pending) < self.prefetch:
                    path = next(todo, None)
                    if path is None:
                        return
                    pending.append((path, pool.submit(_load, path, self.pre)))

            fill()
            while pending:
                path, fut = pending.popleft()
                fill()
                t0 = time.perf_counter()
                x, reason, ms = fut.result()
                wait_ms += (time.perf_counter() - t0) * 1e3
                bar.update(1)
                if x is None:
                    log.warning("skipping %s: %s", path, reason)
                    self.skipped.append(Skipped(str(path), reason or "unknown error"))
                    continue
                buf[len(members)] = x
                members.append(path)
                pre_ms += ms
                if len(members) == self.batch:
                    self._run(buf, members, pre_ms, wait_ms)
                    members, pre_ms, wait_ms = [], 0.0, 0.0
            if members:
                buf[len(members):] = 0.0  # padding; its outputs are dropped
                self._run(buf, members, pre_ms, wait_ms)
        self.wall_s = time.perf_counter() - start

    def _run(self, buf: np.ndarray, members: list[Path], pre_ms: float, wait_ms: float) -> None:
        t0 = time.perf_counter()
        logits = self.runner.infer(buf)
        inf_ms = (time.perf_counter() - t0) * 1e3
        stages = self.runner.last_stage_times
        self.times["preprocess"].append(pre_ms)
        self.times["input_wait"].append(wait_ms)
        self.times["inference"].append(inf_ms)
        for name in ("h2d", "compute", "d2h"):
            self.times[name].append(getattr(stages, f"{name}_ms", None) if stages is not None else None)
        real = np.asarray(logits[:len(members)], dtype=np.float64)
        if not np.isfinite(real).all():
            first = members[int(np.flatnonzero(~np.isfinite(real).all(axis=1))[0])]
            raise ModelError(f"the model gave NaN or infinite scores (first for {first}): its weights are broken "
                             "(a diverged training?); retrain with a lower --lr, export and build again")
        if real.shape[1] != len(self.classes):
            raise ModelError(f"the model gives {real.shape[1]} scores per image but its card names "
                             f"{len(self.classes)} classes: card and model disagree; re-export the model")
        probs = softmax(real)
        order = np.argsort(-probs, axis=1, kind="stable")
        rows, truths = [], []
        for row, (path, p, idx) in enumerate(zip(members, probs, order)):
            label = path.parent.name if path.parent != self.folder else None
            label = label if label in self.class_index else None
            topk = [(self.classes[i], float(p[i])) for i in idx[:self.top_k]]
            self.predictions.append(Prediction(str(path), topk, label))
            if label is not None:
                rows.append(row)
                truths.append(self.class_index[label])
        if rows:  # counted as the gate, the study and the sensitivity evaluator count (edgeres.comparison)
            self.hits["labelled"] += len(rows)
            self.hits["top1"] += top_k_hits(probs[rows], truths, k=1)
            self.hits["top5"] += top_k_hits(probs[rows], truths, k=TOP5)

    def result(self, *, artifact: str, load_s: float, workers: int, threads: int | None) -> InferResult:
        # h2d/compute/d2h only add information when the runner splits its time (TensorRT); on ORT compute == inference
        split = any(v is not None for v in self.times["h2d"] + self.times["d2h"])
        keep = [k for k in self.times if split or k not in ("h2d", "compute", "d2h")]
        latency = stage_summary({k: self.times[k] for k in keep}) if self.times["inference"] else {}
        n = len(self.predictions)
        labelled = self.hits["labelled"]
        accuracy = None
        if labelled:
            accuracy = {"top1": self.hits["top1"] / labelled, "top5": self.hits["top5"] / labelled,
                        "labelled": labelled, "classes_in": "parent folder names"}
        summary = {
            "artifact": artifact, "backend": self.runner.backend, "precision": self.runner.precision,
            "images": n, "skipped": len(self.skipped), "batch": self.batch,
            "batches": len(self.times["inference"]), "workers": workers, "threads": threads,
            "load_s": round(load_s, 4), "wall_s": round(self.wall_s, 4),
            "images_per_s": round(throughput(n, self.wall_s), 3),
            "latency_ms": {k: v.to_dict() for k, v in latency.items()},
            "accuracy": accuracy,
        }
        return InferResult(self.predictions, self.skipped, summary, latency)


def raise_if_skipped(result: InferResult) -> None:
    """``--strict``: raise :class:`DataError` naming the first skipped file when any file was skipped; the
    result rides on the error as ``.result`` (so a caller can still report the good files)."""
    if result.skipped:
        first = result.skipped[0]
        err = DataError(f"{len(result.skipped)} unreadable image(s) (remove or fix them) skipped (--strict), first "
                        f"{first.path}: {first.reason}")
        err.result = result  # type: ignore[attr-defined]
        raise err


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably (max subtracted) in the input's float type."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predictions_table(result: InferResult, *, max_rows: int | None = None) -> str:
    """``file | top-k`` text table (``label prob`` pairs, best first); skipped files last with their reason."""
    rows = [[p.path, ", ".join(f"{lab} {prob:.3f}" for lab, prob in p.topk)] for p in result.predictions]
    rows += [[s.path, f"SKIPPED: {s.reason}"] for s in result.skipped]
    extra = 0
    if max_rows is not None and len(rows) > max_rows:
        extra, rows = len(rows) - max_rows, rows[:max_rows]
    table = format_table(["file", "top-k (label prob)"], rows)
    return table + (f"\n... {extra} more rows (use --out to write them all)" if extra else "")


def summary_table(result: InferResult) -> str:
    """Images, wall time, throughput, accuracy (when labelled) and the per-batch latency table."""
    s = result.summary
    lines = [f"backend {s['backend']} ({s['precision']}), batch {s['batch']}, {s['workers']} decode workers, "
             f"{s['threads']} inference threads",
             f"images {s['images']} (skipped {s['skipped']}), wall {s['wall_s']:.3f} s, "
             f"{s['images_per_s']:.1f} images/s"]
    acc = s.get("accuracy")
    if acc:
        lines.append(f"accuracy top-1 {acc['top1'] * 100:.2f}%  top-5 {acc['top5'] * 100:.2f}%  "
                     f"({acc['labelled']} labelled images)")
    if result.latency:
        lines += ["per-batch latency:", stats_table(result.latency)]
    return "\n".join(lines)


def load_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``summary`` of a results JSON written by ``edgeres infer --out x.json``.

    Raises:
        InputError: the file is missing, not JSON, or not an infer results file.
    """
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"results file {path} not found; write one with `edgeres infer ... --out {path.name}`") from None
    except json.JSONDecodeError as exc:
        csv = path.suffix.lower() == ".csv" or "," in path.read_text(errors="replace").partition("\n")[0]
        what = "a CSV file" if csv else f"not JSON (line {exc.lineno}: {exc.msg})"
        raise InputError(f"{path} is {what}, not an `edgeres infer` results JSON; compare reads the .json that "
                         "`edgeres infer ... --out results.json` writes") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read results file {path} ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict):
        raise InputError(f"{path} is not an `edgeres infer` results JSON (no 'summary' object)")
    from edgeres.schema import RESULTS, SchemaError, validate

    try:
        validate(data, RESULTS)
    except SchemaError as exc:
        raise InputError(f"results file {path}: {exc}; write it again with `edgeres infer ... --out`") from None
    return data["summary"]


def distinct_labels(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Column labels for results files: their stems, or as many trailing path parts as make them differ
    (``a/results`` and ``b/results``); the same file given twice is numbered."""
    parts = [Path(p).with_suffix("").parts for p in paths]
    depth = 1
    while depth <= max(len(p) for p in parts):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1
    labels = ["/".join(p) for p in parts]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def compare_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Several infer summaries side by side: one column per run (e.g. fp32 and int8), one row per number."""

    def pct(s: dict[str, Any], key: str) -> str:
        acc = s.get("accuracy")
        return f"{acc[key] * 100:.2f}%" if acc else "-"

    def lat(s: dict[str, Any], stage: str, stat: str) -> str:
        value = s.get("latency_ms", {}).get(stage, {}).get(stat)
        return f"{value:.2f}" if value is not None else "-"

    rows = [
        ("backend", lambda s: f"{s.get('backend')} ({s.get('precision')})"),
        ("images (skipped)", lambda s: f"{s.get('images')} ({s.get('skipped')})"),
        ("accuracy top-1", lambda s: pct(s, "top1")),
        ("accuracy top-5", lambda s: pct(s, "top5")),
        ("images/s", lambda s: f"{s.get('images_per_s', 0):.1f}"),
        ("wall s", lambda s: f"{s.get('wall_s', 0):.2f}"),
        ("batch", lambda s: str(s.get("batch"))),
        ("inference median ms/batch", lambda s: lat(s, "inference", "median")),
        ("inference p99 ms/batch", lambda s: lat(s, "inference", "p99")),
        ("preprocess median ms/batch", lambda s: lat(s, "preprocess", "median")),
    ]
    names = list(summaries)
    body = [[label, *(fn(summaries[n]) for n in names)] for label, fn in rows]
    return format_table(["", *names], body)
