"""FP32 ONNX → INT8 Q/DQ ONNX (and FP16 ONNX) for TensorRT and ONNX Runtime.

::

    from edgeres.quantization import quantize_qdq, to_fp16
    quantize_qdq("model.onnx", "ranges.json", out="model.int8.onnx")             # TensorRT form (s8)
    quantize_qdq("model.onnx", ranges, out="model.u8.onnx", activations="u8")     # fast ORT CPU form
    to_fp16("model.onnx", "model.fp16.onnx")

Modules: :mod:`~edgeres.quantization.fold` (BatchNorm folding), :mod:`~edgeres.quantization.graph` (where Q/DQ goes,
which tensors calibration observes), :mod:`~edgeres.quantization.qdq` (the writer), :mod:`~edgeres.quantization.fp16`.
"""
from __future__ import annotations

from edgeres.quantization.fold import fold_batchnorm
from edgeres.quantization.fp16 import convert_fp16, to_fp16
from edgeres.quantization.graph import Activations, placement, tensors_to_observe
from edgeres.quantization.qdq import QUANT_METADATA_KEY, quantize_model, quantize_qdq

__all__ = [
    "Activations", "QUANT_METADATA_KEY", "convert_fp16", "fold_batchnorm", "placement", "quantize_model",
    "quantize_qdq", "tensors_to_observe", "to_fp16",
]
