"""Running the ``edgeres`` command in-process, the way click's own tests do."""
from __future__ import annotations

from click.testing import CliRunner, Result

from cli import cli


def assert_one_line_error(result: Result, *needles: str, exit_code: int = 1) -> str:
    """A click error: the given exit code, exactly one `Error:` line containing every needle, no traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit)  # click exited on purpose; nothing escaped
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def invoke(*args: object, catch_exceptions: bool = True) -> Result:
    """``edgeres ARGS...`` through :class:`click.testing.CliRunner` (paths and numbers turned into strings)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch_exceptions)
