"""Run an FP32 ONNX model on calibration batches and feed the tensors that need scales to a collector.

Only the tensors a Q/DQ model will quantize are observed (:func:`edgeres.quantization.tensors_to_observe`): they
become extra graph outputs of the BatchNorm-folded model, ONNX Runtime runs it on a few images at a time, and
each run's values go to the collector, which reduces them in its own thread while the next run goes on; memory
holds about three runs of intermediates, never all images' at once. The next batch of images is decoded in a
background thread too.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from edgeres.errors import InputError, ModelError
from edgeres.progress import Progress

log = logging.getLogger(__name__)

OBSERVED_BYTES_PER_RUN = 4 * 2**20
"""How much observed data one ONNX Runtime run may return when ``run_batch`` is automatic: it sets the images per
run (ResNet-18 at 224 observes ~14 MB per image → 1 per run; ResNet-20 on 32x32 digits ~1.3 MB → 3). Per-image
speed barely depends on the run size while peak memory grows with it (digits: ~100 MB peak with 4 MB runs, ~120 MB
with 8 MB, ~160 MB with 32 MB, in the same time)."""

MAX_RUN_BATCH = 64

SMALL_INPUT_PIXELS = 64 * 64
"""With a histogram collector, models whose input images have at most this many pixels (CIFAR, digits) get half the
cores for ONNX Runtime: their runs parallelise poorly, and histogramming costs about as much as the run, so the
collector thread needs a core of its own (digits entropy calibration on 2 cores: 1.7 s with one ORT thread, 2.0 s
with two). Large inputs (ResNet-18 at 224) and the light minmax collector are faster with every core for ORT."""


def _add_outputs(model: Any, tensors: Sequence[str]) -> int:
    """Append ``tensors`` to ``model``'s graph outputs in place; returns how many were appended."""
    from onnx import helper

    present = {o.name for o in model.graph.output}
    known = {v.name for v in model.graph.input} | {o for n in model.graph.node for o in n.output}
    missing = [t for t in tensors if t not in known]
    if missing:
        raise ModelError(f"cannot observe {missing[0]!r}: no such tensor in the model")
    added = [name for name in dict.fromkeys(tensors) if name not in present]
    model.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in added)
    return len(added)


