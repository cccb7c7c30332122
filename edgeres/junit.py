"""JUnit XML for CI systems: one ``<testcase>`` per gated metric.

A FAIL becomes ``<failure>``, an INCONCLUSIVE verdict ``<skipped>`` (the data could not tell; the command's exit
status 3 still says so), anything else passes. Written with :mod:`xml.etree.ElementTree`, so names and messages
are escaped.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Protocol

from edgeres.io import write_text_atomic


class Case(Protocol):
    """What a test case needs: the metric's name, its verdict (``PASS``/``FAIL``/``INCONCLUSIVE``/...) and one
    line that explains it."""

    metric: str

    @property
    def verdict(self) -> str: ...

    @property
    def message(self) -> str: ...


def junit_xml(cases: Iterable[Case], *, suite: str = "edgeres.check", classname: str = "edgeres.check",
              time_s: float = 0.0, properties: dict[str, str] | None = None) -> str:
    """JUnit XML text for ``cases``.

    Args:
        cases: the gated metrics, in table order.
        suite: the ``<testsuite>`` name.
        classname: every test case's ``classname`` (CI systems group by it).
        time_s: the suite's duration.
        properties: ``<property>`` entries (artifact, baseline, device ...).
    """
    cases = list(cases)
    verdicts = [str(getattr(c.verdict, "value", c.verdict)) for c in cases]
    suites = ET.Element("testsuites")
    node = ET.SubElement(suites, "testsuite", {
        "name": suite, "tests": str(len(cases)), "failures": str(verdicts.count("FAIL")), "errors": "0",
        "skipped": str(verdicts.count("INCONCLUSIVE")), "time": f"{time_s:.3f}",
    })
    if properties:
        props = ET.SubElement(node, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", {"name": key, "value": str(value)})
    for case, verdict in zip(cases, verdicts):
        element = ET.SubElement(node, "testcase", {"classname": classname, "name": case.metric, "time": "0"})
        if verdict == "FAIL":
            ET.SubElement(element, "failure", {"message": case.message, "type": "regression"}).text = case.message
        elif verdict == "INCONCLUSIVE":
            ET.SubElement(element, "skipped", {"message": f"inconclusive: {case.message}"})
        else:
            ET.SubElement(element, "system-out").text = case.message
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_junit(path: str | Path, cases: Iterable[Case], **kwargs: object) -> Path:
    """Write :func:`junit_xml` to ``path`` atomically and return the path (keyword options as there)."""
    return write_text_atomic(path, junit_xml(cases, **kwargs))  # type: ignore[arg-type]
