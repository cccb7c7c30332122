"""Cross-layer range equalisation (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019) on a BatchNorm-folded ONNX graph.

For a ``Conv A → ReLU → Conv B`` chain whose intermediate tensors feed nothing else, scaling A's output channel
``i`` (weights and bias) by ``1/s_i`` and B's input channel ``i`` by ``s_i`` leaves the model's output unchanged
in exact arithmetic, because ReLU is positively homogeneous (``relu(x / s) = relu(x) / s`` for ``s > 0``). With

    s_i = sqrt(r1_i / r2_i)      (r1: range of A's output channel i, r2: range of B's input channel i)

both become ``sqrt(r1_i * r2_i)``: a channel that one layer inflated and the next deflated, which makes the
per-tensor INT8 scale of the activation between them useless for every other channel, is brought back in line.
The ranges are those of the weights (data-free), so :func:`equalize` is deterministic: calibration and the Q/DQ
writer compute the very same graph, and ranges observed on it stay valid for it.

Per-channel weight quantization absorbs the scales on A's side; on B's side the scales move range between its
input channels, which the paper's balance criterion keeps even.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ITERATIONS = 8  # the paper iterates over all pairs until the scales settle; a few sweeps suffice for ResNets
_TINY = 1e-12


@dataclass(frozen=True)
class Pair:
    """One ``Conv A → ReLU → Conv B`` chain: the node names and the equalised activation tensor."""

    first: str
    second: str
    tensor: str  # the ReLU output B reads (the activation whose per-tensor range equalisation evens out)


def equalizable_pairs(model: Any) -> list[Pair]:
    """The ``Conv → ReLU → Conv`` chains of a folded graph that :func:`equalize` may rescale."""
    return [Pair(a.name or a.output[0], b.name or b.output[0], relu.output[0])
            for a, relu, b in _chains(model.graph)]


def equalize(model: Any, *, iterations: int = ITERATIONS) -> list[Pair]:
    """Equalise every eligible chain of ``model`` (BatchNorm-folded, weights in initializers) in place.

    Returns:
        The pairs that were rescaled.
    """
    from onnx import numpy_helper

    graph = model.graph
    chains = list(_chains(graph))
    if not chains:
        return []
    inits = {init.name: init for init in graph.initializer}
    arrays = {name: numpy_helper.to_array(inits[name]).astype(np.float64)
              for a, _, b in chains for name in (a.input[1], a.input[2], b.input[1])}
    for _ in range(iterations):
        for a, _, b in chains:
            _balance(arrays, a, b)
    for name, value in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    log.debug("equalised %d Conv-ReLU-Conv pairs", len(chains))
    return [Pair(a.name or a.output[0], b.name or b.output[0], relu.output[0]) for a, relu, b in chains]


def _balance(arrays: dict[str, np.ndarray], a: Any, b: Any) -> None:
    w1, b1, w2 = arrays[a.input[1]], arrays[a.input[2]], arrays[b.input[1]]
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)  # A's output channels
    r2 = np.abs(w2).transpose(1, 0, *range(2, w2.ndim)).reshape(w2.shape[1], -1).max(axis=1)  # B's inputs
    s = np.where((r1 > _TINY) & (r2 > _TINY), np.sqrt(np.maximum(r1, _TINY) / np.maximum(r2, _TINY)), 1.0)
    arrays[a.input[1]] = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
    arrays[a.input[2]] = b1 / s
    arrays[b.input[1]] = w2 * s.reshape(1, -1, *([1] * (w2.ndim - 2)))


def _chains(graph: Any) -> list[tuple[Any, Any, Any]]:
    """(Conv A, ReLU, Conv B) with A's output read only by the ReLU, the ReLU's only by B, plain groups, and
    weights and bias in initializers (shared weights are left alone: rescaling them would change other uses)."""
    inits = {init.name for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
                uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    chains = []
    for a in graph.node:
        if not _plain_conv(a, inits, uses):
            continue
        relu = _only_consumer(a.output[0], consumers, outputs)
        if relu is None or relu.op_type != "Relu":
            continue
        b = _only_consumer(relu.output[0], consumers, outputs)
        if b is None or not _plain_conv(b, inits, uses) or b.input[0] != relu.output[0]:
            continue
        chains.append((a, relu, b))
    return chains


def _only_consumer(tensor: str, consumers: dict[str, list[Any]], outputs: set[str]) -> Any:
    readers = consumers.get(tensor, [])
    return readers[0] if len(readers) == 1 and tensor not in outputs else None


def _plain_conv(node: Any, inits: set[str], uses: dict[str, int]) -> bool:
    group = next((att.i for att in node.attribute if att.name == "group"), 1)
    return (node.op_type == "Conv" and group == 1 and len(node.input) >= 3
            and all(node.input[k] in inits and uses.get(node.input[k]) == 1 for k in (1, 2)))


def imbalance(model: Any, *, factor: float, pair: int = 0, channel: int = 0) -> Pair:
    """The situation :func:`equalize` undoes, made on purpose (for tests and benchmarks), in place.

    Multiplies output channel ``channel`` of the first Conv of chain ``pair`` (weights and bias) by ``factor``
    and divides the same input channel of the second Conv by it: the FP32 model computes the same function, but
    the activation between them now has one channel ``factor`` times larger than it was, which ruins its
    per-tensor INT8 scale. ``model`` must be BatchNorm-folded.
    """
    from onnx import numpy_helper

    from edgeres.errors import InputError

    if factor <= 0:
        raise InputError(f"factor must be positive, got {factor}")
    chains = _chains(model.graph)
    if not 0 <= pair < len(chains):
        raise InputError(f"the model has {len(chains)} Conv-ReLU-Conv chain(s); pair {pair} does not exist")
    a, relu, b = chains[pair]
    inits = {init.name: init for init in model.graph.initializer}
    for name, axis, scale in ((a.input[1], 0, factor), (a.input[2], 0, factor), (b.input[1], 1, 1.0 / factor)):
        value = numpy_helper.to_array(inits[name]).astype(np.float64)
        index = [slice(None)] * value.ndim
        index[axis] = channel
        value[tuple(index)] *= scale
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return Pair(a.name or a.output[0], b.name or b.output[0], relu.output[0])
