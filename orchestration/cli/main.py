"""The ``aullm`` command: assembles the command groups and turns known errors into one line."""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any

import click
import typer
from pydantic import ValidationError
from typer.core import TyperGroup
from typer.exceptions import TyperException

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
            line = one_line(err, limit=2000)
            option = _option_of(self, ctx, err) if isinstance(err, ValidationError) else None
            if option is not None:  # a setting given on the command line: name it as the user typed it
                line = f"{option}: {line.split(': ', 2)[-1]}"
            click.echo(f"error: {line}", err=True)
            ctx.exit(2)
        except TyperException as err:  # typer's own click: a usage error such as '--resume true'
            extra = _FLAG_VALUE.search(str(err)) if type(err).__name__ == "UsageError" else None
            if extra is None:
                raise
            raise type(err)(f"{err}: options such as --resume are flags and take no value (write the flag alone, "
                            f"or leave it out), not {extra.group(1)!r}", getattr(err, "ctx", None)) from None


_FLAG_VALUE = re.compile(r"unexpected extra argument(?:s|\(s\))? \((true|false|yes|no|on|off|1|0)\b", re.IGNORECASE)


def _option_of(group: TyperGroup, ctx: click.Context, err: ValidationError) -> str | None:
    """The command-line option of the invoked command that sets the first invalid field, if there is one."""
    field = str(err.errors()[0]["loc"][0]) if err.errors() and err.errors()[0]["loc"] else ""
    command = group.get_command(ctx, ctx.invoked_subcommand or "")
    for param in getattr(command, "params", []):
        opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]  # options, not arguments
        if opts and (param.name == field or f"--{field.replace('_', '-')}" in opts):
            return max(opts, key=len)
    return None


#: --help is click's plain layout: it wraps to the terminal's width (or COLUMNS), flags show no value.
app = typer.Typer(
    cls=_AullmGroup,
    help="AU-LLM experiments: datasets to HDF5 caches, fold training, sweeps, reports, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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
