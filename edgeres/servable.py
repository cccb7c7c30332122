"""What edgeres can serve, checked before anything is built or written.

edgeres serves image classifiers: one image-batch input laid out as the model card says, one output of class
scores (one per class the card names), finite weights. :func:`check_servable` refuses anything else with what to do
instead, so a build never leaves an artifact whose sidecar promises what the model cannot do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeres.card import ModelCard
from edgeres.errors import InputError, ModelError


def _dims(value_info: Any) -> tuple[int | str | None, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)


def graph_inputs(model: Any) -> list[Any]:
    """The graph's real inputs (initializers listed as inputs by old exporters left out)."""
    initializers = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def check_servable(model: Any, card: ModelCard, path: str | Path, *, profile: Any = None) -> None:
    """Refuse an ONNX model edgeres cannot build and serve correctly.

    Args:
        model: the ``onnx.ModelProto`` (weights loaded).
        card: its model card.
        path: the file, for messages.
        profile: the batch profile asked for (a :class:`edgeres.backends.BatchProfile`), or None.

    Raises:
        ModelError: several inputs or outputs, an input that is not the card's image batch (e.g. channels-last
            against an NCHW card), outputs that are not one score per card class, non-finite weights.
        InputError: a fixed-batch model with a profile other than that batch.
    """
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(v.name for v in inputs) or "none"
        raise ModelError(f"{path} has {len(inputs)} inputs ({names}); edgeres serves single-input image "
                         "classifiers: export the model with one image input")
    shape = _dims(inputs[0])
    expected = tuple(card.preprocess.input_shape)
    if len(shape) != 4:
        raise ModelError(f"{path} input {inputs[0].name!r} has shape {shape}; edgeres serves an image batch "
                         f"(N, {', '.join(map(str, expected))}) as the card's {card.preprocess.layout} layout says")
    fixed = [(got, want) for got, want in zip(shape[1:], expected) if isinstance(got, int) and got > 0]
    if any(got != want for got, want in fixed):
        hint = ""
        if card.preprocess.layout == "NCHW" and shape[3] == card.preprocess.channels:
            hint = " (the model looks channels-last, NHWC)"
        raise ModelError(f"{path} takes input {shape[1:]}{hint} but its card's preprocessing makes "
                         f"{card.preprocess.layout} images {expected}: re-export the model so that its input is "
                         f"(N, {', '.join(map(str, expected))}), or fix the card's preprocess.layout")
    outputs = list(model.graph.output)
    if len(outputs) != 1:
        raise ModelError(f"{path} has {len(outputs)} outputs; edgeres serves one output of class scores "
                         f"(N, {card.num_classes}): export only the logits")
    out_shape = _dims(outputs[0])
    classes = out_shape[-1] if out_shape else None
    if len(out_shape) != 2 or (isinstance(classes, int) and classes > 0 and classes != card.num_classes):
        raise ModelError(f"{path} output {outputs[0].name!r} has shape {out_shape}, not class scores "
                         f"(N, {card.num_classes}) for the {card.num_classes} classes its card names: the card "
                         "and the model disagree; re-export the model with its own card")
    _check_finite(model, path)
    batch = shape[0]
    if profile is not None and isinstance(batch, int) and batch > 0 and not profile.min == profile.max == batch:
        raise InputError(f"{path} has a fixed batch of {batch} (exported with --batch {batch}) but --batch asks "
                         f"for {profile}; pass --batch {batch}, or re-export with the default dynamic batch")


def _check_finite(model: Any, path: str | Path) -> None:
    from onnx import numpy_helper

    from onnx import TensorProto

    for init in model.graph.initializer:
        if init.data_type not in (1, 10, 11, 16) or init.data_location == TensorProto.EXTERNAL:
            continue  # not floats (FLOAT, FLOAT16, DOUBLE, BFLOAT16), or weights in a side file not loaded here
        values = numpy_helper.to_array(init)
        if values.size and not np.isfinite(values).all():
            raise ModelError(f"{path} holds non-finite weights ({init.name} has NaN or inf): the model's training "
                             "diverged; retrain it with a lower --lr and export again")
