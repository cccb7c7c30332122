"""Human views of benchmark and gate results: fixed-width tables for the terminal, Markdown to paste into a pull
request, and one PNG with the latency distribution per batch size and throughput against batch size.

matplotlib is optional (the ``plot`` extra) and imported only by :func:`plot_bench`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgeres.errors import EdgeresError
from edgeres.io import atomic_path, write_text_atomic
from edgeres.timing import format_table

if TYPE_CHECKING:
    from edgeres.benchmarking import BenchResult
    from edgeres.verdict import CheckResult

_LATENCY_HEADERS = ["batch", "n", "min", "mean", "median", "p90", "p95", "p99", "max", "inf/s", "img/s"]
_STAGE_HEADERS = ["batch", "preprocess", "H2D", "compute", "D2H", "latency", "serial img/s"]


class MissingExtra(EdgeresError):
    """An optional dependency (an ``edgeres[...]`` extra) is not installed."""


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 1000 else f"{value:.0f}"


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _latency_rows(result: BenchResult) -> list[list[str]]:
    rows = []
    for r in result.results:
        s = r.latency
        rows.append([str(r.batch), str(r.iterations), *(_ms(v) for v in (s.min, s.mean, s.median, s.p90, s.p95,
                                                                            s.p99, s.max)),
                     _rate(r.throughput), _rate(r.images_per_s)])
    return rows


def _stage_rows(result: BenchResult) -> list[list[str]]:
    per_image = result.preprocess.per_image.median if result.preprocess else None
    rows = []
    for r in result.results:
        pre = per_image * r.batch if per_image is not None else None
        stage = {k: v.median for k, v in r.stages.items()}
        serial = r.batch * 1e3 / (r.latency.median + (pre or 0.0))
        rows.append([str(r.batch), _ms(pre), _ms(stage.get("h2d")), _ms(stage.get("compute")), _ms(stage.get("d2h")),
                     _ms(r.latency.median), _rate(serial)])
    return rows


def _notes(result: BenchResult) -> list[str]:
    notes = [f"batch {s['batch']} skipped: {s['reason']}" for s in result.skipped]
    if result.preprocess:
        p = result.preprocess
        notes.append(f"preprocess: {_ms(p.per_image.median)} ms/image median over {p.per_image.count} "
                     f"{'images from ' + p.detail if p.source == 'images' else p.detail + ' images'}, one CPU thread")
    if not result.settings.get("transfers", True):
        notes.append("latency excludes host<->device copies (--no-transfers): compute stage only")
    return notes


def _environment_line(result: BenchResult) -> str:
    e = result.environment
    parts = [f"{e.backend} {e.backend_version}".strip(), e.device]
    if e.threads:
        parts.append(f"{e.threads} threads")
    if e.jetson_model:
        parts.append(e.jetson_model)
    if e.power_mode:
        parts.append(f"power mode {e.power_mode}")
    parts.append(f"edgeres {e.edgeres_version}")
    return ", ".join(p for p in parts if p)


def bench_table(result: BenchResult) -> str:
    """Two fixed-width tables (latency per inference; stage split) and notes, for the terminal."""
    a = result.artifact
    lines = [f"{Path(a.path).name}: {a.arch} {a.backend} {a.precision}, profile {result.profile}, "
             f"sha256 {a.sha256[:12]}",
             f"environment: {_environment_line(result)}", "",
             "latency per inference (ms)",
             format_table(_LATENCY_HEADERS, _latency_rows(result)), "",
             "stage split (median ms per batch; serial img/s = batch / (preprocess + latency))",
             format_table(_STAGE_HEADERS, _stage_rows(result))]
    notes = _notes(result)
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, align_first_left: bool = True) -> str:
    """A GitHub-flavoured Markdown pipe table (numbers right-aligned)."""
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    rule = [":---" if (i == 0 and align_first_left) else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_markdown(result: BenchResult) -> str:
    """A Markdown report a person can paste into a pull request."""
    a, e, s = result.artifact, result.environment, result.settings
    loop = f"{s['iterations']} iterations" if s.get("iterations") else f"{s.get('duration_s')} s"
    lines = [
        f"### Benchmark: `{Path(a.path).name}` ({a.arch}, {a.backend}, {a.precision})", "",
        f"- artifact sha256 `{a.sha256[:16]}`, model sha256 `{a.model_sha256[:16]}`, batch profile {result.profile}",
        f"- environment: {_environment_line(result)}; CPU {e.cpu_model} ({e.cpu_count} logical)"
        + (f"; GPU {e.gpu_name}" if e.gpu_name else ""),
        f"- per batch size: {s.get('warmup_s')} s warm-up, then {loop}; measured {result.created}", "",
        "Latency per inference (ms), throughput (inferences/s = inferences / host wall time) and images/s:", "",
        markdown_table(_LATENCY_HEADERS, _latency_rows(result)), "",
        "Stage split (median ms per batch; serial img/s = batch / (preprocess + latency)):", "",
        markdown_table(_STAGE_HEADERS, _stage_rows(result)),
    ]
    if e.clocks:
        lines += ["", "<details><summary>jetson_clocks --show</summary>", "", "```", e.clocks, "```", "</details>"]
    notes = _notes(result)
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, text: str) -> Path:
    """Write a Markdown report atomically."""
    return write_text_atomic(path, text)


def require_matplotlib() -> tuple[type, type]:
    """matplotlib's Figure and Agg canvas classes; raises :class:`MissingExtra` when it is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtra(f"plotting needs matplotlib, which is not installed ({exc}); install the plot extra: "
                           "pip install 'edgeres[plot]'") from None
    return Figure, FigureCanvasAgg


