"""edgeres.junit: one testcase per metric, FAIL as <failure>, INCONCLUSIVE as <skipped>, parsed back with
xml.etree."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from edgeres.junit import junit_xml, write_junit
from edgeres.stats import Verdict


@dataclass
class Case:
    metric: str
    verdict: Verdict
    message: str


CASES = [
    Case("top-1 accuracy", Verdict.PASS, "top-1 97.50% vs baseline 97.80%"),
    Case("latency median b1", Verdict.FAIL, 'ratio 1.31 > 1.10 <&"quoted">'),
    Case("latency p99 b1", Verdict.INCONCLUSIVE, "CI [0.95, 1.40] straddles 1.10"),
    Case("top-1 agreement with reference", Verdict.INFO, "99.1%"),
]


def test_junit_parses_with_one_testcase_per_metric(tmp_path: Path) -> None:
    path = write_junit(tmp_path / "out" / "junit.xml", CASES, properties={"artifact": "m.onnx"}, time_s=1.5)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    counts = (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors"))
    assert counts == ("4", "1", "1", "0")
    assert suite.get("time") == "1.500"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [c.metric for c in CASES]
    assert all(c.get("classname") == "edgeres.check" for c in cases)
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == 'ratio 1.31 > 1.10 <&"quoted">'
    skipped = cases[2].find("skipped")
    assert skipped is not None and "inconclusive" in skipped.get("message", "")
    for passed in (cases[0], cases[3]):
        assert passed.find("failure") is None and passed.find("skipped") is None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {"artifact": "m.onnx"}


def test_all_passing_suite_has_no_failures() -> None:
    root = ET.fromstring(junit_xml([Case("top-1 accuracy", Verdict.PASS, "ok")]).split("\n", 1)[1])
    assert root.find("testsuite").get("failures") == "0"  # type: ignore[union-attr]
    assert not list(root.iter("failure"))
