"""A sweep's report: leaderboard, best configuration per AU, cross-domain, plots, nested estimate.

Reads the sweep folder (``<workdir>/sweeps/<name>/``: ``sweep.json`` settings and the fold store
under ``folds/``) and, when there is one, its MLflow store (pruned flags and fold timings for the
pruning timeline). Writes CSV + markdown tables, PNG plots and ``report.md`` into the output folder.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aullm_core.atomic import atomic_write_text
from aullm_core.data.splits import LOSO
from aullm_core.train.baselines import baseline_scores
from aullm_core.train.metrics import loso_baselines_per_au, score_results
from aullm_core.train.objective import Objective
from aullm_core.train.result import FoldResult
from aullm_core.train.uncertainty import Interval, PairedTest, paired_comparison, per_au_intervals
from orchestration.folds.store import FoldStore
from orchestration.folds.trainable import AULLM_CODE, FoldCode
from orchestration.reports.markdown import best_au_table, render_markdown
from orchestration.results import plots, tables
from orchestration.search.progress import Status
from orchestration.sweep.folder import SweepFolder, load_study, load_sweep_settings
from orchestration.sweep.settings import SweepSettings, sweep_path

__all__ = ["Report", "SweepData", "build_report", "load_sweep", "sweep_leaderboard"]

log = logging.getLogger(__name__)

TOP = 5


@dataclass
class SweepData:
    """What a finished (or interrupted) sweep left on disk."""

    settings: SweepSettings
    sweep_dir: Path
    store: FoldStore

    @property
    def tracking_uri(self) -> str | None:
        return self.settings.resolved_tracking_uri


@dataclass
class Report:
    """The report's tables and the files written."""

    sweep: SweepData
    out_dir: Path
    leaderboard: pd.DataFrame
    best_fp: str | None
    best_per_au: pd.DataFrame
    cross: pd.DataFrame
    nested: Any = None  # NestedResult when --nested
    files: list[Path] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)  # config fingerprint -> MLflow run id
    experiment_id: str | None = None
    folds_trained: int = 0
    folds_possible: int = 0
    baselines: dict[str, Interval] = field(default_factory=dict)  # label-free predictors, scored as the objective
    best_au: pd.DataFrame = field(default_factory=pd.DataFrame)  # the best one's per-AU F1 with interval and support
    versus_paper: PairedTest | None = None  # the best against the paper's values, paired over subjects
    paper_number: int | None = None

    @property
    def markdown(self) -> Path:
        return self.out_dir / "report.md"


def load_sweep(workdir: Path, name: str) -> SweepData:
    """The sweep's settings and fold store; FileNotFoundError naming the folder when absent."""
    sweep_dir = sweep_path(workdir, name)
    settings_path = sweep_dir / "sweep.json"
    if not settings_path.is_file():
        known = sorted(p.name for p in sweep_path(workdir, "").glob("*") if p.is_dir())
        hint = (f" (sweeps here: {', '.join(known)})" if known else
                f" (no sweeps under {Path(workdir).resolve()}: pass the working folder the sweep ran in with --workdir,"
                " e.g. --workdir demo_output for the demo's)")
        raise FileNotFoundError(f"{settings_path}: no such sweep{hint}")
    settings = load_sweep_settings(workdir, name)
    return SweepData(settings=settings, sweep_dir=sweep_dir, store=SweepFolder(sweep_dir).store)


def _saved_leaderboard(sweep: SweepData) -> pd.DataFrame:
    """The leaderboard the sweep itself wrote (config_fp, status, n_folds_total, ...), if any."""
    saved = sweep.sweep_dir / "leaderboard.csv"
    if saved.is_file() and saved.stat().st_size > 1:
        frame = pd.read_csv(saved)
        if "config_fp" in frame.columns:
            frame["config_fp"] = frame["config_fp"].astype(str)
            return frame
    return pd.DataFrame()


