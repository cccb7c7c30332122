"""INT8 calibration, numpy only: data readers, range collectors, ranges files and TensorRT calibration caches.

This package imports nothing but numpy and the standard library (no torch, onnx, onnxruntime, tensorrt, and
nothing from ``edgeres``): ``edgeres`` runs the model and feeds the tensors to a :class:`Collector`.

Typical use::

    collector = make_collector("entropy")
    for batch in reader:                      # {input name: ndarray}
        for name, values in run_model(batch).items():
            collector.observe(name, values)
    ranges = Ranges(amax=collector.compute(), method="entropy", ...)
    ranges.save("ranges.json")
    trt_cache.write("model.cache", ranges, trt_version="8.6")
"""
from __future__ import annotations

from calibration import trt_cache
from calibration.collectors import (
    Collector,
    EntropyCollector,
    Histogram,
    HistogramCollector,
    Method,
    MinMaxCollector,
    MseCollector,
    PercentileCollector,
    make_collector,
    parse_method,
)
from calibration.errors import CalibrationError
from calibration.ranges import Ranges, content_hash, manifest_hash
from calibration.readers import ImageFolderReader, sample_paths

__all__ = [
    "CalibrationError",
    "Collector",
    "EntropyCollector",
    "Histogram",
    "HistogramCollector",
    "ImageFolderReader",
    "Method",
    "MinMaxCollector",
    "MseCollector",
    "PercentileCollector",
    "Ranges",
    "make_collector",
    "content_hash",
    "manifest_hash",
    "parse_method",
    "sample_paths",
    "trt_cache",
]