def observing_session(model: Any, tensors: Sequence[str] | None = None, *,
                      heavy_collector: bool = False, equalize: bool = False) -> tuple[Any, list[str]]:
    """An ONNX Runtime CPU session of ``model`` that also outputs the tensors to observe, and their names.

    Args:
        model: a BatchNorm-folded ``onnx.ModelProto`` (not modified), or the path of an FP32 ONNX file, which is
            loaded and folded here so that no copy of its weights outlives the session's own (the lowest peak
            memory: for ResNet-50 the Python-side copies would otherwise exceed the session).
        tensors: the tensors to observe; default :func:`edgeres.quantization.tensors_to_observe`.
        heavy_collector: the collector costs about as much per value as the run (histograms): for small
            inputs ONNX Runtime then leaves it half the cores (:data:`SMALL_INPUT_PIXELS`).
        equalize: a model given as a path is also range-equalised after folding
            (:func:`edgeres.quantization.equalize.equalize`), as the Q/DQ writer will do.

    Raises:
        ModelError: an unreadable model, or a tensor that is not in it.
    """
    import onnxruntime as ort

    from edgeres.environment import cpu_count
    from edgeres.quantization import fold_batchnorm, tensors_to_observe

    if isinstance(model, (str, os.PathLike)):
        import onnx

        try:
            loaded = onnx.load(str(model))
        except Exception as exc:  # onnx raises DecodeError, OSError, ... for a file that is not a model
            raise ModelError(f"{model} is not a readable ONNX model ({exc})") from exc
        model = fold_batchnorm(loaded, inplace=True)
        del loaded
        if equalize:
            from edgeres.quantization.equalize import equalize as equalize_graph

            equalize_graph(model)
    names = list(tensors) if tensors is not None else tensors_to_observe(model)
    added = _add_outputs(model, names)
    try:
        serialized = model.SerializeToString()
    finally:  # the caller's model is left as it was, without a copy of its weights
        del model.graph.output[len(model.graph.output) - added:]
    pixels = _input_pixels(model)
    del model
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Idle ORT threads would spin for the next run while the collector and decoder threads wait for a core.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if heavy_collector and pixels is not None and pixels <= SMALL_INPUT_PIXELS:
        options.intra_op_num_threads = max(1, cpu_count() // 2)
    # The CPU arena stays on: without it every run maps its observed outputs afresh (ResNet-50: 65 MB per image)
    # and page faults made observation 1.4x slower for ~100 MB less peak.
    return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"]), names


def _input_pixels(model: Any) -> int | None:
    """H*W of the model's (first, NCHW) image input when static, else None."""
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
            return dims[2].dim_value * dims[3].dim_value
        return None
    return None


def observe(model: Any, batches: Iterable[Mapping[str, np.ndarray]], collector: Any, *,
            tensors: Sequence[str] | None = None, total: int | None = None, quiet: bool = False,
            desc: str = "calibrate", run_batch: int | None = None, equalize: bool = False) -> int:
    """Run ``model`` on every batch and pass each observed tensor to ``collector.observe(name, values)``.

    Args:
        model: a BatchNorm-folded ``onnx.ModelProto``, or the path of an FP32 ONNX file (folded here; the
            leanest in memory), see :func:`observing_session`.
        batches: an iterable of ``{input name: array}`` batches (a calibration data reader).
        collector: anything with ``observe(name, ndarray)``, e.g. ``calibration.collectors.make_collector(...)``.
        tensors: the tensors to observe; default :func:`edgeres.quantization.tensors_to_observe`.
        total: the number of images, for the progress bar.
        quiet: no progress bar.
        desc: the progress bar's label.
        run_batch: images per ONNX Runtime run; larger reader batches are run in slices of this size (the
            observed intermediates of one run dominate peak memory; per-image speed barely depends on it).
            None (the default) sizes runs from the first image so that one run returns about
            :data:`OBSERVED_BYTES_PER_RUN`.
        equalize: observe the range-equalised graph (a model given as a path only).

    Returns:
        The number of images run.

    Raises:
        InputError: a batch whose arrays do not fit the model's inputs.
    """
    from calibration import Method

    heavy = getattr(collector, "method", None) not in (None, Method.MINMAX)  # the histogram collectors
    session, names = observing_session(model, tensors, heavy_collector=heavy, equalize=equalize)
    del model
    input_names = [i.name for i in session.get_inputs()]
    fixed = session.get_inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) and fixed > 0 else None  # a model exported with --batch N
    step = fixed or (max(1, int(run_batch)) if run_batch is not None else None)
    count = 0
    with Progress(total, desc, unit="img", quiet=quiet) as bar, _CollectorThread(collector) as sink:
        for batch in _prefetch(batches):
            feed = _feed(batch, input_names)
            n = len(next(iter(feed.values())))
            start = 0
            while start < n:
                rows = step or 1  # automatic: the first run is one image, which measures what an image costs
                observed = _run_once(session, names, {k: v[start:start + rows] for k, v in feed.items()},
                                     sink, fixed=fixed)
                if step is None:
                    per_image = max(1, observed // min(rows, n - start))
                    step = max(1, min(MAX_RUN_BATCH, OBSERVED_BYTES_PER_RUN // per_image))
                    log.debug("observing %d bytes per image: %d images per run", per_image, step)
                start += rows
            count += n
            bar.update(n)
    log.debug("observed %d tensors on %d images", len(names), count)
    return count


def _run_once(session: Any, names: list[str], feed: dict[str, np.ndarray], sink: _CollectorThread, *,
              fixed: int | None) -> int:
    """Run one slice and hand its observed tensors to the collector; returns their size in bytes."""
    rows = len(next(iter(feed.values())))
    if fixed is not None and rows < fixed:  # a fixed-batch model: pad the last slice, observe only real rows
        feed = {k: np.concatenate([v, np.zeros((fixed - rows, *v.shape[1:]), v.dtype)]) for k, v in feed.items()}
    try:
        outputs = session.run(names, feed)
    except Exception as exc:  # onnxruntime raises its own exception types for bad shapes and dtypes
        shapes = {k: tuple(v.shape) for k, v in feed.items()}
        raise InputError(f"the model rejects a calibration batch of shape {shapes}: {exc}") from exc
    sink.put([(name, values[:rows] if fixed is not None else values) for name, values in zip(names, outputs)])
    return sum(values.nbytes for values in outputs)


class _CollectorThread:
    """Feeds a collector from its own thread, so reducing one run's tensors overlaps the next run.

    Histogram collectors cost about as much as ONNX Runtime's run of a small model; numpy and ONNX Runtime both
    release the GIL, so the two share the cores. Runs are observed in order (one consumer, first in first out),
    so results equal a sequential pass; at most one run waits in the queue, which bounds memory. An error raised
    by the collector is re-raised in the caller's thread at the next :meth:`put` or on exit.
    """

    def __init__(self, collector: Any) -> None:
        self._collector = collector
        self._queue: queue.Queue[list[tuple[str, np.ndarray]] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="calibration-collector", daemon=True)

    def __enter__(self) -> _CollectorThread:
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self._raise()

    def put(self, observed: list[tuple[str, np.ndarray]]) -> None:
        """Queue one run's ``(name, values)`` pairs (blocks while the previous run is still queued)."""
        self._raise()
        self._queue.put(observed)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while True:
            observed = self._queue.get()
            if observed is None:
                return
            if self._error is not None:
                continue  # keep draining so the producer never blocks on a dead consumer
            try:
                for name, values in observed:
                    self._collector.observe(name, values)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc


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
