"""The tests' own layout: a test file imports shared helpers from ``tests/helpers/`` (or the ``trt_double`` fake),
never from another test file or from a ``conftest.py``, and a ``conftest.py`` holds only fixtures and hooks.

Importing from a test module runs (and re-collects) that module, drags its fixtures into the importer's namespace
and breaks as soon as test files move; importing from ``conftest`` only works while ``tests/`` is on ``sys.path``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
HELPERS = TESTS / "helpers"
# pytest's default python_files, plus conftest: modules no other file may import
LOCAL_TEST_MODULE = re.compile(r"^(conftest|test_\w*|\w+_test)$")


def _sources() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_names(node: ast.AST) -> list[str]:
    """Every dotted module name an import statement (or ``importlib.import_module("...")``) could load, with the
    imported names of a ``from X import a, b`` counted as ``X.a``, ``X.b`` (they may be modules)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = "." * node.level + (node.module or "")
        return [base] + [f"{base}.{alias.name}" if base and not base.endswith(".") else f"{base}{alias.name}"
                         for alias in node.names]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__"):
            return [node.args[0].value]
    return []


def cross_imports(source: str) -> list[str]:
    """``line: module`` for each import in ``source`` that reaches a test module or a conftest."""
    found = []
    for node in ast.walk(ast.parse(source)):
        hits = [name for name in _imported_names(node)
                if any(LOCAL_TEST_MODULE.match(part) for part in name.split(".") if part)]
        if hits:
            found.append((node.lineno, hits[0]))
    return [f"{line}: {name}" for line, name in sorted(found)]


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "fixture" \
        or isinstance(target, ast.Name) and target.id == "fixture"


def not_fixtures(source: str) -> list[str]:
    """``line: what`` for each top-level statement of a conftest that is neither an import, the docstring, a
    fixture, a ``pytest_*`` hook nor ``pytest_plugins``."""
    found = []
    for i, node in enumerate(ast.parse(source).body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                and (node.name.startswith("pytest_") or any(_is_fixture(d) for d in node.decorator_list)):
            continue
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["pytest_plugins"]:
            continue
        what = getattr(node, "name", None) or ast.unparse(node).splitlines()[0]
        found.append(f"{node.lineno}: {what}")
    return found


# --- the checks themselves can fail ------------------------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    ("from conftest import make_tiny_onnx\n", ["1: conftest"]),
    ("import test_bench\n", ["1: test_bench"]),
    ("from test_bench import (\n    SleepRunner,\n)\n", ["1: test_bench"]),
    ("from tests.test_bench import colour_model\n", ["1: tests.test_bench"]),
    ("from tests import conftest\n", ["1: tests.conftest"]),
    ("from . import test_bench\n", ["1: .test_bench"]),
    ("from .conftest import x\n", ["1: .conftest"]),
    ("from edgeres.latency_test import y\n", ["1: edgeres.latency_test"]),
    ("def f():\n    from conftest import torch_threads_kept\n", ["2: conftest"]),
    ("import importlib\nm = importlib.import_module('test_check')\n", ["2: test_check"]),
], ids=["conftest", "import", "parenthesised", "dotted", "from-package", "relative", "relative-conftest",
        "suffix", "inside-function", "importlib"])
def test_cross_imports_are_found(source: str, expected: list[str]) -> None:
    assert cross_imports(source) == expected


def test_imports_of_helpers_and_libraries_are_allowed() -> None:
    source = ("import pytest\nfrom helpers.models import make_tiny_onnx\nfrom trt_double import install\n"
              "from .clocks import VirtualClock\nfrom edgeres.checking import check\nimport edgeres.testing_utils\n"
              "from torch.testing import assert_close\nfrom test import support\n")
    assert cross_imports(source) == []


def test_a_plain_helper_in_a_conftest_is_found() -> None:
    source = ('"""Fixtures."""\nimport pytest\nTINY = 3\n\n@pytest.fixture\ndef a():\n    return 1\n\n'
              '@pytest.fixture(scope="session")\ndef b():\n    return 2\n\ndef pytest_configure(config):\n    pass\n\n'
              'def make_model():\n    return 3\n\nclass Clock:\n    pass\n')
    assert not_fixtures(source) == ["3: TINY = 3", "16: make_model", "19: Clock"]


# --- the tree ----------------------------------------------------------------------------------------------------

def test_no_test_file_or_helper_imports_a_test_module_or_conftest() -> None:
    offenders = {str(p.relative_to(TESTS)): hits for p in _sources()
                 if p != Path(__file__).resolve() and (hits := cross_imports(p.read_text(encoding="utf-8")))}
    assert offenders == {}, f"import shared helpers from tests/helpers/ instead: {offenders}"


def test_conftests_hold_only_fixtures_and_hooks() -> None:
    conftests = sorted(TESTS.rglob("conftest.py"))
    assert TESTS / "conftest.py" in conftests
    offenders = {str(p.relative_to(TESTS)): hits for p in conftests
                 if (hits := not_fixtures(p.read_text(encoding="utf-8")))}
    assert offenders == {}, f"move plain helpers and constants to tests/helpers/: {offenders}"


def test_helpers_define_no_fixtures_and_no_tests() -> None:
    """A fixture only reaches a test through a conftest; one defined in a helper would have to be imported."""
    misplaced = []
    for path in sorted(HELPERS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and (node.name.startswith("test_") or any(_is_fixture(d) for d in node.decorator_list)):
                misplaced.append(f"{path.relative_to(TESTS)}:{node.lineno}: {node.name}")
    assert (HELPERS / "__init__.py").is_file()
    assert misplaced == []


def test_test_file_basenames_are_unique() -> None:
    """Test folders have no ``__init__.py`` (pytest's default import mode), so each test file is imported under its
    basename: two ``test_config.py`` in different folders cannot both be collected."""
    by_name: dict[str, list[str]] = {}
    for path in _sources():
        if LOCAL_TEST_MODULE.match(path.stem) and path.stem != "conftest":
            by_name.setdefault(path.name, []).append(str(path.relative_to(TESTS)))
    assert by_name, "no test files found"
    assert {name: paths for name, paths in by_name.items() if len(paths) > 1} == {}
