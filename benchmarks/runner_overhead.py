"""edgeres ``Runner.infer`` versus a bare ``onnxruntime.InferenceSession.run``: the runner's overhead.

Same artifact file (ResNet-18 at 224, FP32, random weights with real BatchNorm statistics), same session options
(threads, sequential execution, graph optimisation level), same batch. Calls alternate bare / runner one by one,
so machine noise hits both alike; medians and their ratio are reported (goal: runner <= 1.03 x bare). A third
column runs the exported ONNX in a session with ORT's default options, to show the artifact is not slower than
what a user would get by hand.

    .venv/bin/python benchmarks/runner_overhead.py [--work /tmp/edgeres-bench-infer] [--calls 40] [--arch resnet18]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infer_pipeline import make_model_onnx  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeres-bench-infer"))
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--calls", type=int, default=40, help="timed calls per side and batch size")
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()

    import onnxruntime as ort

    from edgeres import backends
    from edgeres.backends import BatchProfile
    from edgeres.backends.onnxruntime import session_options

    onnx_path = make_model_onnx(args.arch, args.work)
    artifact = args.work / f"{args.arch}.fp32.onnx"
    if not artifact.exists():
        backends.build(onnx_path, backend="onnxruntime", precision="fp32", out=artifact, profile=BatchProfile(1, 8, 32))
    print(f"{args.arch} FP32, ONNX Runtime {ort.__version__}, {args.calls} alternating calls per side")
    print(f"{'batch':>5} {'bare run ms':>12} {'Runner.infer ms':>16} {'ratio':>7} {'default-ORT raw ONNX ms':>24} "
          f"{'runner own us':>14}")
    with backends.open(artifact) as runner:
        bare = ort.InferenceSession(str(artifact), session_options(threads=runner.threads),
                                    providers=["CPUExecutionProvider"])
        raw = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        name = bare.get_inputs()[0].name
        outputs = [bare.get_outputs()[0].name]
        for n in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(0).standard_normal((n, *runner.card.preprocess.input_shape)).astype(np.float32)
            for _ in range(3):  # warm-up
                bare.run(outputs, {name: x})
                runner.infer(x)
                raw.run(None, {name: x})
            t_bare, t_runner, t_raw, own = [], [], [], []
            for i in range(args.calls):
                order = (0, 1, 2) if i % 2 == 0 else (1, 0, 2)
                for which in order:
                    t0 = time.perf_counter()
                    if which == 0:
                        bare.run(outputs, {name: x})
                    elif which == 1:
                        runner.infer(x)
                    else:
                        raw.run(None, {name: x})
                    ms = (time.perf_counter() - t0) * 1e3
                    (t_bare, t_runner, t_raw)[which].append(ms)
                    if which == 1:  # the runner's own cost: its wall time minus the session.run it wraps
                        own.append((ms - runner.last_stage_times.compute_ms) * 1e3)
            mb, mr, mw = (statistics.median(t) for t in (t_bare, t_runner, t_raw))
            print(f"{n:>5} {mb:>12.2f} {mr:>16.2f} {mr / mb:>7.3f} {mw:>24.2f} {statistics.median(own):>14.1f}")
    print("goal: Runner.infer / bare run <= 1.03 ('runner own us' is the load-independent part of the gap)")


if __name__ == "__main__":
    main()
