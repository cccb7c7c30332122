"""The degradation benchmark of issue 15: ``edgeres study degradation digits --depths 20,56`` on the built-in digits.

He et al. (2016, Fig. 6) found that a deeper *plain* network trains to a *higher* training error than a shallower
one, while a deeper ResNet does not. This runs the study (plain-20, ResNet-20, plain-56, ResNet-56; one recipe,
one seed) through :func:`edgeres.study.run_study`, the function behind the command, and copies its table and plot
into ``benchmarks/results/degradation/``. Target: the whole study within ~15 minutes on 2 CPU cores.

    .venv/bin/python -u benchmarks/degradation_study.py                    # 10 epochs (the digits recipe)
    .venv/bin/python -u benchmarks/degradation_study.py --epochs 1 --depths 8,14 --results /tmp/r  # smoke run

The study folder (checkpoints, artifacts) is ``--work``; an interrupted run resumes there when started again.
Prints the table, the verdict and one line of JSON (the last line).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_WALL_S = 15 * 60


def main() -> int:
    from edgeres.study import TABLE_COLUMNS, StudyConfig, run_study, table_rows
    from edgeres.timing import format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="20,56")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeres-degradation-study"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "degradation")
    parser.add_argument("--force", action="store_true", help="start the study over in --work")
    args = parser.parse_args()

    config = StudyConfig(depths=tuple(int(d) for d in args.depths.split(",")), epochs=args.epochs, seed=args.seed,
                         threads=args.threads)
    start = time.perf_counter()
    result = run_study("digits", out=args.work, config=config, force=args.force,
                       on_step=lambda line: print(f"[{time.perf_counter() - start:7.1f}s] {line}", flush=True))
    wall = time.perf_counter() - start
    args.results.mkdir(parents=True, exist_ok=True)
    for name in ("table.md", "table.json", "curves.png"):
        shutil.copyfile(args.work / name, args.results / name)
    print(format_table(TABLE_COLUMNS, table_rows(result.rows)))
    print(result.verdict["summary"])
    resumed = len(result.trained) < len(result.rows)
    print(f"wall {wall:.0f} s for {len(result.trained)} trained network(s)"
          f"{' (resumed: the rest came from an earlier run)' if resumed else ''}; target {TARGET_WALL_S} s")
    print(json.dumps({"benchmark": "degradation_study", "depths": list(config.depths), "epochs": args.epochs,
                      "seed": args.seed, "threads": args.threads, "wall_s": round(wall, 1), "resumed": resumed,
                      "degradation": result.verdict.get("degradation"),
                      "train_error": {r["network"]: round(r["train_error"], 2) for r in result.rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
