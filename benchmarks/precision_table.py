"""INT8 vs FP32 vs FP16 throughput of edgeres's ONNX Runtime artifacts: ResNet-18 and ResNet-50, batch 1 and 8.

Each artifact is built through ``edgeres.building.build_artifact`` (INT8: minmax ranges from 32 of the benchmark
JPEGs, the u8 fast CPU form), then timed on the same random batch with precisions interleaved call by call, so
machine noise hits all alike. Few iterations (a 2-core machine): read the ratios, not the absolute times.

    .venv/bin/python benchmarks/precision_table.py [--work /tmp/edgeres-bench-infer] [--archs resnet18,resnet50]
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

from infer_pipeline import make_jpegs, make_model_onnx  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeres-bench-infer"))
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--calls", default="1:6,8:3", help="batch:timed calls per precision")
    args = parser.parse_args()

    import onnxruntime as ort

    from edgeres import backends
    from edgeres.backends import BatchProfile
    from edgeres.building import Int8Options, build_artifact

    calib = make_jpegs(args.work / "jpegs", 512)
    plan = [tuple(int(v) for v in item.split(":")) for item in args.calls.split(",")]
    print(f"ONNX Runtime {ort.__version__}, CPU; medians of interleaved calls; ratios vs FP32 of the same run")
    header = f"{'model':9} {'prec':5} {'batch':>5} {'ms/batch':>9} {'images/s':>9} {'vs fp32':>8} {'MB':>6} {'agree':>6}"
    print(header)
    print("-" * len(header))
    for arch in args.archs.split(","):
        onnx_path = make_model_onnx(arch, args.work)
        built = {}
        for precision in PRECISIONS:
            result = build_artifact(onnx_path, precision=precision, backend="onnxruntime", calib_dir=calib,
                                    int8=Int8Options(calib_method="minmax", calib_images=32),
                                    profile=BatchProfile(1, 8, 8),
                                    out_dir=args.work / "artifacts", force=True, verify_images=8, quiet=True)
            built[precision] = result
        runners = {p: backends.open(r.artifact) for p, r in built.items()}
        shape = runners["fp32"].card.preprocess.input_shape
        for batch, calls in plan:
            x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
            times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
            for p in PRECISIONS:
                runners[p].infer(x)  # warm-up
            for i in range(calls):
                for p in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:
                    t0 = time.perf_counter()
                    runners[p].infer(x)
                    times[p].append((time.perf_counter() - t0) * 1e3)
            base = statistics.median(times["fp32"])
            for p in PRECISIONS:
                ms = statistics.median(times[p])
                v = built[p].verification
                size = built[p].artifact.stat().st_size / 1e6
                print(f"{arch:9} {p:5} {batch:>5} {ms:>9.1f} {batch * 1e3 / ms:>9.1f} {base / ms:>7.2f}x "
                      f"{size:>6.1f} {v.top1_agreement * 100:>5.0f}%")
        for r in runners.values():
            r.close()
        for p, r in built.items():
            for note in r.notes:
                print(f"  note ({arch} {p}): {note}")


if __name__ == "__main__":
    main()
