"""What the regression gate returns: one :class:`Row` per metric and the :class:`CheckResult` that holds them.

Kept below :mod:`edgeres.checking` (which produces them) and :mod:`edgeres.report` / :mod:`edgeres.junit` (which
render them), so the gate can write its own reports without an import cycle. Exit codes: 0 pass, 1 regression,
3 inconclusive; an input error is a :class:`edgeres.errors.GateInputError` (exit 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeres.baseline import Baseline
from edgeres.benchmarking import ArtifactInfo
from edgeres.stats import Verdict


@dataclass
class Row:
    """One line of the verdict table."""

    metric: str
    baseline: float | None
    now: float | None
    unit: str  # "%" or "ms"
    change_text: str
    tolerance_text: str
    verdict: Verdict
    message: str = ""

    def _fmt(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}%" if self.unit == "%" else f"{value:.3f} ms"

    @property
    def baseline_text(self) -> str:
        return self._fmt(self.baseline)

    @property
    def now_text(self) -> str:
        return self._fmt(self.now)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline": self.baseline, "now": self.now, "unit": self.unit,
                "change": self.change_text, "tolerance": self.tolerance_text, "verdict": self.verdict.value,
                "message": self.message}


@dataclass
class CheckResult:
    """The verdict table and what was measured now."""

    artifact: ArtifactInfo  # for a served model: the served artifact's identity, ``path`` the model's URL
    baseline_path: str
    rows: list[Row]
    notes: list[str]
    measured: Baseline
    updated: bool = False

    @property
    def verdict(self) -> Verdict:
        verdicts = {r.verdict for r in self.rows}
        if Verdict.FAIL in verdicts:
            return Verdict.FAIL
        if Verdict.INCONCLUSIVE in verdicts:
            return Verdict.INCONCLUSIVE
        return Verdict.PASS

    @property
    def exit_code(self) -> int:
        """0 pass (or a baseline written), 1 regression, 3 inconclusive (2 is :class:`GateInputError`'s)."""
        return {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.INCONCLUSIVE: 3}[self.verdict]

    @property
    def verdict_text(self) -> str:
        if self.updated:
            return f"baseline written to {self.baseline_path}"
        return {Verdict.PASS: "PASS", Verdict.FAIL: "FAIL (regression)",
                Verdict.INCONCLUSIVE: "INCONCLUSIVE (latency not told apart from the noise or the machine's change "
                                      "of speed, see the notes; rerun on a quieter machine, with more --trials, or "
                                      "side by side with the baseline's artifact)"}[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact.to_dict(), "baseline": self.baseline_path, "verdict": self.verdict.value,
                "exit_code": self.exit_code, "updated": self.updated, "rows": [r.to_dict() for r in self.rows],
                "notes": self.notes}
