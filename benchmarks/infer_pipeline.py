"""`edgeres infer` end to end versus decode alone (d) and model alone (m), side by side in one run.

512 JPEGs of 640x480 (synthetic but photo-like: smooth colour fields, shapes, noise), ResNet-18 at 224 (random
weights, BatchNorm statistics set by a few train-mode passes) as an ONNX Runtime FP32 artifact, batch 8:

* d = images/s of decode + preprocess alone, on the same worker pool ``infer`` uses;
* m = images/s of the runner alone on preprocessed batches;
* e = images/s of ``infer_folder`` (wall time, model load excluded).

On a CPU-only machine decode and model share the cores, so the best a pipeline can do is about
1/(1/d + 1/m); the goal is e >= 0.9 x that. Rounds are interleaved; medians are reported.

    .venv/bin/python benchmarks/infer_pipeline.py [--work /tmp/edgeres-bench-infer] [--images 512] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NUM_CLASSES = 1000
LABELLED_CLASSES = 8  # the JPEGs sit in class0..class7 folders, so the labelled-accuracy path runs too


def make_model_onnx(arch: str, work: Path, *, size: int = 224) -> Path:
    """A random-weight ImageNet ResNet with real BatchNorm statistics, exported with its card (cached)."""
    import onnx
    import torch

    from edgeres import models
    from edgeres.card import ModelCard, Preprocess, attach_card_to_onnx

    path = work / f"{arch}.onnx"
    if path.exists():
        return path
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = models.create(arch, num_classes=NUM_CLASSES)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, 3, size, size), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(path))
    card = ModelCard(arch=arch, class_names=[f"class{i}" for i in range(NUM_CLASSES)], preprocess=Preprocess())
    attach_card_to_onnx(proto, card)
    onnx.save(proto, str(path))
    return path


def make_jpegs(folder: Path, count: int, *, size: tuple[int, int] = (640, 480), seed: int = 0) -> Path:
    """``count`` photo-like JPEGs in class0..class7 sub-folders (cached)."""
    from PIL import Image, ImageDraw

    if folder.is_dir() and len(list(folder.rglob("*.jpg"))) == count:
        return folder
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(count):
        low = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
        img = Image.fromarray(low, "RGB").resize((w, h), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            x1, y1 = x0 + int(rng.integers(20, 240)), y0 + int(rng.integers(20, 200))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 6, size=(h, w, 3)).astype(np.int16)
        out = folder / f"class{i % LABELLED_CLASSES}" / f"img{i:04d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(out, quality=90)
    return folder


def decode_alone(paths: list[Path], pre: object, workers: int) -> float:
    from edgeres.data import load_image

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(lambda p: load_image(p, pre), paths):
            pass
    return len(paths) / (time.perf_counter() - start)


def model_alone(artifact: Path, batch: np.ndarray, calls: int, *, spinning: bool) -> float:
    from edgeres import backends

    with backends.open(artifact, spinning=spinning) as runner:
        runner.infer(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(calls):
            runner.infer(batch)
        return calls * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeres-bench-infer"))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model-calls", type=int, default=24, help="batches timed for m per round")
    args = parser.parse_args()

    import onnxruntime as ort

    from edgeres import backends
    from edgeres.backends import BatchProfile
    from edgeres.backends.onnxruntime import physical_cores
    from edgeres.data import list_images, load_image
    from edgeres.infer import infer_folder

    onnx_path = make_model_onnx("resnet18", args.work)
    folder = make_jpegs(args.work / "jpegs", args.images)
    artifact = args.work / "resnet18.fp32.onnx"
    if not artifact.exists():
        backends.build(onnx_path, backend="onnxruntime", precision="fp32", out=artifact,
                       profile=BatchProfile(1, args.batch, 32))
    paths = list_images(folder)
    with backends.open(artifact) as runner:
        pre, threads = runner.card.preprocess, runner.threads
    workers = max(1, min(4, os.cpu_count() or 1))  # infer_folder's default
    batch = np.stack([load_image(p, pre) for p in paths[:args.batch]])
    print(f"ResNet-18 224, ONNX Runtime {ort.__version__} FP32, batch {args.batch}, {len(paths)} JPEGs 640x480, "
          f"{workers} decode workers, {threads} inference threads ({physical_cores()} physical cores)")

    rows: dict[str, list[float]] = {"d": [], "m": [], "m_nospin": [], "e": []}
    for r in range(args.rounds):
        rows["d"].append(decode_alone(paths, pre, workers))
        rows["m"].append(model_alone(artifact, batch, args.model_calls, spinning=True))
        rows["m_nospin"].append(model_alone(artifact, batch, args.model_calls, spinning=False))
        result = infer_folder(artifact, folder, batch=args.batch, workers=workers, quiet=True)
        rows["e"].append(result.summary["images_per_s"])
        print(f"round {r + 1}: d {rows['d'][-1]:.1f}  m {rows['m'][-1]:.1f}  m(no spin) {rows['m_nospin'][-1]:.1f}  "
              f"e {rows['e'][-1]:.1f} images/s")
    med = {k: statistics.median(v) for k, v in rows.items()}
    bound = 1.0 / (1.0 / med["d"] + 1.0 / med["m"])
    print()
    print(f"{'':28}{'images/s':>10}")
    print(f"{'decode alone (d)':28}{med['d']:>10.1f}")
    print(f"{'model alone (m)':28}{med['m']:>10.1f}")
    print(f"{'model alone, no spinning':28}{med['m_nospin']:>10.1f}")
    print(f"{'1/(1/d + 1/m)':28}{bound:>10.1f}")
    print(f"{'min(d, m)':28}{min(med['d'], med['m']):>10.1f}")
    print(f"{'edgeres infer (e)':28}{med['e']:>10.1f}")
    ratio = med["e"] / bound
    print(f"\ne / (1/(1/d+1/m)) = {ratio:.3f}  (goal >= 0.90: {'PASS' if ratio >= 0.9 else 'FAIL'})")
    acc = result.summary["accuracy"]
    print(f"last run: {result.summary['images']} images, accuracy path ran on {acc['labelled'] if acc else 0} "
          f"labelled images (random weights: accuracy itself is meaningless)")


if __name__ == "__main__":
    main()
