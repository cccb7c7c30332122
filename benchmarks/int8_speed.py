"""INT8 vs FP32 throughput on ONNX Runtime's CPU backend: ResNet-18 at 224x224, batch 1.

Random weights (BatchNorm statistics set by a few train-mode passes) are fine for speed. Ranges come from our own
pipeline (observe + minmax on random images). Measured side by side in interleaved rounds; report medians and
ratios to FP32, never absolute times across runs:

    .venv/bin/python benchmarks/int8_speed.py [--arch resnet18] [--rounds 5] [--iters 30] [--threads 2]

Rows: FP32; ours s8 (the TensorRT form); ours u8 (the fast CPU form); and, for reference, ONNX Runtime's own
``quantize_static`` (QDQ, per-channel, uint8 activations).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration import Ranges, make_collector  # noqa: E402
from edgeres.io import sha256_file  # noqa: E402
from edgeres.observe import observe  # noqa: E402
from edgeres.quantization import quantize_qdq  # noqa: E402
from infer_pipeline import make_model_onnx  # noqa: E402


def ours(fp32: Path, calib: np.ndarray, out_dir: Path) -> dict[str, Path]:
    collector = make_collector("minmax")
    observe(fp32, ({"input": calib[i:i + 8]} for i in range(0, len(calib), 8)),
            collector, quiet=True)
    ranges = Ranges(amax=collector.compute(), method="minmax", num_images=len(calib),
                    model_sha256=sha256_file(fp32), manifest_sha256="random", preprocess={})
    return {f"ours {act}": quantize_qdq(fp32, ranges, out=out_dir / f"{act}.onnx", activations=act)
            for act in ("s8", "u8")}


def ort_reference(fp32: Path, calib: np.ndarray, out_dir: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter({"input": calib[i:i + 1]} for i in range(len(calib)))

        def get_next(self):
            return next(self.it, None)

    pre = out_dir / "pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    out = out_dir / "ort_u8.onnx"
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-ort-reference", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # keep the table readable (e.g. 'only 200 images' warnings)

    rng = np.random.default_rng(0)
    calib = rng.normal(0, 1, (16, 3, args.size, args.size)).astype(np.float32)
    x = rng.normal(0, 1, (args.batch, 3, args.size, args.size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        fp32 = make_model_onnx(args.arch, tmp_path, size=args.size)
        models = {"FP32": fp32, **ours(fp32, calib, tmp_path)}
        if not args.no_ort_reference:
            models["ORT quantize_static u8"] = ort_reference(fp32, calib, tmp_path)
        sessions = {name: session(path, args.threads) for name, path in models.items()}
        reference = sessions["FP32"].run(None, {"input": x})[0]
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for name, sess in sessions.items():  # warm-up
            for _ in range(3):
                sess.run(None, {"input": x})
        for _ in range(args.rounds):  # interleaved rounds: each round times every model once
            for name, sess in sessions.items():
                start = time.perf_counter()
                for _ in range(args.iters):
                    sess.run(None, {"input": x})
                times[name].append((time.perf_counter() - start) / args.iters)
        base = statistics.median(times["FP32"])
        print(f"{args.arch} {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, onnxruntime "
              f"{ort.__version__}; median of {args.rounds} interleaved rounds x {args.iters} runs")
        print(f"{'model':<24} {'ms/batch':>9} {'img/s':>8} {'vs FP32':>8} {'size MB':>8} {'max|dlogit|':>12}")
        for name, sess in sessions.items():
            med = statistics.median(times[name])
            diff = float(np.abs(sess.run(None, {"input": x})[0] - reference).max())
            size = models[name].stat().st_size / 1e6
            print(f"{name:<24} {med * 1e3:9.2f} {args.batch / med:8.1f} {base / med:7.2f}x {size:8.1f} {diff:12.4f}")


if __name__ == "__main__":
    main()
