"""What a backend's outputs are compared with: ONNX Runtime on the CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def cpu_logits(onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    """The first output of ``onnx_path`` run by ONNX Runtime's CPU provider on ``batch`` (fed to ``input``)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]
