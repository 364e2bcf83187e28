"""``aullm report``: a sweep's leaderboard in the terminal, plus markdown, CSV and PNG files.

Example:
    aullm report --sweep quick                                # ./aullm_runs/sweeps/quick/report/
    aullm report --sweep quick --workdir demo_output --out reports/quick
    aullm report --sweep quick --nested --outer-folds 4 --budget 6   # unbiased estimate of the search
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from orchestration.cli.options import DeviceOpt, SweepNameOpt, TrackingUriOpt, WorkdirOpt

__all__ = ["leaderboard_table", "register"]

_SHOWN = ("paper_pooled_f1_macro", "fixed_pooled_f1_pos", "inner_pooled_f1_pos", "inner_pooled_f1_macro")


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}"


def leaderboard_table(board: pd.DataFrame, objective: str, *, top: int = 10) -> Table:
    """The leaderboard's main columns as a rich table (the top ``top`` rows)."""
    from orchestration.reports.tables import display_name

    fixed = {"rank", "config_fp", "status", "folds_done", "n_folds_total", "objective", "selection_biased"}
    params = [c for c in board.columns if "." in c and c not in fixed][:4]
    metrics = [c for c in _SHOWN if c in board.columns and board[c].notna().any()]
    table = Table(title=f"Leaderboard (objective {objective}; * = selection-biased)", title_justify="left")
    for name in ("#", "config", "status", "folds", "objective"):
        table.add_column(name, justify="right" if name in ("#", "folds", "objective") else "left")
    for col in metrics:
        table.add_column(display_name(col).replace(" (test-tuned)", "\n(test-tuned)"), justify="right")
    for col in params:
        table.add_column(col.split(".")[-1], justify="right")
    for _, row in board.head(top).iterrows():
        star = "*" if row.get("selection_biased") else ""
        table.add_row(str(row["rank"]), str(row["config_fp"])[:8], str(row["status"]),
                      f"{row['folds_done']}/{row['n_folds_total']}", _num(row["objective"]) + star,
                      *(_num(row[c]) for c in metrics), *(str(row[c]) for c in params))
    return table


def report(
    sweep: SweepNameOpt,
    workdir: WorkdirOpt = Path("aullm_runs"),
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: <workdir>/sweeps/<name>/report).")
    ] = None,
    tracking_uri: TrackingUriOpt = None,
    nested: Annotated[
        bool, typer.Option("--nested", help="Also estimate the search procedure with nested LOSO (trains models).")
    ] = False,
    outer_folds: Annotated[
        int | None,
        typer.Option("--outer-folds", min=1, help="Nested: outer subjects to evaluate (default: all; fewer = faster)."),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option("--budget", min=1, help="Nested: configurations per inner search (default: the sweep's --trials)."),
    ] = None,
    device: DeviceOpt = "cpu",
    top: Annotated[int, typer.Option("--top", min=1, help="Rows of the leaderboard shown in the terminal.")] = 10,
) -> None:
    """Leaderboard with every protocol variant side by side (the paper's is test-tuned), the best
    configuration per AU, cross-domain results, plots and, with --nested, an unbiased estimate."""
    from orchestration.reports.nested import NestedPlan
    from orchestration.reports.report import build_report, load_sweep

    if not nested and (outer_folds is not None or budget is not None):
        raise typer.BadParameter("--outer-folds and --budget apply to --nested; add --nested")
    plan = None
    if nested:
        plan = NestedPlan.from_settings(load_sweep(workdir, sweep).settings, budget=budget, outer_folds=outer_folds)
    console = Console()
    result = build_report(workdir, sweep, out, tracking_uri=tracking_uri, nested_plan=plan, device=device)
    board = result.leaderboard
    if board.empty:
        console.print(f"sweep {sweep}: no finished fold yet")
    else:
        console.print(leaderboard_table(board, result.sweep.settings.objective, top=top))
        console.print(f"{result.folds_trained} of {result.folds_possible} LOSO folds trained; "
                      f"{int((board['status'] != 'complete').sum())} configurations stopped early.")
    from orchestration.reports.tables import BIAS_NOTE, PAPER_NOTE

    console.print(f"[dim]{PAPER_NOTE}\n{BIAS_NOTE}[/dim]")
    if result.nested is not None:
        n = result.nested
        biased = board.loc[0, "objective"] if len(board) else float("nan")
        console.print(f"Nested LOSO ({len(n.outer)} outer folds, budget {n.plan.budget}): "
                      f"{n.plan.objective} = [bold]{n.estimate():.3f}[/bold] "
                      f"(the sweep's selection-biased best: {biased:.3f})")
    console.print(f"Report: {result.markdown}")
    for path in result.files:
        if path != result.markdown:
            console.print(f"  {path}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
