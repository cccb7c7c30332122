"""edgeres: ResNets from training to a fast, verified TensorRT engine, with ONNX Runtime on the CPU as the
embedded default."""
from __future__ import annotations

__version__ = "0.1.0"