def plot_bench(result: BenchResult, path: str | Path) -> Path:
    """One PNG: the latency distribution per batch size (box plot over every timed call) and images/s against
    batch size.

    Raises:
        MissingExtra: when matplotlib is not installed.
    """
    Figure, Canvas = require_matplotlib()
    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    Canvas(fig)
    left, right = fig.subplots(1, 2)
    labels = [str(r.batch) for r in result.results]
    data = [r.samples_ms or [r.latency.median] for r in result.results]
    left.boxplot(data, tick_labels=labels, whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
    for i, r in enumerate(result.results, start=1):
        left.scatter([i], [r.latency.p99], marker="_", s=200, color="tab:red", zorder=3,
                     label="p99" if i == 1 else None)
    left.set(xlabel="batch size", ylabel="latency per inference (ms)",
             title="latency distribution (box: quartiles, whiskers: p1-p99)")
    left.set_yscale("log")
    left.legend(loc="upper left")
    left.grid(True, axis="y", alpha=0.3)
    batches = [r.batch for r in result.results]
    right.plot(batches, [r.images_per_s for r in result.results], marker="o")
    for b, r in zip(batches, result.results):
        right.annotate(f"{r.images_per_s:.0f}", (b, r.images_per_s), textcoords="offset points", xytext=(0, 6),
                       ha="center", fontsize=8)
    right.set(xlabel="batch size", ylabel="images / s", title="throughput vs batch size")
    if len(batches) > 1 and max(batches) / min(batches) >= 8:
        right.set_xscale("log", base=2)
    right.set_xticks(batches, [str(b) for b in batches])
    right.set_ylim(0, 1.15 * max(r.images_per_s for r in result.results))
    right.grid(True, alpha=0.3)
    a = result.artifact
    fig.suptitle(f"{Path(a.path).name} — {a.arch} {a.backend} {a.precision} on {result.environment.device}",
                 fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def verdict_rows(result: CheckResult) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the gate's verdict table."""
    headers = ["metric", "baseline", "now", "change", "tolerance", "verdict"]
    return headers, [[r.metric, r.baseline_text, r.now_text, r.change_text, r.tolerance_text, r.verdict.value]
                     for r in result.rows]


def check_table(result: CheckResult) -> str:
    """The gate's verdict table and notes, for the terminal."""
    headers, rows = verdict_rows(result)
    lines = [format_table(headers, rows)] if rows else ["(nothing compared)"]
    lines += [f"note: {n}" for n in result.notes]
    lines.append(f"verdict: {result.verdict_text}")
    return "\n".join(lines)


def check_markdown(result: CheckResult) -> str:
    """The gate's verdict as Markdown, for a pull request comment."""
    headers, rows = verdict_rows(result)
    lines = [f"### Regression check: `{Path(result.artifact.path).name}` — {result.verdict_text}", "",
             markdown_table(headers, rows)]
    lines += [""] + [f"- {n}" for n in result.notes] if result.notes else []
    return "\n".join(lines) + "\n"
