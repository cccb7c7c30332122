"""`edgeres check`'s latency gate on this machine: no false FAIL under load, no missed 2x regression.

Through the real CLI, on a digits ResNet-20 FP32 artifact (one epoch of `edgeres train`, `edgeres build`):

1. baseline written on the machine as it is (`--update-baseline`; "quiet": this script adds no load);
2. N checks of the **unchanged** artifact while CPU hogs run (one spinning process per CPU, started here and
   killed by pid in a ``finally``), from the stored baseline alone (the candidate is the baseline's own file, so
   the gate cannot time it side by side): any FAIL is a false FAIL;
3. N checks of a **~2x slower** artifact with the same outputs (the same ONNX computed twice, the second copy's
   logits multiplied by zero and added) with no added load, from the stored baseline alone (`--no-side-by-side`):
   anything but FAIL is a missed regression;
4. the same N checks of the slower artifact under the CPU hogs, with the default (side by side, since the
   baseline's artifact is on disk): anything but FAIL is a missed regression.

It prints each verdict, the load average around each phase, the slow/fast latency ratio measured side by side,
and the false-FAIL and missed-regression rates (the targets: 0 of N each, N >= 5).

    .venv/bin/python benchmarks/latency_gate.py [--work /tmp/edgeres-bench-gate] [--n 5] [--hogs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EDGERES = Path(sys.executable).with_name("edgeres")  # the venv's console script: the real CLI


def edgeres(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(EDGERES), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def add_zero_copy(src: Path, out: Path) -> Path:
    """``src`` computed twice: a second copy of every node (its weights scaled by 1.001, so no optimiser can merge
    the copies) whose logits are multiplied by zero and added to the first's. The outputs stay bit-identical and
    the work is twice the model's, with the same kernels on the same shapes."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inp, logits = g.input[0].name, g.output[0].name

    def dup(name: str) -> str:
        return name if name in (inp, "") else f"dup_{name}"

    copies = []
    for init in list(g.initializer):
        value = numpy_helper.to_array(init)
        if value.dtype.kind == "f":
            value = (value * 1.001).astype(value.dtype)
        copies.append(numpy_helper.from_array(value, dup(init.name)))
    nodes = []
    for node in list(g.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = dup(node.name) if node.name else ""
        copy.input[:] = [dup(n) for n in node.input]
        copy.output[:] = [dup(n) for n in node.output]
        nodes.append(copy)
    for node in g.node:  # the model's own logits now feed the final Add
        node.output[:] = ["logits_plain" if name == logits else name for name in node.output]
    g.initializer.extend(copies + [numpy_helper.from_array(np.zeros((1,), np.float32), "dup_zero")])
    g.node.extend(nodes + [helper.make_node("Mul", [dup(logits), "dup_zero"], ["dup_nothing"]),
                           helper.make_node("Add", ["logits_plain", "dup_nothing"], [logits])])
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def side_by_side_ratio(fast: Path, slow: Path, calls: int = 400) -> tuple[float, bool]:
    """Latency ratio slow/fast at batch 1 (medians of calls alternating one by one), and whether their outputs
    are equal."""
    from edgeres import backends
    from edgeres.benchmarking import input_batch

    with backends.open(fast, spinning=False) as a, backends.open(slow, spinning=False) as b:
        x = input_batch(a.card, 1)
        same = bool(np.array_equal(a.infer(x), b.infer(x)))
        times: dict[str, list[float]] = {"a": [], "b": []}
        for _ in range(calls):
            for name, runner in (("a", a), ("b", b)):
                t0 = time.perf_counter()
                runner.infer(x)
                times[name].append(time.perf_counter() - t0)
    return statistics.median(times["b"]) / statistics.median(times["a"]), same


class Hogs:
    """``n`` CPU-spinning processes, started on enter and killed by pid on exit (always)."""

    def __init__(self, n: int) -> None:
        self.n, self.procs = n, []

    def __enter__(self) -> Hogs:
        try:
            for _ in range(self.n):
                self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        except BaseException:
            self.__exit__()
            raise
        time.sleep(1.0)  # let the scheduler settle
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            try:
                os.kill(p.pid, 9)
            except ProcessLookupError:
                pass
            p.wait()
        self.procs = []


def run_checks(label: str, artifact: Path, baseline: Path, n: int, extra: list[str]) -> list[dict]:
    out = []
    for i in range(n):
        proc = edgeres("-q", "check", str(artifact), "--baseline", str(baseline), "--json", *extra, check=False)
        if proc.returncode == 2:
            raise SystemExit(f"check failed as bad input:\n{proc.stdout}\n{proc.stderr}")
        result = json.loads(proc.stdout)
        rows = {r["metric"]: r for r in result["rows"]}
        med = rows.get("latency median b1", {})
        mode = ("side by side" if any(n.startswith("latency measured side by side") for n in result["notes"])
                else "stored + probe")
        print(f"  {label} #{i + 1}: exit {proc.returncode} {result['verdict']:<12} ({mode}) "
              + "  ".join(f"{m.replace('latency ', '')}: {r['verdict']} {r['change']}" for m, r in rows.items()),
              flush=True)
        out.append({"exit": proc.returncode, "verdict": result["verdict"], "mode": mode, "median_b1": med})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeres-bench-gate"))
    ap.add_argument("--n", type=int, default=5, help="checks per phase")
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="CPU-spinning processes under load")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    if not (work / "model.onnx").exists():
        edgeres("data", "digits", str(work / "digits"), "--force")
        edgeres("train", str(work / "digits"), "--arch", "resnet20", "--epochs", "1", "--out",
                str(work / "model.pt"), "--force")
        edgeres("export", str(work / "model.pt"), "--out", str(work / "model.onnx"), "--force")
    fast = work / "fast" / "model.fp32.onnx"
    slow = work / "slow" / "model_slow.fp32.onnx"
    if not fast.exists():
        edgeres("build", str(work / "model.onnx"), "--precision", "fp32", "--out", str(work / "fast"), "--force")
    if not slow.exists():
        add_zero_copy(work / "model.onnx", work / "model_slow.onnx")
        edgeres("build", str(work / "model_slow.onnx"), "--precision", "fp32", "--out", str(work / "slow"), "--force")
    ratio, same = side_by_side_ratio(fast, slow)
    print(f"artifacts: {fast} and {slow}: slow/fast median latency at batch 1 = {ratio:.2f}x side by side; "
          f"outputs {'identical' if same else 'DIFFERENT'}")
    baseline = work / "baseline.json"
    load_before = os.getloadavg()
    edgeres("-q", "check", str(fast), "--baseline", str(baseline), "--update-baseline")
    stored = json.loads(baseline.read_text())["latency"]["machine"]
    print(f"baseline written; load average before {load_before[0]:.2f}, during trials busy "
          f"{100 * (stored['fractions'] or {}).get('busy', float('nan')):.0f}% of {os.cpu_count()} CPUs")

    print(f"phase A: unchanged artifact, {args.hogs} CPU hogs, stored baseline")
    with Hogs(args.hogs):
        unchanged = run_checks("unchanged+load", fast, baseline, args.n, [])
        print(f"  load average at the end of phase A {os.getloadavg()[0]:.2f}")
    print(f"phase B: 2x artifact, no added load (load average {os.getloadavg()[0]:.2f}), stored baseline")
    slow_quiet = run_checks("slow+quiet", slow, baseline, args.n, ["--allow-mismatch", "--no-side-by-side"])
    print(f"  load average after phase B {os.getloadavg()[0]:.2f}")
    print(f"phase C: 2x artifact, {args.hogs} CPU hogs, default mode (side by side: the baseline's artifact is on "
          "disk)")
    with Hogs(args.hogs):
        slow_load = run_checks("slow+load", slow, baseline, args.n, ["--allow-mismatch"])

    false_fail = sum(r["exit"] == 1 for r in unchanged)
    missed_quiet = sum(r["exit"] != 1 for r in slow_quiet)
    missed_load = sum(r["exit"] != 1 for r in slow_load)
    counts = {name: {v: sum(r["verdict"] == v for r in rs) for v in ("PASS", "INCONCLUSIVE", "FAIL")}
              for name, rs in (("unchanged+load", unchanged), ("slow+quiet", slow_quiet), ("slow+load", slow_load))}
    print(f"verdicts: {counts}")
    print(f"RESULT: false-FAIL {false_fail}/{args.n} (unchanged, {args.hogs} hogs, stored baseline); missed regression "
          f"{missed_quiet}/{args.n} (2x, quiet, stored baseline), {missed_load}/{args.n} (2x, {args.hogs} hogs, side "
          f"by side); slow/fast {ratio:.2f}x; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
