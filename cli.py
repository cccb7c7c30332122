"""The ``edgeres`` command line: one click command per arrow of the pipeline.

Each command parses options, calls one public edgeres function and prints its result (a table for humans,
``--json`` or ``--out`` for machines). Errors from edgeres become one-line ``Error: ...`` messages with a non-zero
exit; ``edgeres --debug ...`` shows the traceback instead.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from edgeres import __version__
from edgeres.errors import EdgeresError

log = logging.getLogger("edgeres")


class _EdgeresGroup(click.Group):
    """Turns EdgeresError into click's one-line error (exit 1, or the error's own exit code)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeresError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            err = click.ClickException(str(exc))
            err.exit_code = getattr(exc, "exit_code", 1)
            raise err from None


@click.group(cls=_EdgeresGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeres")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and results; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """edgeres: train a ResNet, export it to ONNX, calibrate INT8, build a TensorRT (or ONNX Runtime) engine,
    run it on images, benchmark it and gate regressions."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def quiet_flag(ctx: click.Context) -> bool:
    """Whether progress bars should be silenced for this invocation."""
    return bool(ctx.obj and ctx.obj.get("quiet"))


def echo_json(obj: Any) -> None:
    """Print machine-readable output."""
    click.echo(json.dumps(obj, indent=2))


# --- data commands ---
@cli.group()
def data() -> None:
    """Built-in datasets."""


@data.command("digits")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the train/val split.")
@click.option("--force", is_flag=True, help="Replace an existing non-empty folder.")
def data_digits(out_dir: Path, seed: int, force: bool) -> None:
    """Write scikit-learn's handwritten digits (1,797 real 8x8 scans) as an image folder OUT_DIR/{train,val}/<class>/."""
    from edgeres.data import write_digits

    ds = write_digits(out_dir, seed=seed, force=force)
    click.echo(f"wrote {len(ds.train.samples)} train and {len(ds.val.samples)} val images of "
               f"{len(ds.classes)} classes to {out_dir}")
# --- end data commands ---


def main() -> None:
    """Console-script entry point."""
    cli(obj={})


if __name__ == "__main__":
    main()
