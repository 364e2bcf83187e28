"""Leaderboard and per-AU tables of a sweep, with every protocol variant side by side.

Column names are machine-friendly (``paper_pooled_f1_macro``) in CSV; ``display_name`` gives the
human label used in markdown and the terminal, where the paper protocol is marked test-tuned (its
thresholds are chosen on the pooled test predictions) and the chosen configuration's LOSO numbers
are marked selection-biased (it was chosen and is reported on the same folds).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from aullm_core.config import dotted
from aullm_core.data.splits import CROSS, LOSO
from aullm_core.train.metrics import Score, score_all
from aullm_core.train.objective import DEFAULT_OBJECTIVE, Objective
from aullm_core.train.result import FoldResult
from aullm_core.train.uncertainty import objective_interval
from orchestration.search.progress import Status, TrialRow

__all__ = [
    "BIAS_NOTE",
    "DEFAULT_OBJECTIVE",
    "METRICS",
    "PAPER_NOTE",
    "VARIANTS",
    "FoldCost",
    "ResultStore",
    "TrialRow",
    "compact",
    "cross_table",
    "display_name",
    "fold_cost",
    "leaderboard",
    "per_au_table",
    "to_markdown",
    "variant_scores",
    "write_table",
]

#: Protocol variants in display order: (threshold mode, aggregation over folds).
VARIANTS: tuple[tuple[str, str], ...] = (
    ("paper", "pooled"), ("paper", "fold_mean"),
    ("fixed", "pooled"), ("fixed", "fold_mean"),
    ("inner", "pooled"), ("inner", "fold_mean"),
)
METRICS = ("f1_pos", "f1_macro")

PAPER_NOTE = ("test-tuned = the paper's protocol: thresholds chosen per AU on the pooled TEST predictions (leaky): "
              "comparable with published numbers, not an estimate of performance on new subjects.")
BIAS_NOTE = ("* selection-biased: the chosen configuration's LOSO score is the best of several "
             "configurations scored on the same folds, so it is optimistic; `aullm report --nested` "
             "estimates the whole search procedure without this bias.")


class ResultStore(Protocol):
    """What the tables read from a sweep's fold store (orchestration.folds.store.FoldStore)."""

    def configs(self) -> dict[str, dict]: ...

    def results(self, config_fp: str, protocol: str) -> list[FoldResult]: ...


def variant_scores(results: Sequence[FoldResult]) -> dict[tuple[str, str], Score]:
    """Every protocol variant that applies to these fold results, keyed (mode, aggregate)."""
    if not results:
        return {}
    return {(s.mode, s.aggregate): s for s in score_all(list(results))}


