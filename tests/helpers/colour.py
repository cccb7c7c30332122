"""A real ONNX classifier of dominant colour and images for it.

The model is GlobalAveragePool -> Gemm, which ONNX Runtime runs in microseconds: it classifies red/green/blue
images by their dominant channel, so accuracy is exact, and a permuted weight matrix is a "worse model".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgeres.card import ModelCard, Preprocess, attach_card_to_onnx

CLASSES = ["blue", "green", "red"]  # scan order (sorted); channel of each class in RGB: 2, 1, 0
GOOD_W = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32)  # W[channel, class]
WORSE_W = np.eye(3, dtype=np.float32)  # red and blue swapped: only green stays right


def colour_model(path: Path, *, weights: np.ndarray = GOOD_W, size: int = 16, batch: int | str = "N",
                 dataset: dict | None = None) -> Path:
    """A real ONNX classifier of dominant colour, with the edgeres card attached."""
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "colour", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.zeros(3, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(arch="colour", class_names=list(CLASSES), preprocess=Preprocess.small(size=size),
                     dataset=dataset or {})
    attach_card_to_onnx(model, card)
    onnx.save(model, str(path))
    return path


def colour_images(root: Path, *, per_class: int = 4, size: int = 20, seed: int = 0) -> Path:
    """``root/{red,green,blue}/*.png`` whose named channel dominates."""
    rng = np.random.default_rng(seed)
    for name, channel in (("red", 0), ("green", 1), ("blue", 2)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
            pixels[..., channel] = rng.integers(150, 256, (size, size))
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
