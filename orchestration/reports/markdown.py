"""The report's markdown: what a reviewer reads first (objective, interval, baselines, the paired test
against the paper's values), then the plots, the other protocols and the nested estimate."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from aullm_core.train.result import FoldResult
from aullm_core.train.uncertainty import Interval, PairedTest, au_support, per_au_intervals
from orchestration.results import tables

__all__ = ["F1_NOTE", "ReportContent", "best_au_table", "board_markdown", "protocols_markdown", "render_markdown"]


class ReportContent(Protocol):
    """What the markdown reads of a report (``reports.report.Report``)."""

    sweep: Any
    leaderboard: pd.DataFrame
    best_fp: str | None
    best_au: pd.DataFrame
    cross: pd.DataFrame
    nested: Any
    runs: dict[str, str]
    experiment_id: str | None
    baselines: dict[str, Interval]
    versus_paper: PairedTest | None
    paper_number: int | None


F1_NOTE = ("F1+ = an AU's positive-class F1 (sklearn's `f1_score`: 2TP / (2TP + FP + FN) over its test clips), "
           "averaged over AUs; F1m = the mean of its positive- and negative-class F1. Intervals are 95% percentile "
           "bootstrap intervals over subjects (2000 resamples of the LOSO folds, each fold kept whole). "
           "`#n` is the Optuna trial number, the same in MLflow's run names and optuna-dashboard.")

_IMAGES = (("per_au_f1.png", "Per-AU F1 of the best configurations, with the label-free baselines"),
           ("fold_au_heatmap.png", "Per-fold per-AU F1 of the best configuration"),
           ("fold_scores.png", "Per-subject fold scores of the best configurations"),
           ("pruning_timeline.png", "Folds run per configuration over time"),
           ("optimization_history.png", "Optimisation history"),
           ("param_importance.png", "Parameter importance"),
           ("parallel_coordinates.png", "Parallel coordinates of the complete configurations"))


def _leading(board: pd.DataFrame) -> list[str]:
    """The columns a reader needs first: rank, trial, label, status, folds, objective with its interval."""
    return [c for c in ("rank", "number", "label", "config_fp", "status", "folds", "objective_ci") if c in board.columns]


def board_markdown(board: pd.DataFrame, baselines: dict[str, Interval]) -> str:
    """The leaderboard as a reviewer reads it: objective with its interval and the searched values first
    (narrow enough for MLflow's viewer), the label-free baselines as the last rows."""
    view = tables.compact(board)
    params = [c for c in view.columns if "." in str(c) and not str(c).startswith(("cross_", "param."))]
    view = view[[*_leading(view), *params]].copy()
    _trial_numbers(view)
    if "selection_biased" in board.columns and len(view) and "objective_ci" in view.columns:
        view.loc[board["selection_biased"].to_numpy(dtype=bool), "objective_ci"] += " *"
    for name, interval in baselines.items():
        view.loc[len(view)] = {c: "" for c in view.columns} | {"config_fp": f"baseline: {name}", "objective_ci": str(interval)}
    return tables.to_markdown(view.fillna("-"))


def protocols_markdown(board: pd.DataFrame) -> str:
    """The pooled protocol variants of each configuration, for comparison with published numbers."""
    view = tables.compact(board)
    variants = [c for c in view.columns if any(str(c).startswith(f"{m}_pooled_") for m, _ in tables.VARIANTS)]
    keep = [c for c in ("rank", "number") if c in view.columns]
    view = view[[*keep, *variants]].copy()
    _trial_numbers(view)
    return tables.to_markdown(view)


def _trial_numbers(view: pd.DataFrame) -> None:
    """The trial number column as '#3' (the '#' of every view), in place."""
    if "number" in view.columns:
        view["number"] = ["-" if pd.isna(n) else f"#{int(n)}" for n in view["number"]]


def _versus_paper(report: ReportContent) -> list[str]:
    test = report.versus_paper
    if test is None:
        return []
    d = test.difference
    verdict = ("no evidence of a difference" if math.isnan(test.p_value) or test.p_value >= 0.05
               else ("better" if d.value > 0 else "worse") + " at the 5% level")
    return ["## The best configuration against the paper's values", "",
            (f"Best (#{report.leaderboard.loc[0, 'number']}) minus paper-defaults (#{report.paper_number}) on the "
             f"{test.n_subjects} subjects both ran: objective difference **{d.value:+.3f}** "
             f"(95% CI [{d.low:+.3f}, {d.high:+.3f}], paired bootstrap over subjects); fold scores higher on "
             f"{test.wins}, lower on {test.losses} subjects; {test.test}: p = {test.p_value:.3g} ({verdict}). "
             "The best was selected on these folds, so the difference is optimistic."), ""]


def render_markdown(report: ReportContent, images: list[Path]) -> str:
    """``report.md``: every table and plot of the report, no machine path."""
    s = report.sweep.settings
    board = report.leaderboard
    lines = [f"# Sweep `{s.name}`", "",
             (f"Generated {time.strftime('%Y-%m-%d %H:%M')}. Space `{Path(s.space).name}`, cache "
              f"`{Path(s.cache).name}`, objective `{s.objective}`, pruner `{s.pruner}`, {len(board)} "
              f"configurations; cost: {tables.fold_cost(board)}."), "", F1_NOTE, "",
             "## Leaderboard", "",
             f"Ranked by the objective `{s.objective}`; complete configurations first.", "",
             board_markdown(board, report.baselines), tables.BIAS_NOTE, "",
             ("The baselines look at no frame: all-positive calls every clip positive, prior rate calls a clip "
              "positive with its training subjects' positive rate; both are scored as the objective scores a "
              "configuration."), ""]
    lines += _run_links(report)
    lines += _versus_paper(report)
    if report.best_fp:
        lines += [f"## Best configuration `{report.best_fp[:8]}` per AU (selection-biased, see above)", "",
                  tables.to_markdown(report.best_au, index=True), "",
                  "Every protocol variant per AU: `best_per_au.csv`.", ""]
    by_name = {p.name: p for p in images}
    embedded = set()
    for name, caption in _IMAGES:
        if name in by_name:
            lines += [f"![{caption}]({name})", ""]
            embedded.add(name)
    lines += [f"![{p.stem.replace('_', ' ')}]({p.name})\n" for p in images if p.name not in embedded]
    lines += ["## Other protocols", "", protocols_markdown(board), tables.PAPER_NOTE, "",
              "Fold-mean aggregates and every cross-domain variant: `leaderboard.csv`.", ""]
    if len(report.cross):
        lines += ["## Cross-domain", "",
                  ("Trained on all of one dataset, tested on the other over the shared AUs. Not used to "
                  "choose the configuration, so not selection-biased; `test-tuned` as above."), "",
                  tables.to_markdown(report.cross)]
    lines += ["## Nested LOSO estimate", ""]
    if report.nested is None:
        lines += [("Not computed. `aullm report --sweep NAME --nested [--outer-folds K] [--budget N]` "
                  "estimates the search procedure itself without selection bias."), ""]
    else:
        n = report.nested
        biased = board.loc[0, "objective"] if len(board) else math.nan
        scope = ("every subject" if len(n.outer) == n.n_subjects
                 else f"{len(n.outer)} of {n.n_subjects} subjects ({', '.join(o.subject for o in n.outer)}): "
                 "the estimate covers only these")
        lines += [(f"Budget {n.plan.budget} configurations per inner search; outer folds: {scope}. "
                   f"Objective `{n.plan.objective}`: nested estimate **{n.estimate():.3f}** vs the sweep's "
                   f"selection-biased best **{biased:.3f}**."), "",
                  tables.to_markdown(n.summary()), tables.to_markdown(n.table())]
    return "\n".join(lines) + "\n"


def best_au_table(objective: Any, results: list[FoldResult]) -> pd.DataFrame:
    """Per AU: F1 under the objective's protocol with its interval, and the AU's positive test clips."""
    intervals = per_au_intervals(objective, results)
    support = au_support(results)
    frame = pd.DataFrame({"F1 [95% CI]": {f"AU{au}": str(i) for au, i in intervals.items()},
                          "positives": {f"AU{au}": support[au] for au in intervals}})
    frame.index.name = "AU"
    return frame


def _run_links(report: ReportContent) -> list[str]:
    """The top configurations' MLflow runs: links that open in the MLflow UI (``aullm ui``) and
    in the run's own artifact view, where this file is logged."""
    if not report.runs or not len(report.leaderboard):
        return []
    lines = ["MLflow runs of the top configurations (open `aullm ui --workdir WORKDIR`, then the link):", ""]
    board = report.leaderboard.head(10)
    numbers = board["number"] if "number" in board.columns else pd.Series([None] * len(board), index=board.index)
    for rank, (fp, number) in enumerate(zip(board["config_fp"].astype(str), numbers), start=1):
        run_id = report.runs.get(fp)
        trial = "" if number is None or pd.isna(number) else f", trial #{int(number)}"
        if run_id:  # 'rank 1:', not '1.': a list item starting with a number would render as a list of its own
            lines.append(f"- rank {rank}{trial} `{fp[:8]}`: "
                         f"[run {run_id[:8]}](#/experiments/{report.experiment_id}/runs/{run_id})")
    return [*lines, ""]
