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
from rich import box
from rich.console import Console
from rich.table import Table

from orchestration.cli.options import DeviceOpt, SweepNameOpt, TrackingUriOpt, WorkdirOpt
from orchestration.search.progress import Status

__all__ = ["LEGEND", "leaderboard_table", "register"]

#: Terminal columns: (column, two-line header); the full set is in the CSV and markdown files.
_SHOWN = (("paper_pooled_f1_macro", "test-tuned†\nF1m"), ("fixed_pooled_f1_pos", "fixed\nF1+"),
          ("inner_pooled_f1_pos", "inner\nF1+"), ("inner_pooled_f1_macro", "inner\nF1m"))
LEGEND = ("F1+ = positive-class F1, F1m = macro F1 (the paper's), pooled over folds; 95% CI: bootstrap over "
          "subjects; trial = Optuna trial number (as in MLflow); † test-tuned (leaky); * selection-biased.")
_BASE_WIDTH = 94  # the fixed and metric columns with their padding


def _num(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def leaderboard_table(board: pd.DataFrame, objective: str, *, top: int = 10, width: int = 80) -> Table:
    """The leaderboard's main columns as a rich table (the top ``top`` rows); the configuration keys
    that vary between configurations are added as far as ``width`` allows."""
    fixed = {"rank", "number", "config_fp", "status", "folds_done", "n_folds_total", "objective", "objective_low",
             "objective_high", "selection_biased"}
    metrics = [(c, h) for c, h in _SHOWN if c in board.columns and board[c].notna().any()]
    rows = board.head(top)
    params, used = [], _BASE_WIDTH
    for col in (c for c in board.columns if "." in c and c not in fixed and not c.startswith("param.")):
        cells = [_num(v, ".3g") for v in rows[col]]
        need = max(len(col.split(".")[-1]), *(len(c) for c in cells)) + 2
        if used + need > width:
            break
        params.append(col)
        used += need
    table = Table(title=f"Leaderboard, objective {objective}", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for name, justify in (("rank", "right"), ("trial", "right"), ("config", "left"), ("status", "left"),
                          ("folds", "right"), ("objective", "right"), ("95% CI", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    for _, header in metrics:
        table.add_column(header, justify="right", no_wrap=True)
    for col in params:
        table.add_column(col.split(".")[-1], justify="right", no_wrap=True)
    for _, row in rows.iterrows():
        star = "*" if row.get("selection_biased") else " "
        number = row.get("number")
        low, high = row.get("objective_low", math.nan), row.get("objective_high", math.nan)
        interval = "-" if pd.isna(low) or pd.isna(high) else f"[{low:.3f}, {high:.3f}]"
        table.add_row(str(row["rank"]), "-" if number is None or pd.isna(number) else f"#{int(number)}",
                      str(row["config_fp"])[:8], str(row["status"]),
                      f"{row['folds_done']}/{row['n_folds_total']}", _num(row["objective"]) + star, interval,
                      *(_num(row[c]) for c, _ in metrics), *(_num(row[c], ".3g") for c in params))
    return table


def report(
    ctx: typer.Context,
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
        typer.Option("--budget", min=1, help="Nested: configurations per inner search (default: the sweep's --configs)."),
    ] = None,
    device: DeviceOpt = "cpu",
    top: Annotated[int, typer.Option("--top", min=1, help="Rows of the leaderboard shown in the terminal.")] = 10,
) -> None:
    """Leaderboard with every protocol variant side by side (the paper's is test-tuned), the best
    configuration per AU, cross-domain results, plots and, with --nested, an unbiased estimate."""
    from orchestration.cli.wiring import fold_code
    from orchestration.reports.nested import NestedPlan
    from orchestration.reports.report import build_report, load_sweep

    if not nested and (outer_folds is not None or budget is not None):
        raise typer.BadParameter("--outer-folds and --budget apply to --nested; add --nested")
    plan = None
    if nested:
        plan = NestedPlan.from_settings(load_sweep(workdir, sweep).settings, budget=budget, outer_folds=outer_folds)
    console = Console()
    result = build_report(workdir, sweep, out, tracking_uri=tracking_uri, nested_plan=plan, device=device,
                          code=fold_code(ctx))
    board = result.leaderboard
    if board.empty:
        console.print(f"sweep {sweep}: no finished fold yet")
    else:
        console.print(leaderboard_table(board, result.sweep.settings.objective, top=top, width=console.width))
        if result.baselines:
            console.print("Baselines that see no frame, scored as the objective: "
                          + ", ".join(f"{name} {interval}" for name, interval in result.baselines.items()))
        console.print(LEGEND)
        from orchestration.results.tables import fold_cost

        console.print(f"Cost: {fold_cost(board)}; "
                      f"{int((board['status'] != Status.COMPLETE).sum())} configurations stopped early.")
    from orchestration.results.tables import BIAS_NOTE, PAPER_NOTE

    console.print(f"[dim]{PAPER_NOTE}\n{BIAS_NOTE.removeprefix('* ')}[/dim]")
    if result.nested is not None:
        n = result.nested
        biased = board.loc[0, "objective"] if len(board) else float("nan")
        folds = f"{len(n.outer)} outer fold{'s' if len(n.outer) != 1 else ''}"
        console.print(f"Nested LOSO ({folds} of {n.n_subjects} subjects, budget {n.plan.budget}): "
                      f"{n.plan.objective} = [bold]{n.estimate():.3f}[/bold] "
                      f"(the sweep's selection-biased best: {biased:.3f})")
    console.print(f"Report: {result.markdown}")
    for path in result.files:
        if path != result.markdown:
            console.print(f"  {path}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
