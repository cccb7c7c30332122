"""Our calibration + Q/DQ writer versus ONNX Runtime's ``quantize_static``: time, peak memory, INT8 accuracy.

Same FP32 ONNX, same calibration images (same preprocessing, batches of 32), each run in a fresh subprocess so
its peak resident memory is its own (``VmHWM`` of /proc/self/status, not ``ru_maxrss``: Linux carries the parent's
high-water mark into ``ru_maxrss`` across the fork and exec, so every worker read at least the parent's size). ORT runs QDQ format, per-channel weights, with its MinMax
and Entropy calibrators; its Entropy default has 128 bins, which with 128 quantized levels leaves a single
candidate threshold (= MinMax), so the 2048-bin setting — TensorRT's, and ours — is run as well.

Two reference rows bound what any calibrator built on ONNX Runtime could reach here: ``imports only`` (numpy,
onnx, onnxruntime, Pillow and our decoder loaded, nothing run: the memory floor both sides share) and ``FP32
inference only`` (the same images decoded and run through the plain FP32 model by ONNX Runtime at full
optimisation, nothing observed: the time floor, since calibration must run the model on every image). The
summary prints each ratio and the most any such calibrator could have reached against the same peer.

Accuracy: top-1 on the digits validation split, every INT8 model run by ONNX Runtime with graph optimisations
off (Q/DQ executed as written, no integer-kernel saturation), plus agreement with FP32.

    .venv/bin/python benchmarks/calibration_vs_ort.py [--work /tmp/edgeres-bench-digits] [--images 512]

Run benchmarks/calibration_accuracy.py first (it trains and exports the digits ResNet-20 into --work), or pass
--model/--data for another model, or --synthetic resnet18 (random weights, random JPEGs); accuracy is then only
agreement with FP32 on (up to 256 of) the calibration images.
"""
from __future__ import annotations

import argparse
import logging
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {  # name -> (worker, method, extra options for ORT)
    "imports only": ("imports", "-", {}),
    "FP32 inference only": ("inference", "-", {}),
    "ours minmax": ("ours", "minmax", {}),
    "ours entropy": ("ours", "entropy", {}),
    "ORT MinMax": ("ort", "MinMax", {}),
    "ORT Entropy (128 bins)": ("ort", "Entropy", {}),
    "ORT Entropy (2048 bins)": ("ort", "Entropy", {"CalibNumBins": 2048}),
}


def worker(kind: str, method: str, extra: dict, model: str, paths_file: str, out: str, batch: int) -> None:
    """Runs in a fresh process: calibrate + write the Q/DQ model, print seconds and peak RSS as JSON."""
    import resource

    start = time.perf_counter()
    paths = [Path(p) for p in json.loads(Path(paths_file).read_text())]
    if kind == "imports":
        import numpy  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import PIL.Image  # noqa: F401

        import edgeres.data  # noqa: F401
    elif kind == "inference":
        import onnxruntime as ort

        from edgeres.card import read_onnx_card
        from edgeres.data import iter_batches

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for x in iter_batches(paths, read_onnx_card(model).preprocess, batch_size=batch):
            session.run(None, {name: x})
    elif kind == "ours":
        from edgeres.calibrating import calibrate
        from edgeres.quantization import quantize_qdq

        # the same images, through the public API: a folder whose calibration.txt lists them
        listing = Path(out).with_suffix(".images")
        listing.mkdir(exist_ok=True)
        (listing / "calibration.txt").write_text("\n".join(str(p) for p in paths) + "\n")
        ranges = calibrate(model, data=listing, method=method, images=len(paths), batch_size=batch, quiet=True)
        quantize_qdq(model, ranges, out=out, activations="s8")
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
        )

        from edgeres.card import read_onnx_card
        from edgeres.data import load_batch

        pre = read_onnx_card(model).preprocess

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.start = 0

            def get_next(self):
                if self.start >= len(paths):
                    return None
                chunk = paths[self.start:self.start + batch]
                self.start += batch
                return {"input": load_batch(chunk, pre)}

        quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "peak_mb": _peak_mb(usage.ru_maxrss / 1024)}))


def _peak_mb(fallback: float) -> float:
    """This process's own peak resident memory in MB (``VmHWM``), or ``fallback`` where /proc has none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return fallback


def synthetic(work: Path, arch: str, count: int) -> tuple[Path, Path]:
    """A random-weight ``arch`` at 224x224 with an ImageNet card, and ``count`` random 256x256 JPEGs."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from infer_pipeline import make_model_onnx

    model, data = make_model_onnx(arch, work), work / f"{arch}_images"
    rng = np.random.default_rng(0)
    data.mkdir(exist_ok=True)
    for i in range(len(list(data.glob("*.jpg"))), count):
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((256, 256), Image.BILINEAR)
        img.save(data / f"{i:04d}.jpg", quality=90)
    return model, data


