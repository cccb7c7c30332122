"""FP32 ONNX → FP16 ONNX with FP32 inputs and outputs.

TensorRT 11 builds every network strongly typed: FP16 precision means an ONNX whose tensors are FP16. Inputs and
outputs stay FP32 (a Cast at each boundary) so callers feed and read the same arrays as the FP32 model, and
numerically sensitive ops (Softmax, reductions, normalisations) run in FP32 between Casts.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.errors import ModelError

log = logging.getLogger(__name__)

KEEP_FP32_OPS = frozenset({
    "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
    "LayerNormalization", "InstanceNormalization", "Exp", "Log", "Pow",
})
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16


def to_fp16(src: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = True) -> Path:
    """Write an FP16 copy of the FP32 ONNX ``src`` to ``out`` (atomically), keeping FP32 inputs and outputs.

    Args:
        src: the FP32 model.
        out: where to write the FP16 model.
        force: replace an existing ``out``.

    Returns:
        ``out`` as a Path.

    Raises:
        ModelError: the converted model fails ``onnx.checker``.
    """
    import onnx

    from edgeres.io import save_onnx_checked

    model = convert_fp16(onnx.load(str(src)))
    return save_onnx_checked(model, out, what=f"the FP16 model converted from {src}", force=force)


def convert_fp16(model: Any) -> Any:
    """The FP16 twin of an ``onnx.ModelProto`` (left unchanged), FP32 at the graph's boundaries."""
    import onnx
    from onnx import helper, numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    if any(node.op_type == "QuantizeLinear" for node in graph.node):
        raise ModelError("this model already holds Q/DQ nodes; convert the FP32 model to FP16 instead")
    init_names = {i.name for i in graph.initializer}
    keep = [n for n in graph.node if n.op_type in KEEP_FP32_OPS]
    fp32_consumed = {name for n in keep for name in n.input}
    for i, init in enumerate(graph.initializer):
        if init.data_type == _FLOAT and init.name not in fp32_consumed:
            arr = numpy_helper.to_array(init).astype(np.float16)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    nodes: list[Any] = []
    renames: dict[str, str] = {}
    for v in graph.input:
        if v.name not in init_names and v.type.tensor_type.elem_type == _FLOAT:
            renames[v.name] = f"{v.name}_fp16"
            nodes.append(helper.make_node("Cast", [v.name], [renames[v.name]], to=_FLOAT16,
                                          name=f"{v.name}_to_fp16"))
    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == _FLOAT}
    for node in graph.node:
        _convert_attributes(node)
        for k, name in enumerate(node.input):
            if name in renames:
                node.input[k] = renames[name]
        if node.op_type in KEEP_FP32_OPS:
            nodes.extend(_wrap_fp32(node))
            continue
        nodes.append(node)
    # Each FP32 output is now written in FP16 as "<name>_fp16"; a final Cast writes the FP32 "<name>".
    final: list[Any] = []
    for node in nodes:
        final.append(node)
        for j, name in enumerate(node.output):
            if name in outputs:
                node.output[j] = f"{name}_fp16"
                final.append(helper.make_node("Cast", [node.output[j]], [name], to=_FLOAT,
                                              name=f"{name}_to_fp32"))
    del graph.node[:]
    graph.node.extend(final)
    del graph.value_info[:]
    return result


def _wrap_fp32(node: Any) -> list[Any]:
    """Casts around an op kept in FP32: FP16 inputs → FP32, FP32 outputs → FP16."""
    from onnx import helper

    before, after = [], []
    for k, name in enumerate(node.input):
        if name:
            cast = f"{name}_fp32_for_{node.name or node.output[0]}"
            before.append(helper.make_node("Cast", [name], [cast], to=_FLOAT, name=f"{cast}_cast"))
            node.input[k] = cast
    for k, name in enumerate(node.output):
        raw = f"{name}_fp32"
        node.output[k] = raw
        after.append(helper.make_node("Cast", [raw], [name], to=_FLOAT16, name=f"{raw}_cast"))
    return before + [node] + after


def _convert_attributes(node: Any) -> None:
    """Float constants inside nodes (Constant values, ConstantOfShape fills, Cast targets) become FP16."""
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "to" and node.op_type == "Cast" and attr.i == _FLOAT:
            attr.i = _FLOAT16
        elif attr.type == 4 and attr.t.data_type == _FLOAT:  # AttributeProto.TENSOR
            arr = numpy_helper.to_array(attr.t).astype(np.float16)
            attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
