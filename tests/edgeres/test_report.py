"""edgeres.report: terminal tables, Markdown for pull requests, and the PNG (with and without matplotlib)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeres.benchmarking import ArtifactInfo, BatchResult, BenchResult, PreprocessTiming
from edgeres.checking import Baseline, CheckResult, Row
from edgeres.environment import Environment
from edgeres.report import MissingExtra, bench_markdown, bench_table, check_markdown, check_table, plot_bench
from edgeres.stats import Verdict
from edgeres.timing import summarize

ARTIFACT = ArtifactInfo(path="/x/resnet20.int8.onnx", sha256="a" * 64, model_sha256="b" * 64,
                        backend="onnxruntime", precision="int8", arch="resnet20")
ENV = Environment(backend="onnxruntime", backend_version="1.32.0", device="Test CPU", cpu_model="Test CPU",
                  cpu_count=2, threads=2, power_mode="NV Power Mode: MAXN / 0", clocks="GPU MaxFreq=1300500000")


@pytest.fixture
def result() -> BenchResult:
    rng = np.random.default_rng(0)
    rows = []
    for batch, ms in ((1, 2.0), (8, 12.0), (32, 45.0)):
        samples = (ms * rng.lognormal(0, 0.1, 200)).tolist()
        wall = sum(samples) / 1e3
        rows.append(BatchResult(batch=batch, iterations=200, wall_s=wall, latency=summarize(samples),
                                throughput=200 / wall, images_per_s=200 * batch / wall,
                                stages={"compute": summarize([ms * 0.9] * 3), "h2d": summarize([0.1] * 3)},
                                samples_ms=samples))
    return BenchResult(artifact=ARTIFACT, profile="1:8:32", settings={"warmup_s": 1.0, "duration_s": 5.0,
                       "iterations": None, "transfers": True}, results=rows,
                       skipped=[{"batch": 64, "reason": "outside the artifact's batch profile 1:8:32"}],
                       preprocess=PreprocessTiming("synthetic", "synthetic 42x32 JPEG", summarize([0.5, 0.7])),
                       environment=ENV)


def test_bench_table_has_every_batch_and_stage(result: BenchResult) -> None:
    text = bench_table(result)
    lines = text.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["batch", "n"])
    assert header.split() == ["batch", "n", "min", "mean", "median", "p90", "p95", "p99", "max", "inf/s", "img/s"]
    row8 = next(line.split() for line in lines if line.split()[:2] == ["8", "200"])
    assert row8[4] == f"{result.results[1].latency.median:.2f}"
    assert "batch 64 skipped" in text and "power mode NV Power Mode: MAXN / 0" in text
    stage_row = next(line.split() for line in lines if line.split()[:1] == ["32"] and line.split()[1] != "200")
    assert stage_row[1] == f"{0.6 * 32:.2f}"  # preprocess per batch = batch x median per image


def test_markdown_contains_the_tables(result: BenchResult) -> None:
    md = bench_markdown(result)
    assert md.startswith("### Benchmark: `resnet20.int8.onnx` (resnet20, onnxruntime, int8)")
    assert "| batch | n | min | mean | median | p90 | p95 | p99 | max | inf/s | img/s |" in md
    assert "| :--- | ---: |" in md
    for r in result.results:
        assert f"| {r.batch} | 200 | " in md
    assert "| batch | preprocess | H2D | compute | D2H | latency | serial img/s |" in md
    assert "jetson_clocks --show" in md and "GPU MaxFreq=1300500000" in md


def test_plot_is_a_png(result: BenchResult, tmp_path: Path) -> None:
    path = plot_bench(result, tmp_path / "plots" / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.size == (1100, 450)


def test_plot_without_matplotlib_says_how_to_install(result: BenchResult, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MissingExtra, match=r"pip install 'edgeres\[plot\]'"):
        plot_bench(result, tmp_path / "bench.png")
    assert not (tmp_path / "bench.png").exists()


def test_check_table_and_markdown() -> None:
    rows = [Row("top-1 accuracy", 97.8, 97.5, "%", "-0.30 pp", "drop <= 0.5 pp", Verdict.PASS),
            Row("latency median b1", 2.0, 2.6, "ms", "+30.0% [+25.0, +35.0]", "<= +10%", Verdict.FAIL)]
    result = CheckResult(ARTIFACT, "baseline.json", rows, ["environment threads changed: 2 -> 4"],
                         Baseline(ARTIFACT, ENV))
    text = check_table(result)
    assert text.splitlines()[0].split() == ["metric", "baseline", "now", "change", "tolerance", "verdict"]
    assert "97.80%" in text and "2.600 ms" in text and "FAIL" in text
    assert "note: environment threads changed" in text and text.endswith("verdict: FAIL (regression)")
    md = check_markdown(result)
    assert "| metric | baseline | now | change | tolerance | verdict |" in md
    assert "| latency median b1 | 2.000 ms | 2.600 ms | +30.0% [+25.0, +35.0] | <= +10% | FAIL |" in md
