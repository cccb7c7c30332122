"""INT8 on a model that per-tensor INT8 breaks: plain INT8 vs an accuracy budget vs range equalisation.

Trains ResNet-20 on the built-in digits set (once; shared with calibration_accuracy.py under --work), then makes
a *damaged* twin: one Conv-ReLU-Conv chain's channel scaled up by --factor in the first Conv and down in the
second (:func:`edgeres.quantization.equalize.imbalance`): FP32 computes the same function, but one activation channel
now dwarfs the others and ruins that tensor's per-tensor INT8 scale. For the ordinary and the damaged model it
prints, side by side:

* FP32; INT8 (every layer); INT8 + budget (``--max-drop``, the most sensitive layers left in float); INT8 +
  equalisation (``--equalize``, every layer INT8);
* top-1 on the validation split, measured on the ``s8`` Q/DQ model run as written (the TensorRT-predicting number);
* layers in INT8; CPU latency of the ONNX Runtime artifact form (``u8``, fused kernels) at batch 1, median of
  interleaved rounds (ratios to FP32 matter; this machine is shared and noisy).

    .venv/bin/python benchmarks/mixed_precision.py [--work /tmp/edgeres-bench-digits] [--factor 10000]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_accuracy import prepare  # noqa: E402

from edgeres.calibrating import calibrate  # noqa: E402
from edgeres.quantization import fold_batchnorm, quantize_model, quantize_qdq  # noqa: E402
from edgeres.quantization.equalize import imbalance  # noqa: E402
from edgeres.sensitivity import fit_budget, labelled_images, measure_sensitivity, quantizable_layers  # noqa: E402


def session(model: onnx.ModelProto | Path, *, fused: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def top1(model: onnx.ModelProto | Path, x: np.ndarray, y: np.ndarray) -> float:
    s = session(model, fused=False)
    name = s.get_inputs()[0].name
    logits = np.concatenate([s.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])
    return 100.0 * float((logits.argmax(1) == y).mean())


def latencies(paths: dict[str, Path], x: np.ndarray, rounds: int, calls: int) -> dict[str, float]:
    """Median ms per batch-1 call, the variants interleaved round by round."""
    sessions = {k: session(p, fused=True) for k, p in paths.items()}
    samples: dict[str, list[float]] = {k: [] for k in paths}
    one = x[:1]
    for s in sessions.values():
        s.run(None, {s.get_inputs()[0].name: one})  # warm-up
    for _ in range(rounds):
        for key, s in sessions.items():
            name = s.get_inputs()[0].name
            for _ in range(calls):
                t0 = time.perf_counter()
                s.run(None, {name: one})
                samples[key].append((time.perf_counter() - t0) * 1000.0)
    return {k: float(np.median(v)) for k, v in samples.items()}


def evaluate(label: str, model_path: Path, work: Path, *, max_drop: float, images: int, rounds: int) -> None:
    x, y, where = labelled_images(model_path)
    plain = calibrate(model_path, method="entropy", images=images, quiet=True)
    equal = calibrate(model_path, method="entropy", images=images, quiet=True, equalize=True)
    source = onnx.load(str(model_path))
    layers = len(quantizable_layers(source))
    report = measure_sensitivity(model_path, plain, x, y, quiet=True)
    plan = fit_budget(model_path, plain, x, y, max_drop_pp=max_drop, order=report.ranking(), quiet=True)
    rows = {
        "FP32": (top1(model_path, x, y), 0),
        "INT8": (top1(quantize_model(source, plain.amax), x, y), layers),
        f"INT8 + budget {max_drop} pp": (top1(quantize_model(source, plain.amax, keep_fp32=plan.kept), x, y),
                                         layers - len(plan.kept)),
        "INT8 + equalisation": (top1(quantize_model(source, equal.amax, equalize=True), x, y), layers),
    }
    stem = work / model_path.stem
    u8 = {"FP32": model_path,
          "INT8": quantize_qdq(model_path, plain, out=f"{stem}.u8.onnx", activations="u8"),
          f"INT8 + budget {max_drop} pp": quantize_qdq(model_path, plain, out=f"{stem}.budget.u8.onnx",
                                                         activations="u8", keep_fp32=plan.kept),
          "INT8 + equalisation": quantize_qdq(model_path, equal, out=f"{stem}.eq.u8.onnx", activations="u8")}
    ms = latencies(u8, x, rounds=rounds, calls=50)
    print(f"\n{label}: {where}; most sensitive layer {report.layers[0].node} "
          f"(only it INT8: {report.layers[0].only_top1_drop_pp:+.2f} pp); budget kept {plan.kept or 'none'} in float")
    print(f"{'variant':<24} {'top-1':>8} {'Δ pp':>7} {'INT8 layers':>12} {'ms b1':>7} {'vs FP32':>8}")
    fp32_top1 = rows["FP32"][0]
    for key, (acc, int8_layers) in rows.items():
        print(f"{key:<24} {acc:7.2f}% {acc - fp32_top1:+7.2f} {int8_layers:>5} of {layers:<4} {ms[key]:7.3f} "
              f"{ms['FP32'] / ms[key]:7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeres-bench-digits"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--factor", type=float, default=10000.0)
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    args.work.mkdir(parents=True, exist_ok=True)
    _, model = prepare(args.work, args.epochs)
    damaged_path = args.work / "resnet20.damaged.onnx"
    damaged = fold_batchnorm(onnx.load(str(model)))
    pair = imbalance(damaged, factor=args.factor, pair=0)
    onnx.save(damaged, str(damaged_path))
    print(f"ONNX Runtime {ort.__version__}; damaged: {pair.first} -> {pair.second} channel 0 x{args.factor:g} / "
          f"{args.factor:g} (FP32 unchanged)")
    evaluate("ordinary ResNet-20", model, args.work, max_drop=args.max_drop, images=args.images, rounds=args.rounds)
    evaluate("damaged ResNet-20", damaged_path, args.work, max_drop=args.max_drop, images=args.images,
             rounds=args.rounds)


if __name__ == "__main__":
    main()
