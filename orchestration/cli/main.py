"""The ``aullm`` command: assembles the command groups and turns known errors into one line."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import click
import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from aullm_core.errors import AullmError


def _one_line(err: BaseException) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        return f"invalid configuration: {where}: {first['msg']}"
    if isinstance(err, FileNotFoundError) and err.filename:
        return f"{err.filename}: no such file or directory"
    return " ".join(str(err).split()) or type(err).__name__


class _AullmGroup(TyperGroup):
    """Top-level group: expected errors become ``error: <one line>`` and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (AullmError, ValidationError, FileNotFoundError, ValueError, KeyError) as err:
            if ctx.meta.get("aullm.debug"):
                raise
            click.echo(f"error: {_one_line(err)}", err=True)
            ctx.exit(2)


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


def _register() -> None:
    from orchestration.cli import commands

    for register in commands.REGISTRY:
        register(app)


_register()


def main() -> None:
    sys.exit(app())
