"""INT8 accuracy per calibration method on the digits set with ResNet-20, side by side with FP32.

Trains ResNet-20 on the built-in digits set (once; reused from --work), exports it, then for each method
(minmax, percentile, entropy, mse) calibrates on the dataset's calibration list, writes both Q/DQ forms and
evaluates them on the validation split:

* ``s8`` — the TensorRT form, run by ONNX Runtime with graph optimisations off, i.e. Q/DQ executed as written
  in float (no integer kernels, so no u8×s8 16-bit saturation): the number that predicts a TensorRT engine;
* ``u8`` — the fast CPU form, run with all optimisations (QLinearConv/QLinearAdd kernels): its own number;
* ``s8 fp16`` — the ``s8`` model with its unquantized part in FP16 (what TensorRT 10.x/11.x build by default,
  ``--high-precision fp16``), run like ``s8``.

    .venv/bin/python benchmarks/calibration_accuracy.py [--work /tmp/edgeres-bench-digits] [--epochs 15]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeres.calibrating import calibrate  # noqa: E402
from edgeres.card import read_onnx_card  # noqa: E402
from edgeres.data import load_batch, open_dataset  # noqa: E402
from edgeres.digits import write_digits  # noqa: E402
from edgeres.quantization import quantize_qdq, to_fp16  # noqa: E402

METHODS = ("minmax", "percentile", "entropy", "mse")


def prepare(work: Path, epochs: int) -> tuple[Path, Path]:
    """The digits folder and a trained, exported ResNet-20 (built once under ``work``)."""
    from edgeres.exporting import export_onnx
    from edgeres.training import TrainConfig, train

    data, ckpt, onnx_path = work / "digits", work / "resnet20.pt", work / "resnet20.onnx"
    if not (data / "train").is_dir():
        write_digits(data, seed=0, force=True)
    if not ckpt.exists():
        result = train(data, out=ckpt, config=TrainConfig(arch="resnet20", epochs=epochs, threads=2), quiet=True)
        print(f"trained ResNet-20 for {result.epochs_run} epochs in {result.seconds:.0f} s, "
              f"val top-1 {100 * result.final_val_top1:.2f}%")
    if not onnx_path.exists():
        export_onnx(ckpt, out=onnx_path, quiet=True)
    return data, onnx_path


def predict(path: Path, x: np.ndarray, *, fused: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)]).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeres-bench-digits"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # keep the table readable (e.g. 'only 200 images' warnings)
    args.work.mkdir(parents=True, exist_ok=True)
    data, model = prepare(args.work, args.epochs)

    card = read_onnx_card(str(model))
    val = open_dataset(data).val
    x, y = load_batch(val.paths, card.preprocess), np.array(val.labels)
    fp32 = predict(model, x, fused=True)
    top1 = lambda pred: 100.0 * float((pred == y).mean())  # noqa: E731
    agree = lambda pred: 100.0 * float((pred == fp32).mean())  # noqa: E731
    print(f"digits val: {len(y)} images; calibration: the dataset's calibration list, ONNX Runtime {ort.__version__}")
    print(f"{'model':<12} {'calib s':>8} {'s8 top-1':>9} {'Δ pp':>6} {'agree':>7} {'u8 top-1':>9} {'Δ pp':>6} "
          f"{'agree':>7} {'s8 fp16':>8} {'Δ pp':>6} {'agree':>7}")
    print(f"{'FP32':<12} {'':>8} {top1(fp32):8.2f}% {'':>6} {'':>7} {top1(fp32):8.2f}%")
    for method in METHODS:
        start = time.perf_counter()
        ranges = calibrate(model, method=method, images=args.images, quiet=True)
        seconds = time.perf_counter() - start
        ranges_path = ranges.save(args.work / f"{method}.ranges.json")
        s8 = quantize_qdq(model, ranges_path, out=args.work / f"{method}.s8.onnx", activations="s8")
        u8 = quantize_qdq(model, ranges_path, out=args.work / f"{method}.u8.onnx", activations="u8")
        s8h = to_fp16(s8, args.work / f"{method}.s8.fp16.onnx")
        p8, pu, ph = predict(s8, x, fused=False), predict(u8, x, fused=True), predict(s8h, x, fused=False)
        print(f"{method:<12} {seconds:8.1f} {top1(p8):8.2f}% {top1(p8) - top1(fp32):+6.2f} {agree(p8):6.2f}% "
              f"{top1(pu):8.2f}% {top1(pu) - top1(fp32):+6.2f} {agree(pu):6.2f}% "
              f"{top1(ph):7.2f}% {top1(ph) - top1(fp32):+6.2f} {agree(ph):6.2f}%")


if __name__ == "__main__":
    main()