def _varying(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Dotted configuration keys whose values differ between configurations."""
    flats = [dotted(c, lists_as_json=True) for c in configs.values()]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]


def leaderboard(store: ResultStore, *, objective: Objective | str = DEFAULT_OBJECTIVE, n_folds_total: int | None = None,
                states: Mapping[str, str] | None = None, trials: Mapping[str, TrialRow] | None = None,
                protocol: str = LOSO) -> pd.DataFrame:
    """One row per configuration, best first: the one leaderboard of the sweep, the report and the CLI.

    Complete configurations (all ``n_folds_total`` folds) rank above incomplete ones (pruned,
    failed or unfinished: their partial scores cover fewer subjects). ``states`` gives the sweep's
    state of each configuration ('pruned', 'failed', ...) for the incomplete ones; ``trials`` (from
    the Optuna study) restricts the rows to the study's configurations and adds their trial number,
    label, partial fold mean and searched values (``param.<key>``). Columns: rank, config_fp,
    status, folds_done, n_folds_total, objective (computed from the stored folds, so every view
    gives the same number) with ``objective_low``/``objective_high`` (its 95% bootstrap interval over
    subjects), ``<mode>_<aggregate>_<metric>`` for every variant,
    ``cross_<source>_to_<target>_<mode>_f1_pos`` where cross-domain results exist,
    ``selection_biased`` (True on the top row) and the configuration keys that vary.
    """
    objective = Objective.coerce(objective)
    configs = store.configs()
    if trials is not None:
        configs = {fp: configs.get(fp, {}) for fp in trials}
        states = {fp: t.status for fp, t in trials.items()}
    per_config = {fp: store.results(fp, protocol) for fp in configs}
    total = n_folds_total or max((len(r) for r in per_config.values()), default=0)
    rows = []
    for fp, results in per_config.items():
        rows.append(_row(store, fp, results, objective, total, (states or {}).get(fp)))
        if trials is not None:
            trial = trials[fp]
            rows[-1].update({"number": trial.number, "label": trial.label, "partial_mean": trial.partial_mean,
                             **{f"param.{k}": v for k, v in trial.overrides.items()}})
    columns = ["config_fp", "status", "folds_done", "n_folds_total", "objective", "objective_low", "objective_high"]
    frame = pd.DataFrame(rows, columns=columns if not rows else None)
    if frame.empty:
        return pd.DataFrame(columns=["rank", *columns, "selection_biased"])
    frame["_complete"] = frame["status"] == Status.COMPLETE
    order = ["_complete", "objective", "folds_done"] + (["number"] if trials is not None else [])
    frame = frame.sort_values(order, ascending=[False, False, False] + [True] * (len(order) - 3),
                              na_position="last", kind="stable")
    frame = frame.drop(columns="_complete").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    frame["selection_biased"] = frame["rank"] == 1
    flats = {fp: dotted(configs[fp], lists_as_json=True) for fp in frame["config_fp"]}
    for key in _varying(configs):
        frame[key] = [flats[fp].get(key) for fp in frame["config_fp"]]
    return frame


@dataclass(frozen=True)
class FoldCost:
    """What a sweep's configurations cost in LOSO folds, beside what an unpruned sweep of the same
    configurations would have cost (every configuration on every fold)."""

    run: int
    unpruned: int

    @property
    def fraction(self) -> float:
        return self.run / self.unpruned if self.unpruned else math.nan

    def __str__(self) -> str:
        return f"{self.run} of the {self.unpruned} folds an unpruned sweep would train ({self.fraction:.2f})"


def fold_cost(board: pd.DataFrame) -> FoldCost:
    """The leaderboard's fold cost (its rows' ``folds_done`` against ``n_folds_total`` each)."""
    if board.empty:
        return FoldCost(0, 0)
    return FoldCost(int(board["folds_done"].sum()), int(board["n_folds_total"].sum()))


def _row(store: ResultStore, fp: str, results: Sequence[FoldResult], objective: Objective, total: int,
         known: str | None) -> dict[str, Any]:
    scores = variant_scores(results)
    done = len(results)
    status = Status.COMPLETE if done >= total > 0 else (known if known and known != Status.COMPLETE else Status.INCOMPLETE)
    interval = objective_interval(objective, results) if results else None
    row: dict[str, Any] = {"config_fp": fp, "status": status, "folds_done": done, "n_folds_total": total,
                           "objective": objective.of_scores(scores),
                           "objective_low": interval.low if interval else math.nan,
                           "objective_high": interval.high if interval else math.nan}
    for mode, aggregate in VARIANTS:
        score = scores.get((mode, aggregate))
        row[f"{mode}_{aggregate}_f1_pos"] = score.mean_f1_pos if score else math.nan
        row[f"{mode}_{aggregate}_f1_macro"] = score.mean_f1_macro if score else math.nan
    for result in store.results(fp, CROSS):
        direction = result.fold_id.replace("->", "_to_")
        for (mode, aggregate), score in variant_scores([result]).items():
            if aggregate == "pooled":
                row[f"cross_{direction}_{mode}_f1_pos"] = score.mean_f1_pos
    return row


def per_au_table(results: Sequence[FoldResult]) -> pd.DataFrame:
    """Per-AU F1 of one configuration: rows AU, columns ``<mode>_<aggregate>_<metric>``, plus a mean row."""
    scores = variant_scores(results)
    if not scores:
        return pd.DataFrame()
    aus = next(iter(scores.values())).aus
    table: dict[str, dict[str, float]] = {}
    for mode, aggregate in VARIANTS:
        score = scores.get((mode, aggregate))
        if score is None:
            continue
        for metric in METRICS:
            values = score.f1_pos if metric == "f1_pos" else score.f1_macro
            col = {f"AU{au}": float(values[au]) for au in aus}
            col["mean"] = float(score.mean_f1_pos if metric == "f1_pos" else score.mean_f1_macro)
            table[f"{mode}_{aggregate}_{metric}"] = col
    frame = pd.DataFrame(table)
    frame.index.name = "AU"
    return frame


def cross_table(store: ResultStore, config_fps: Sequence[str]) -> pd.DataFrame:
    """Cross-domain results: one row per (configuration, direction), mean F1 under each threshold mode."""
    rows = []
    for fp in config_fps:
        for result in store.results(fp, CROSS):
            row: dict[str, Any] = {"config_fp": fp, "direction": result.fold_id,
                                   "aus": " ".join(f"AU{a}" for a in result.aus)}
            for (mode, aggregate), score in variant_scores([result]).items():
                if aggregate == "pooled":
                    row[f"{mode}_f1_pos"] = score.mean_f1_pos
                    row[f"{mode}_f1_macro"] = score.mean_f1_macro
            rows.append(row)
    return pd.DataFrame(rows)


_MODE_LABEL = {"paper": "test-tuned", "fixed": "fixed 0.5", "inner": "inner"}
_AGG_LABEL = {"pooled": "pooled", "fold_mean": "fold-mean"}
_METRIC_LABEL = {"f1_pos": "F1+", "f1_macro": "F1-macro"}


def display_name(column: str) -> str:
    """Human label of a table column, e.g. 'paper_pooled_f1_macro' -> 'test-tuned pooled F1-macro'."""
    for mode, aggregate in VARIANTS:
        for metric in METRICS:
            if column == f"{mode}_{aggregate}_{metric}":
                return f"{_MODE_LABEL[mode]} {_AGG_LABEL[aggregate]} {_METRIC_LABEL[metric]}"
    if column.startswith("cross_"):
        body = column.removeprefix("cross_")
        for mode, mode_label in _MODE_LABEL.items():
            for metric in METRICS:
                suffix = f"_{mode}_{metric}"
                if body.endswith(suffix):
                    direction = body.removesuffix(suffix).replace("_to_", "->")
                    return f"cross {direction} {mode_label} {_METRIC_LABEL[metric]}"
    for mode, mode_label in _MODE_LABEL.items():
        for metric in METRICS:
            if column == f"{mode}_{metric}":
                return f"{mode_label} {_METRIC_LABEL[metric]}"
    return {"config_fp": "config", "folds_done": "folds done", "n_folds_total": "folds total",
            "selection_biased": "selection-biased", "objective_ci": "objective [95% CI]", "number": "trial"}.get(column, column)


def compact(frame: pd.DataFrame) -> pd.DataFrame:
    """A narrower view for markdown and the terminal: pooled aggregates only (fold-mean stays in
    the CSV), cross-domain with leak-free thresholds only, folds as 'done/total'."""
    keep = [c for c in frame.columns if not (c.endswith(("_fold_mean_f1_pos", "_fold_mean_f1_macro")))]
    keep = [c for c in keep if not (c.startswith("cross_") and "_paper_" in c)]
    out = frame[keep].copy()
    if {"folds_done", "n_folds_total"} <= set(out.columns):
        out.insert(list(out.columns).index("folds_done"), "folds",
                   [f"{d}/{t}" for d, t in zip(out["folds_done"], out["n_folds_total"])])
        out = out.drop(columns=["folds_done", "n_folds_total"])
    if {"objective_low", "objective_high"} <= set(out.columns):
        out["objective"] = [_with_interval(v, lo, hi) for v, lo, hi in
                            zip(out["objective"], out["objective_low"], out["objective_high"])]
        out = out.drop(columns=["objective_low", "objective_high"]).rename(columns={"objective": "objective_ci"})
    if "config_fp" in out.columns:
        out["config_fp"] = out["config_fp"].astype(str).str[:8]
    return out


def _with_interval(value: float, low: float, high: float) -> str:
    """'0.452 [0.391, 0.507]'; the value alone without an interval, '-' without a value."""
    if value is None or pd.isna(value):
        return "-"
    if pd.isna(low) or pd.isna(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _cell(value: Any, fmt: str, column: str = "") -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return format(value, ".4g" if "." in column else fmt)  # configuration keys: 3e-05, not 0.000
    if value is None:
        return "-"
    return str(value).replace("|", "\\|")


def to_markdown(frame: pd.DataFrame, *, floatfmt: str = ".3f", index: bool = False,
                labels: bool = True) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    data = frame.reset_index() if index else frame
    headers = [display_name(str(c)) if labels else str(c) for c in data.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    columns = [str(c) for c in data.columns]
    for row in data.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floatfmt, c) for v, c in zip(row, columns)) + " |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_table(frame: pd.DataFrame, stem: Path, *, index: bool = False, notes: Sequence[str] = (),
                markdown: pd.DataFrame | None = None) -> list[Path]:
    """Write ``<stem>.csv`` (every column) and ``<stem>.md`` (``markdown``, default the same frame)
    atomically; ``notes`` are added under the markdown table."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    _atomic_write(csv_path, frame.to_csv(index=index, float_format="%.6f"))
    body = to_markdown(frame if markdown is None else markdown, index=index)
    if notes:
        body += "\n" + "\n".join(f"{n}  " for n in notes) + "\n"
    _atomic_write(md_path, body)
    return [csv_path, md_path]
