"""Running the ``edgeres`` command in-process, the way click's own tests do."""
from __future__ import annotations

from click.testing import CliRunner, Result

from cli import cli


def invoke(*args: object, catch_exceptions: bool = True) -> Result:
    """``edgeres ARGS...`` through :class:`click.testing.CliRunner` (paths and numbers turned into strings)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch_exceptions)
