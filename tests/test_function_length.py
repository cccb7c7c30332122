"""No function in ``edgeres/`` or ``cli.py`` longer than 60 lines (from its ``def`` line to its last line, its
docstring not counted): a longer one wants splitting into named steps (STYLE.md)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the end, less the docstring's (decorators are not counted)."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def long_functions(paths: list[Path], limit: int = LIMIT) -> list[str]:
    """``file:line name (N lines)`` for every function (methods and nested ones too) over ``limit`` lines."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _length(node) > limit:
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{where}:{node.lineno} {node.name} ({_length(node)} lines)")
    return found


def test_no_function_in_edgeres_or_the_cli_is_longer_than_60_lines() -> None:
    paths = sorted((ROOT / "edgeres").rglob("*.py")) + [ROOT / "cli.py"]
    assert len(paths) > 20  # the package was found
    offenders = long_functions(paths)
    assert not offenders, "split these into named steps:\n" + "\n".join(offenders)


def test_the_count_skips_the_docstring_and_catches_methods(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(58))
    fits = tmp_path / "fits.py"  # def + 58 statements + return = 60 lines; the 3-line docstring is not counted
    fits.write_text(f'def f():\n    """A docstring\n    of three\n    lines."""\n{body}    return x0\n')
    assert long_functions([fits]) == []
    over = tmp_path / "over.py"  # a method: def + 58 statements + 2 = 61 lines
    over.write_text("class C:\n    def g(self):\n" + body.replace("    ", "        ") + "        y = 1\n"
                    "        return y\n")
    assert long_functions([over]) == [f"{over}:2 g (61 lines)"]
