"""The import structure: no cycle among edgeres/, calibration/ and cli.py (function-level imports count: a cycle
hidden in a function is still a cycle), `calibration` stays independent of edgeres, nothing imports the CLI, and
`import edgeres` loads neither torch nor ONNX Runtime."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    paths = [*(ROOT / "edgeres").rglob("*.py"), *(ROOT / "calibration").rglob("*.py"), ROOT / "cli.py"]
    mods = {}
    for path in paths:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules ``mod`` imports anywhere in its file (``from pkg import sub`` counts as ``pkg.sub``)."""
    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(filter(None, (known(alias.name) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                if known(target):
                    found.add(known(target))
    found.discard(mod)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {mod: _imports(mod, path, mods) for mod, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert not _cycles(_graph()), "import cycles (move the shared piece below its users)"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_point_one_way() -> None:
    graph = _graph()
    assert not [m for m, deps in graph.items() if m.startswith("calibration") and any(
        d.startswith("edgeres") or d == "cli" for d in deps)], "calibration is numpy-only and knows nothing of edgeres"
    assert not [m for m, deps in graph.items() if "cli" in deps], "nothing imports the CLI"


def test_import_edgeres_loads_neither_torch_nor_onnxruntime() -> None:
    code = ("import sys, edgeres; heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'tensorrt', 'pycuda') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_cli_starts_without_torch_and_names_every_architecture() -> None:
    code = "import sys, cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "importing the CLI must not import torch (every command would wait)"
    from edgeres import architectures, models

    assert architectures.names() == models.names()
