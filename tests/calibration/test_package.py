"""The calibration package stays numpy-only: importing it pulls in no ML framework and nothing of edgeres."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "onnx", "onnxruntime", "tensorrt", "pycuda", "edgeres", "cli", "scipy", "PIL")


def test_importing_calibration_loads_only_numpy_and_the_standard_library():
    code = (
        "import json, sys; import calibration, calibration.readers, calibration.collectors, calibration.ranges, "
        "calibration.trt_cache, calibration.thresholds; print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    modules = json.loads(out.stdout)
    assert "calibration.collectors" in modules and "numpy" in modules  # the probe did import the package
    loaded = sorted({m.split(".")[0] for m in modules} & set(FORBIDDEN))
    assert loaded == [], f"calibration imported {loaded}"


def test_no_source_file_imports_a_forbidden_module():
    for path in (ROOT / "calibration").glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                top = words[1].split(".")[0]
                assert top not in FORBIDDEN, f"{path.name}: {line.strip()}"
