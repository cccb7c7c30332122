"""Triton (``edgeres serve``'s server) versus the local runner on the same artifact, under concurrent clients.

One FP32 ONNX Runtime artifact (random-weight ResNet with real BatchNorm statistics, batch profile 1:8:16). At each
concurrency C, C client threads send one image per call for a fixed time: locally straight into one shared runner
(what `edgeres infer` does in-process), then over HTTP to the Triton server, whose dynamic batcher may merge
concurrent requests. Both use the same ONNX Runtime thread count. Levels alternate local / served, twice, and the
better round of each is kept. Printed: throughput and p50/p99 latency on each side and their ratios
(served / local; throughput > 1 and latency < 1 favour the server), plus the server's mean batch per execution.

    .venv/bin/python benchmarks/serve_vs_local.py [--arch resnet18] [--size 112] [--duration 3] [--levels 1,4,16]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infer_pipeline import make_model_onnx  # noqa: E402


def local_load(runner, x: np.ndarray, concurrency: int, duration_s: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + duration_s

    def work() -> None:
        mine = []
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            runner.infer(x)
            mine.append((time.perf_counter() - t0) * 1e3)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeres-bench-serve"))
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per level and side")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads on both sides [cores]")
    parser.add_argument("--delay-us", type=int, default=500, help="server's max queue delay")
    args = parser.parse_args()

    import os

    from edgeres import backends
    from edgeres.backends import BatchProfile
    from edgeres.serve.client import TritonClient, run_load
    from edgeres.serve.repository import serving_repository
    from edgeres.serve.triton import TritonServer

    threads = args.threads or max(1, os.cpu_count() or 1)
    levels = [int(v) for v in args.levels.split(",")]
    onnx_path = make_model_onnx(args.arch, args.work, size=args.size)
    artifact = args.work / f"{args.arch}_{args.size}.fp32.onnx"
    if not artifact.exists():
        backends.build(onnx_path, backend="onnxruntime", precision="fp32", out=artifact,
                       profile=BatchProfile(1, 8, 16))
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeres-bench-serve-") as tmp, \
            backends.open(artifact, threads=threads, spinning=False) as runner:
        served = serving_repository(artifact, Path(tmp) / "models", threads=threads,
                                    max_queue_delay_us=args.delay_us)
        x = np.random.default_rng(0).standard_normal((1, *runner.card.preprocess.input_shape), dtype=np.float32)
        with TritonServer(served.root) as server:
            client = TritonClient(server.http_url)
            for c in levels:
                local_load(runner, x, c, 0.5)  # warm-up
                run_load(client, served.tensor_model, x, concurrency=c, duration_s=0.5, card=runner.card)
                best_local = best_served = None
                execs = reqs = 0
                for _ in range(2):
                    lat, wall = local_load(runner, x, c, args.duration)
                    cand = (len(lat) / wall, np.percentile(lat, 50), np.percentile(lat, 99))
                    best_local = cand if best_local is None or cand[0] > best_local[0] else best_local
                    before = client.statistics(served.tensor_model)["execution_count"]
                    lat, errors, wall, _ = run_load(client, served.tensor_model, x, concurrency=c,
                                                    duration_s=args.duration, card=runner.card)
                    assert errors == 0, f"{errors} failed requests"
                    cand = (len(lat) / wall, np.percentile(lat, 50), np.percentile(lat, 99))
                    if best_served is None or cand[0] > best_served[0]:
                        best_served = cand
                        execs = client.statistics(served.tensor_model)["execution_count"] - before
                        reqs = len(lat)
                rows.append((c, best_local, best_served, reqs / max(execs, 1)))
                print(f"concurrency {c}: local {best_local[0]:.1f} req/s, served {best_served[0]:.1f} req/s",
                      file=sys.stderr, flush=True)
    print(f"{args.arch} at {args.size}px, FP32 ONNX Runtime, {threads} threads each side, 1 image per request, "
          f"{args.duration:.0f} s per level, best of 2 rounds; served = Triton 2.51 (Python backend, 1 instance, "
          f"max queue delay {args.delay_us} us) over HTTP on 127.0.0.1")
    print("| clients | local req/s | served req/s | ratio | local p50 ms | served p50 ms | ratio | local p99 ms "
          "| served p99 ms | ratio | served batch |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, lo, sv, batch in rows:
        print(f"| {c} | {lo[0]:.1f} | {sv[0]:.1f} | {sv[0] / lo[0]:.2f} | {lo[1]:.2f} | {sv[1]:.2f} | "
              f"{sv[1] / lo[1]:.2f} | {lo[2]:.2f} | {sv[2]:.2f} | {sv[2] / lo[2]:.2f} | {batch:.1f} |")


if __name__ == "__main__":
    main()