def evaluate(path: Path, x):
    """Top-1 predictions with Q/DQ executed as written (no integer kernels, no saturation).

    Imported here, in the parent process only, so the measured workers do not load the accuracy script.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from calibration_accuracy import predict

    return predict(path, x, fused=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeres-bench-digits"))
    parser.add_argument("--model", type=Path, help="FP32 ONNX [WORK/resnet20.onnx]")
    parser.add_argument("--data", type=Path, help="calibration images [the digits set's training split]")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--synthetic", metavar="ARCH", help="random-weight ARCH at 224 on random JPEGs (e.g. resnet18)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--only", help="comma-separated runs to do, e.g. 'imports only,FP32 inference only,ours "
                                       "minmax,ORT MinMax' (ORT's Entropy takes minutes on ResNet-50) [all]")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # keep the table readable (e.g. 'only 200 images' warnings)
    if args.worker:
        kind, method, model = args.worker
        worker(kind, method, json.loads(args.extra), model, args.paths, args.out, args.batch)
        return

    import numpy as np

    from edgeres.calibrating import select_images
    from edgeres.card import read_onnx_card
    from edgeres.data import load_batch, open_dataset

    args.work.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        args.model, args.data = synthetic(args.work, args.synthetic, args.images)
    model = args.model or args.work / "resnet20.onnx"
    data = args.data or args.work / "digits" / "train"
    card = read_onnx_card(str(model))
    paths = select_images(model, card, data=data, images=args.images, batch_size=args.batch, seed=0)
    paths_file = args.work / "calibration_paths.json"
    paths_file.write_text(json.dumps([str(p) for p in paths]))
    if args.data is None:
        val = open_dataset(args.work / "digits").val
        x, y = load_batch(val.paths, card.preprocess), np.array(val.labels)
    else:
        x, y = load_batch(paths[:256], card.preprocess), None
    fp32 = evaluate(model, x)
    print(f"{model.name}: {len(paths)} calibration images, batch {args.batch}; accuracy on "
          f"{'digits val' if y is not None else 'calibration images'} ({len(x)} images)")
    print(f"{'run':<25} {'wall s':>7} {'work s':>7} {'CPU s':>7} {'peak MB':>8} {'top-1':>7} {'agree':>7}   "
          f"(medians of {args.rounds} interleaved rounds; peak = max; CPU s = user+system of the whole process)")
    if y is not None:
        print(f"{'FP32':<25} {'':>7} {'':>7} {'':>7} {'':>8} {100 * (fp32 == y).mean():6.2f}%")
    chosen = [name.strip() for name in args.only.split(",")] if args.only else list(RUNS)
    unknown = [name for name in chosen if name not in RUNS]
    if unknown:
        parser.error(f"--only: unknown run {unknown[0]!r}; choose from {', '.join(RUNS)}")
    runs = {name: RUNS[name] for name in chosen}
    samples: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in runs}
    outs = {name: args.work / f"peer_{name.replace(' ', '_').replace('(', '').replace(')', '')}.onnx"
            for name in RUNS}
    for _ in range(args.rounds):  # interleaved, so load from other processes hits every run alike
        for name, (kind, method, extra) in runs.items():
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--worker", kind, method, str(model), "--extra",
                                   json.dumps(extra), "--paths", str(paths_file), "--out", str(outs[name]),
                                   "--batch", str(args.batch)], capture_output=True, text=True, cwd=ROOT)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                print(f"{name:<25} failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            stats = json.loads(proc.stdout.strip().splitlines()[-1])
            samples[name].append((wall, stats["seconds"], stats["cpu_s"], stats["peak_mb"]))
    results = {}
    for name, runs in samples.items():
        if not runs:
            continue
        wall, work, cpu = (statistics.median(r[i] for r in runs) for i in range(3))
        peak = max(r[3] for r in runs)
        results[name] = (wall, cpu, peak)
        if RUNS[name][0] in ("imports", "inference"):
            print(f"{name:<25} {wall:7.1f} {work:7.1f} {cpu:7.1f} {peak:8.0f}")
            continue
        pred = evaluate(outs[name], x)
        top1 = f"{100 * (pred == y).mean():6.2f}%" if y is not None else "     -"
        print(f"{name:<25} {wall:7.1f} {work:7.1f} {cpu:7.1f} {peak:8.0f} {top1} "
              f"{100 * (pred == fp32).mean():6.2f}%")
    floor_time = results.get("FP32 inference only", (None,))[0]
    floor_memory = results.get("imports only", (None, None, None))[2]
    for ours, peer in (("ours minmax", "ORT MinMax"), ("ours entropy", "ORT Entropy (2048 bins)"),
                       ("ours entropy", "ORT Entropy (128 bins)")):
        if ours in results and peer in results:
            (wo, co, mo), (wp, cp, mp) = results[ours], results[peer]
            line = (f"{ours} vs {peer}: {wp / wo:.1f}x faster (wall), {cp / co:.1f}x less CPU time, "
                    f"{mo / mp:.2f}x the peak memory")
            if floor_time and floor_memory and mp > floor_memory:
                line += (f" ({max(0.0, mo - floor_memory) / (mp - floor_memory):.2f}x above the imports' "
                         f"{floor_memory:.0f} MB); the FP32 inference floor allows at most {wp / floor_time:.1f}x "
                         f"faster and {floor_memory / mp:.2f}x the memory")
            print(line)

if __name__ == "__main__":
    main()
