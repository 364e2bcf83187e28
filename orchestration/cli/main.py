"""The ``aullm`` command: assembles the command groups and turns known errors into one line."""

from __future__ import annotations

import shutil
import sys
from typing import Annotated, Any

import click
import typer
import typer.rich_utils
from pydantic import ValidationError
from typer.core import TyperGroup

from aullm_core.errors import AullmError, one_line
from orchestration.cli import data, demo, export, report, slurm, sweep, train, ui


class _AullmGroup(TyperGroup):
    """Top-level group: expected errors become ``error: <one line>`` and exit code 2 (an ``OSError`` too:
    a read-only or full folder, a file it cannot read, is named with what to do, not a traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (AullmError, ValidationError, OSError, ValueError, KeyError) as err:
            if ctx.meta.get("aullm.debug"):
                raise
            click.echo(f"error: {one_line(err, limit=2000)}", err=True)
            ctx.exit(2)


#: --help piped to a file or a pager gets Rich's 80 columns, which cut long option names: keep at
#: least 120 (a terminal's own width when wider; TERMINAL_WIDTH, typer's setting, still wins).
if typer.rich_utils.MAX_WIDTH is None:
    typer.rich_utils.MAX_WIDTH = max(120, shutil.get_terminal_size((120, 24)).columns)

app = typer.Typer(
    cls=_AullmGroup,
    help="AU-LLM experiments: datasets to HDF5 caches, fold training, sweeps, reports, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    ctx.meta["aullm.debug"] = debug


for _command in (data, sweep, slurm, report, export, ui, demo, train):
    _command.register(app)


def main() -> None:
    sys.exit(app())