def sweep_leaderboard(sweep: SweepData, *, tracking_uri: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The leaderboard from the fold store (every protocol variant), and the MLflow fold runs
    (None without a tracking store). Configuration states come from the sweep's own
    leaderboard.csv, else from the MLflow pruned flags."""
    tracker = _tracker(sweep, tracking_uri)
    config_runs = tracker.config_runs() if tracker is not None else pd.DataFrame()
    fold_runs = tracker.fold_runs() if tracker is not None else None
    saved = _saved_leaderboard(sweep)
    states: dict[str, str] = {}
    n_total = None
    if "status" in saved.columns:
        states = dict(zip(saved["config_fp"], saved["status"].astype(str)))
    elif "pruned" in config_runs.columns:
        states = {fp: Status.PRUNED for fp, flag in config_runs["pruned"].items() if flag}
    for frame in (saved, config_runs):
        if "n_folds_total" in frame.columns and frame["n_folds_total"].notna().any():
            n_total = int(frame["n_folds_total"].max())
            break
    board = tables.leaderboard(sweep.store, objective=sweep.settings.objective, n_folds_total=n_total,
                               states=states)
    for at, column in ((1, "number"), (2, "label")):  # trial number and label, as the sweep's leaderboard has them
        if column in saved.columns and len(board):
            board.insert(at, column, board["config_fp"].map(dict(zip(saved["config_fp"], saved[column]))))
    return board, fold_runs


def _tracker(sweep: SweepData, tracking_uri: str | None) -> Any | None:
    uri = tracking_uri or sweep.tracking_uri
    if not uri:
        return None
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    from orchestration.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(uri, sweep.settings.name)


def _numbers(board: pd.DataFrame) -> dict[str, int]:
    """Config fingerprint -> Optuna trial number (the '#' of every view), where the board has them."""
    if "number" not in board.columns:
        return {}
    return {str(fp): int(n) for fp, n in zip(board["config_fp"], board["number"]) if not pd.isna(n)}


def _best_mode(store: FoldStore, fp: str) -> str:
    results = store.results(fp, LOSO)
    return "inner" if results and all(r.inner_thresholds is not None for r in results) else "fixed"


def _plots(sweep: SweepData, board: pd.DataFrame, out_dir: Path, fold_runs: pd.DataFrame | None,
           floors: dict[str, float]) -> list[Path]:
    written: list[Path] = []
    ranked = [fp for fp in board["config_fp"]] if len(board) else []
    if not ranked:
        return written
    store = sweep.store
    mode = _best_mode(store, ranked[0])
    complete = [fp for fp, st in zip(board["config_fp"], board["status"]) if st == Status.COMPLETE] or ranked
    number_of = _numbers(board)
    rows = {}
    for fp in complete[:TOP]:
        results = store.results(fp, LOSO)
        if not results or (mode == "inner" and any(r.inner_thresholds is None for r in results)):
            continue
        score = score_results(results, mode=mode, aggregate="pooled")
        rows[plots.label(fp, number_of.get(fp))] = {f"AU{au}": score.f1_pos[au] for au in score.aus}
    if rows:
        first = store.results(complete[0], LOSO)
        baselines, spread = _per_au_references(first, mode)
        written.append(plots.per_au_bars(
            pd.DataFrame(rows).T, out_dir / "per_au_f1.png", baselines=baselines, spread=spread,
            title=f"Per-AU F1 of the best complete configurations (LOSO pooled, {mode} thresholds)"))
    best = store.results(ranked[0], LOSO)
    if best:
        matrix = {}
        for r in best:
            s = score_results([r], mode=mode, aggregate="pooled")
            matrix[r.fold_id] = {f"AU{au}": (s.f1_pos[au] if r.labels[:, k].any() else math.nan)
                                 for k, au in enumerate(s.aus)}
        written.append(plots.fold_au_heatmap(
            pd.DataFrame(matrix).T, out_dir / "fold_au_heatmap.png",
            title=f"Per-fold F1 of the best configuration {plots.label(ranked[0], number_of.get(ranked[0]))}\n"
                  f"({mode} thresholds; grey: no positive clip of that AU, F1 undefined)"))
    if fold_runs is not None and len(fold_runs):
        loso = fold_runs[fold_runs["protocol"] == LOSO]
        if len(loso):
            status = dict(zip(board["config_fp"], board["status"]))
            t0 = loso["start"].min()
            events = pd.DataFrame({
                "config": [plots.label(fp, number_of.get(fp)) for fp in loso["config_fp"]],
                "start": loso["start"] - t0, "end": loso["end"] - t0,
                "pruned": [status.get(fp) != Status.COMPLETE for fp in loso["config_fp"]],
            })
            written.append(plots.pruning_timeline(events, out_dir / "pruning_timeline.png"))
    written += _fold_and_study_plots(sweep, board, out_dir, floors)
    return written


def _per_au_references(results: list[FoldResult], mode: str) -> tuple[dict[str, pd.Series], pd.DataFrame]:
    """The all-positive and prior-rate predictors per AU on these folds' clips, and the 95% bootstrap interval
    over subjects of each AU's pooled F1."""
    aus = results[0].aus
    labels = np.concatenate([r.labels for r in results])
    subjects = np.concatenate([np.asarray(r.subjects) for r in results])
    refs = loso_baselines_per_au(labels, subjects)
    names = [f"AU{au}" for au in aus]
    baselines = {"all-positive": pd.Series(refs["all_positive"], index=names),
                 "prior rate": pd.Series(refs["prior"], index=names)}
    intervals = per_au_intervals(Objective(metric="f1_pos", thresholds=mode, aggregate="pooled"), results)
    spread = pd.DataFrame({f"AU{au}": [i.low, i.high] for au, i in intervals.items()}, index=["low", "high"])
    return baselines, spread


def _fold_and_study_plots(sweep: SweepData, board: pd.DataFrame, out_dir: Path,
                          floors: dict[str, float]) -> list[Path]:
    """Per-fold objective of the best configurations (paired by subject) and Optuna's own plots."""
    written: list[Path] = []
    fold_score = sweep.settings.fold_score
    columns = {}
    number_of = _numbers(board)
    for fp, status in zip(board["config_fp"], board["status"]):
        if len(columns) == TOP:
            break
        if status == Status.COMPLETE:
            with contextlib.suppress(ValueError):
                columns[plots.label(fp, number_of.get(fp))] = {r.fold_id: fold_score.of(r) for r in sweep.store.results(fp, LOSO)}
    if columns:
        written.append(plots.fold_distribution(
            pd.DataFrame(columns), out_dir / "fold_scores.png",
            title=f"Per-fold {fold_score} of the best complete configurations (grey lines join a subject's folds)\n"
                  "each fold scores its own few clips; the objective pools every fold's clips, so it is not their median"))
    journal = SweepFolder(sweep.sweep_dir).journal
    if journal.is_file():
        study = load_study(SweepFolder(sweep.sweep_dir), sweep.settings.name)
        written += plots.study_plots(study, out_dir, str(sweep.settings.objective))
    history = plots.optimization_history(board, out_dir / "optimization_history.png",
                                         objective=str(sweep.settings.objective), baselines=floors)
    if history is not None:
        written.append(history)
    return written


def build_report(workdir: Path, name: str, out_dir: Path | None = None, *, tracking_uri: str | None = None,
                 nested_plan: Any = None, device: str = "cpu", progress: bool = True,
                 code: FoldCode = AULLM_CODE) -> Report:
    """Compute and write the report of sweep ``name`` (``out_dir`` default: the sweep's report/); ``code``
    trains the nested estimate's folds (the sweep's own)."""
    sweep = load_sweep(workdir, name)
    out_dir = Path(out_dir or sweep.sweep_dir / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    board, fold_runs = sweep_leaderboard(sweep, tracking_uri=tracking_uri)
    best_fp = str(board.loc[0, "config_fp"]) if len(board) else None
    best_per_au = tables.per_au_table(sweep.store.results(best_fp, LOSO)) if best_fp else pd.DataFrame()
    cross = tables.cross_table(sweep.store, list(board["config_fp"])) if len(board) else pd.DataFrame()
    report = Report(sweep=sweep, out_dir=out_dir, leaderboard=board, best_fp=best_fp, best_per_au=best_per_au,
                    cross=cross)
    tracker = _tracker(sweep, tracking_uri)
    if tracker is not None:
        runs = tracker.config_runs()
        report.runs = {str(fp): str(rid) for fp, rid in runs["run_id"].items()} if "run_id" in runs else {}
        report.experiment_id = str(tracker.experiment_id)
    if best_fp:
        best_results = sweep.store.results(best_fp, LOSO)
        objective = sweep.settings.objective
        report.baselines = baseline_scores(objective, best_results)
        report.best_au = best_au_table(objective, best_results)
        report.versus_paper, report.paper_number = _paper_test(sweep, board, best_results)
    if len(board):
        report.folds_trained = int(board["folds_done"].sum())
        report.folds_possible = int(board["n_folds_total"].iloc[0]) * len(board)
    files = tables.write_table(board, out_dir / "leaderboard", notes=[tables.PAPER_NOTE, tables.BIAS_NOTE],
                               markdown=tables.compact(board))
    if len(best_per_au):
        files += tables.write_table(best_per_au, out_dir / "best_per_au", index=True, notes=[tables.PAPER_NOTE],
                                    markdown=tables.compact(best_per_au))
    if len(cross):
        files += tables.write_table(cross, out_dir / "cross_domain", notes=[tables.PAPER_NOTE])
    images = _plots(sweep, board, out_dir, fold_runs, {name: i.value for name, i in report.baselines.items()})
    files += images
    if nested_plan is not None:
        report.nested = _nested(sweep, nested_plan, code, device=device, progress=progress)
        files += tables.write_table(report.nested.table(), out_dir / "nested_outer_folds")
        files += tables.write_table(report.nested.summary(), out_dir / "nested_summary",
                                    notes=[tables.PAPER_NOTE])
    files.append(atomic_write_text(report.markdown, render_markdown(report, images)))
    report.files = files
    return report


def _paper_test(sweep: SweepData, board: pd.DataFrame, best: list[FoldResult]) -> tuple[PairedTest | None, int | None]:
    """The best configuration against the paper-defaults one (the enqueued first trial), when both exist."""
    if "label" not in board.columns or len(board) < 2:
        return None, None
    paper = board[board["label"].astype(str).str.startswith("paper") & (board.index > 0)]
    if paper.empty:
        return None, None
    row = paper.iloc[0]
    test = paired_comparison(sweep.settings.objective, best, sweep.store.results(str(row["config_fp"]), LOSO))
    return test, (int(row["number"]) if not pd.isna(row.get("number")) else None)


def _nested(sweep: SweepData, plan: Any, code: FoldCode, *, device: str, progress: bool) -> Any:
    from orchestration.reports.nested import nested_loso
    from orchestration.search.space import load_space

    s = sweep.settings
    frozen = sweep.sweep_dir / "space.yaml"  # the space as it was when the sweep started
    space = load_space(frozen if frozen.is_file() else s.space)
    clips = code.cache_loader(str(s.cache))
    store = FoldStore(sweep.sweep_dir / "nested" / "folds")
    return nested_loso(clips, space, plan, store=store, fold_fn=code.fold_fn, device=device,
                       progress=progress)
