"""Run an FP32 ONNX model on calibration batches and feed the tensors that need scales to a collector.

Only the tensors a Q/DQ model will quantize are observed (:func:`edgeres.quantize.tensors_to_observe`): they
become extra graph outputs of a BatchNorm-folded copy of the model, ONNX Runtime runs it once per batch, and
each batch's values go to the collector before the next batch runs, so memory holds one batch of intermediates,
never all images' intermediates at once. The next batch is decoded in a background thread while the model runs.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from edgeres.errors import InputError, ModelError
from edgeres.progress import Progress

log = logging.getLogger(__name__)

RUN_BATCH = 8  # ResNet-18 at 224: ~0.6 GB peak at 8 images per run, ~1.3 GB at 32


def observing_model(model: Any, tensors: Sequence[str]) -> Any:
    """A copy of ``model`` (an ``onnx.ModelProto``) that also outputs ``tensors``."""
    import onnx
    from onnx import helper

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    known = {v.name for v in augmented.graph.input} | {o for n in augmented.graph.node for o in n.output}
    missing = [t for t in tensors if t not in known]
    if missing:
        raise ModelError(f"cannot observe {missing[0]!r}: no such tensor in the model")
    for name in tensors:
        if name not in present:
            augmented.graph.output.append(helper.make_empty_tensor_value_info(name))
    return augmented


def observe(model: Any, batches: Iterable[Mapping[str, np.ndarray]], collector: Any, *,
            tensors: Sequence[str] | None = None, total: int | None = None, quiet: bool = False,
            desc: str = "calibrate", run_batch: int = RUN_BATCH) -> int:
    """Run ``model`` on every batch and pass each observed tensor to ``collector.observe(name, values)``.

    Args:
        model: a BatchNorm-folded ``onnx.ModelProto`` (see :func:`edgeres.quantize.fold_batchnorm`).
        batches: an iterable of ``{input name: array}`` batches (a calibration data reader).
        collector: anything with ``observe(name, ndarray)``, e.g. ``calibration.collectors.make_collector(...)``.
        tensors: the tensors to observe; default :func:`edgeres.quantize.tensors_to_observe`.
        total: the number of images, for the progress bar.
        quiet: no progress bar.
        desc: the progress bar's label.
        run_batch: images per ONNX Runtime run; larger reader batches are run in slices of this size (the
            observed intermediates of one run dominate peak memory; per-image speed barely depends on it).

    Returns:
        The number of images run.

    Raises:
        InputError: a batch whose arrays do not fit the model's inputs.
    """
    import onnxruntime as ort

    from edgeres.quantize import tensors_to_observe

    step = max(1, int(run_batch))
    names = list(tensors) if tensors is not None else tensors_to_observe(model)
    augmented = observing_model(model, names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    fixed = session.get_inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) and fixed > 0 else None  # a model exported with --batch N
    step = fixed or step
    count = 0
    with Progress(total, desc, unit="img", quiet=quiet) as bar:
        for batch in _prefetch(batches):
            feed = _feed(batch, input_names)
            n = len(next(iter(feed.values())))
            for start in range(0, n, step):
                _run_once(session, names, {k: v[start:start + step] for k, v in feed.items()}, collector,
                          fixed=fixed)
            count += n
            bar.update(n)
    log.debug("observed %d tensors on %d images", len(names), count)
    return count


def _run_once(session: Any, names: list[str], feed: dict[str, np.ndarray], collector: Any, *,
              fixed: int | None) -> None:
    rows = len(next(iter(feed.values())))
    if fixed is not None and rows < fixed:  # a fixed-batch model: pad the last slice, observe only real rows
        feed = {k: np.concatenate([v, np.zeros((fixed - rows, *v.shape[1:]), v.dtype)]) for k, v in feed.items()}
    try:
        outputs = session.run(names, feed)
    except Exception as exc:  # onnxruntime raises its own exception types for bad shapes and dtypes
        shapes = {k: tuple(v.shape) for k, v in feed.items()}
        raise InputError(f"the model rejects a calibration batch of shape {shapes}: {exc}") from exc
    for name, values in zip(names, outputs):
        collector.observe(name, values[:rows] if fixed is not None else values)


def _feed(batch: Mapping[str, np.ndarray], input_names: list[str]) -> dict[str, np.ndarray]:
    missing = [n for n in input_names if n not in batch]
    if missing:
        raise InputError(f"calibration batch lacks model input {missing[0]!r} (it has {', '.join(batch)})")
    return {n: np.ascontiguousarray(batch[n], dtype=np.float32) for n in input_names}


_DONE = object()


def _prefetch(batches: Iterable[Any]) -> Iterator[Any]:
    """Iterate ``batches`` one item ahead in a background thread (image decoding overlaps inference).

    At most two batches exist at once; an exception in the producer is re-raised here.
    """
    slots: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                slots.put(item)
            slots.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slots.put(exc)

    worker = threading.Thread(target=produce, name="calibration-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
