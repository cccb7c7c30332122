"""BatchNorm folding and weight clean-up before quantization.

ONNX Runtime's Q/DQ fusions need every Conv to read its weight and bias straight from initializers: a
``Conv → BatchNormalization`` pair, a missing bias or a bias routed through an ``Identity`` node (the legacy
torch exporter does this for all-zero biases) leaves convolutions in float. :func:`fold_batchnorm` fixes all
three without changing what the model computes.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def fold_batchnorm(model: Any, *, inplace: bool = False) -> Any:
    """Fold each ``Conv → BatchNormalization`` into the Conv and give every Conv a real bias initializer.

    Also replaces ``Constant`` nodes and ``Identity`` nodes of initializers by plain initializers. The folded
    Conv writes the BatchNorm's output tensor, so downstream tensor names do not change.

    Args:
        model: an ``onnx.ModelProto``; it is not modified unless ``inplace``.
        inplace: fold ``model`` itself instead of a copy (a copy of ResNet-152 is 240 MB of weights).

    Returns:
        The folded model: a new ``onnx.ModelProto``, or ``model`` itself when ``inplace``.
    """
    import onnx

    if inplace:
        out = model
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    graph = out.graph
    _constants_to_initializers(graph)
    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in graph.output}
    producer = {name: node for node in graph.node for name in node.output}
    removed: set[int] = set()
    folded = 0
    for node in graph.node:
        if node.op_type != "BatchNormalization" or len(node.output) != 1:
            continue
        conv = producer.get(node.input[0])
        if (conv is None or conv.op_type != "Conv" or consumers.get(conv.output[0]) != 1
                or conv.output[0] in graph_outputs or conv.input[1] not in inits
                or not all(name in inits for name in node.input[1:5])):
            continue
        _fold_one(graph, inits, conv, node)
        removed.add(id(node))
        folded += 1
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    _add_missing_biases(graph, inits)
    _drop_unused_initializers(graph)
    del graph.value_info[:]
    log.debug("folded %d BatchNormalization nodes", folded)
    return out


def _constants_to_initializers(graph: Any) -> None:
    """Constant nodes and Identity-of-initializer nodes become initializers (Conv weights must be initializers)."""
    from onnx import numpy_helper

    inits = {init.name for init in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = numpy_helper.to_array(node.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
            inits.add(node.output[0])
        elif node.op_type == "Identity" and node.input[0] in inits:
            source = next(i for i in graph.initializer if i.name == node.input[0])
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(source), node.output[0]))
            inits.add(node.output[0])
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _fold_one(graph: Any, inits: dict[str, Any], conv: Any, bn: Any) -> None:
    from onnx import numpy_helper

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale, shift, mean, var = (arr(name) for name in bn.input[1:5])
    weight = arr(conv.input[1])
    bias = arr(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0])
    factor = scale / np.sqrt(var + eps)
    new_weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    new_bias = (bias - mean) * factor + shift
    stem = bn.output[0]
    w_name, b_name = f"{stem}.folded_weight", f"{stem}.folded_bias"
    for name, value in ((w_name, new_weight), (b_name, new_bias)):
        init = numpy_helper.from_array(value.astype(np.float32), name)
        graph.initializer.append(init)
        inits[name] = init
    del conv.input[1:]
    conv.input.extend([w_name, b_name])
    conv.output[0] = bn.output[0]


def _add_missing_biases(graph: Any, inits: dict[str, Any]) -> None:
    from onnx import numpy_helper

    for node in graph.node:
        if node.op_type != "Conv" or node.input[1] not in inits:
            continue
        if len(node.input) > 2 and node.input[2]:
            continue
        channels = inits[node.input[1]].dims[0]
        name = f"{node.output[0]}.zero_bias"
        init = numpy_helper.from_array(np.zeros(channels, np.float32), name)
        graph.initializer.append(init)
        inits[name] = init
        del node.input[2:]
        node.input.append(name)


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    all_inits = {init.name for init in graph.initializer}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [v for v in graph.input if v.name in used or v.name not in all_inits]
    del graph.input[:]
    graph.input.extend(inputs)
