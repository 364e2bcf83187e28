"""PNG plots of a sweep: per-AU F1 of the best configurations, fold x AU heatmap, pruning timeline.

Each plotting function takes a small DataFrame (so the same plot can be drawn from the fold store or
from the MLflow runs), writes one PNG (matplotlib Agg, ~8x5 in, 120 dpi) and returns its path.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from aullm_core.data.splits import LOSO

__all__ = [
    "fold_au_heatmap",
    "fold_distribution",
    "label",
    "optimization_history",
    "per_au_bars",
    "pruning_timeline",
    "study_plots",
    "sweep_plots",
]

DPI = 120
_AU_COLUMN = re.compile(r"AU(\d+)/f1")


def _save(fig: plt.Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out


def per_au_bars(scores: pd.DataFrame, out: Path, *, title: str, ylabel: str = "F1 (positive class)",
                baselines: dict[str, pd.Series] | None = None, spread: pd.DataFrame | None = None) -> Path:
    """Grouped bars: one group per AU (columns), one bar per configuration (rows, best first).

    ``baselines`` (name -> per-AU value, e.g. the all-positive and prior predictors) are drawn as
    markers across each AU's group; ``spread`` (rows 'low', 'high' per AU) as a whisker on the first
    configuration's bar (e.g. its 95% bootstrap interval over subjects).
    """
    n_cfg, n_au = scores.shape
    fig, ax = plt.subplots(figsize=(8, 5))
    width = 0.8 / max(n_cfg, 1)
    x = np.arange(n_au)
    colors = plt.get_cmap("tab10")
    for i, (label, row) in enumerate(scores.iterrows()):
        offset = (i - (n_cfg - 1) / 2) * width
        values = row.to_numpy(dtype=float)
        ax.bar(x + offset, values, width, label=str(label), color=colors(i % 10))
        if i == 0 and spread is not None:
            low = spread.loc["low", scores.columns].to_numpy(dtype=float)
            high = spread.loc["high", scores.columns].to_numpy(dtype=float)
            ok = np.isfinite(low) & np.isfinite(high)
            ax.vlines(x[ok] + offset, low[ok], high[ok], color="black", linewidth=1.2,
                      label=f"{label}: 95% CI over subjects")
    styles = {"all-positive": ("_", "crimson"), "prior rate": ("x", "dimgrey")}
    for name, values in (baselines or {}).items():
        marker, color = styles.get(name, ("+", "black"))
        ax.scatter(x, values.reindex(scores.columns).to_numpy(dtype=float), marker=marker, s=260 if marker == "_" else 40,
                   color=color, linewidths=2, zorder=3, label=f"{name} predictor")
    ax.set_xticks(x, [str(c) for c in scores.columns])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("Action Unit")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="configuration (#trial fingerprint)", fontsize=8, title_fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.12), ncol=min(n_cfg, 5), frameon=False)
    return _save(fig, out)


def fold_au_heatmap(matrix: pd.DataFrame, out: Path, *, title: str, cbar_label: str = "F1 (positive class)") -> Path:
    """Heatmap of per-fold per-AU scores (rows folds, columns AUs); NaN cells (no positives) grey."""
    n_folds, n_au = matrix.shape
    fig, ax = plt.subplots(figsize=(8, max(5.0, 1.5 + 0.28 * n_folds)))
    values = matrix.to_numpy(dtype=float)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(np.arange(n_au), [str(c) for c in matrix.columns])
    ax.set_yticks(np.arange(n_folds), [str(i) for i in matrix.index])
    ax.set_xlabel("Action Unit")
    ax.set_ylabel("fold (test subject)")
    ax.set_title(title)
    if n_folds * n_au <= 400:
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=9 if n_folds <= 15 else 7,
                        color="black" if v > 0.6 else "white")
    fig.colorbar(image, ax=ax, label=cbar_label)
    return _save(fig, out)


def pruning_timeline(events: pd.DataFrame, out: Path, *, title: str = "Folds run per configuration over time") -> Path:
    """One row per configuration (in order of first fold): a dot where each fold finished, a thin
    line from its first fold's start to its last fold's end, and the number of folds run.

    ``events`` columns: config (label), start, end (seconds since the sweep began), pruned (bool).
    Pruned configurations are red and end with a cross.
    """
    order = events.groupby("config", sort=False)["start"].min().sort_values().index.tolist()
    fig, ax = plt.subplots(figsize=(8, max(5.0, 1.8 + 0.32 * len(order))))
    for y, config in enumerate(order):
        rows = events[events["config"] == config]
        pruned = bool(rows["pruned"].iloc[0])
        color = "tab:red" if pruned else "tab:blue"
        first, last = float(rows["start"].min()), float(rows["end"].max())
        ax.plot([first, last], [y, y], color=color, lw=1.5, alpha=0.5)
        ax.plot(rows["end"], [y] * len(rows), "o", color=color, ms=6)
        if pruned:
            ax.plot(last, y, marker="x", color="black", ms=11, mew=2.5)
        ax.annotate(f"{len(rows)} folds", (last, y), xytext=(8, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_yticks(np.arange(len(order)), order)
    ax.set_ylim(len(order) - 0.5, -0.5)
    span = float(events["end"].max()) if len(events) else 1.0
    ax.set_xlim(-0.02 * span, 1.15 * span)
    ax.set_xlabel("time since the first fold started (s)")
    ax.set_ylabel("configuration (#trial fingerprint)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([0], [0], color="tab:blue", marker="o", lw=1.5, label="fold finished (kept configuration)"),
               Line2D([0], [0], color="tab:red", marker="o", lw=1.5, label="fold finished (pruned configuration)"),
               Line2D([0], [0], color="black", marker="x", lw=0, mew=2.5, ms=9, label="pruned")]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3,
              frameon=False)
    return _save(fig, out)


def _au_columns(columns: pd.Index) -> dict[str, str]:
    """Columns 'AU<nn>/f1' (each AU's F1 under the objective's protocol) -> 'AU<n>', in AU order."""
    found = {col: f"AU{int(m.group(1))}" for col in columns if (m := _AU_COLUMN.fullmatch(str(col)))}
    return dict(sorted(found.items(), key=lambda kv: int(kv[1][2:])))


def label(config_fp: str, number: int | None = None) -> str:
    """Short readable name of a configuration: '#<trial number> <fingerprint>', the '#' of MLflow's run
    names and of Optuna (not a rank)."""
    return f"#{number} {config_fp[:8]}" if number is not None and not pd.isna(number) else config_fp[:8]


def sweep_plots(configs: pd.DataFrame, folds: pd.DataFrame, order: list[str], out_dir: Path,
                *, top: int = 5, numbers: Mapping[str, int] | None = None) -> list[Path]:
    """The three sweep plots from run tables (see ``MlflowTracker.config_runs``/``fold_runs``).

    ``configs`` is indexed by config fingerprint with 'AU<nn>/f1' columns;
    ``folds`` has config_fp, protocol, fold_id, start, end and 'AU<nn>/f1' columns;
    ``order`` lists fingerprints best first; ``numbers`` their trial numbers (the labels' '#').
    """
    numbers = dict(numbers or {})
    out_dir = Path(out_dir)
    written: list[Path] = []
    ranked = [fp for fp in order if fp in configs.index]
    cols = _au_columns(configs.columns)
    if ranked and cols:
        best = configs.loc[ranked[:top], list(cols)].rename(columns=cols)
        best.index = [label(fp, numbers.get(fp)) for fp in best.index]
        written.append(per_au_bars(best, out_dir / "per_au_f1.png",
                                   title="Per-AU F1 of the best configurations (LOSO, the objective's protocol)"))
    loso = folds[folds["protocol"] == LOSO] if len(folds) else folds
    if ranked and len(loso):
        best_folds = loso[loso["config_fp"] == ranked[0]].sort_values("fold_id")
        cols = _au_columns(best_folds.columns)
        if len(best_folds) and cols:
            matrix = best_folds.set_index("fold_id")[list(cols)].rename(columns=cols)
            written.append(fold_au_heatmap(
                matrix, out_dir / "fold_au_heatmap.png",
                title=f"Per-fold F1 of the best configuration {label(ranked[0], numbers.get(ranked[0]))}\n"
                      "(the objective's protocol; grey: no positive clip of that AU, F1 undefined)"))
    if len(loso):
        t0 = loso["start"].min()
        pruned = configs["pruned"] if "pruned" in configs.columns else pd.Series(dtype=bool)
        events = pd.DataFrame({
            "config": [label(fp, numbers.get(fp)) for fp in loso["config_fp"]],
            "start": loso["start"] - t0,
            "end": loso["end"] - t0,
            "pruned": [bool(pruned.get(fp, False)) for fp in loso["config_fp"]],
        })
        written.append(pruning_timeline(events, out_dir / "pruning_timeline.png"))
    return written


#: complete configurations below which fANOVA importances are noise, not shown
MIN_TRIALS_FOR_IMPORTANCE = 8


def optimization_history(board: pd.DataFrame, out: Path, *, objective: str,
                         baselines: Mapping[str, float] | None = None) -> Path | None:
    """Each configuration's score against its trial number (the leaderboard's number: complete ones, and
    pruned ones at their partial mean marked as such), the best complete score so far, and the label-free
    baselines as horizontal lines. None without a trial number in ``board``."""
    if "number" not in board.columns or board["number"].isna().all():
        return None
    rows = board.dropna(subset=["number"]).sort_values("number")
    complete = rows[rows["status"] == "complete"]
    partial = rows[rows["status"] != "complete"]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(complete["number"], complete["objective"], color="tab:blue", zorder=3, label="complete (every fold)")
    if len(partial):
        ax.scatter(partial["number"], partial["objective"], color="tab:red", marker="x", zorder=3,
                   label="pruned/incomplete (objective over the folds it ran)")
    if len(complete):
        best = complete.set_index("number")["objective"].cummax()
        ax.step(best.index, best.to_numpy(), where="post", color="tab:blue", alpha=0.6, label="best complete so far")
    for (name, value), style in zip((baselines or {}).items(), ("--", ":")):
        if not np.isnan(value):
            ax.axhline(value, color="0.4", linestyle=style, label=f"baseline: {name} ({value:.3f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number (#, as in MLflow and Optuna)")
    ax.set_ylabel(objective)
    ax.set_title(f"Optimisation history: {len(complete)} complete, {len(partial)} pruned or incomplete")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out)


def study_plots(study: optuna.Study, out_dir: Path, objective: str) -> list[Path]:
    """Optuna's own matplotlib plots of the study's complete configurations: parallel coordinates, and
    parameter importance once there are enough trials for it to mean something (the count in its title)."""
    from optuna.visualization import matplotlib as ov

    out_dir = Path(out_dir)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    searched = {k for t in complete for k in t.params}
    jobs = []
    if len(complete) >= 2 and searched:
        jobs.append(("parallel_coordinates.png", ov.plot_parallel_coordinate))
    if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE and len(searched) >= 2:
        jobs.append(("param_importance.png", ov.plot_param_importances))
    written = []
    # Optuna's plots switch matplotlib to its style: keep that inside these figures
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in jobs:
            ax = plot(study, target_name=objective)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            if name == "param_importance.png":
                fig.suptitle(f"Parameter importance (fANOVA over {len(complete)} complete configurations)")
            written.append(_save(fig, out_dir / name))
    return written


def fold_distribution(scores: pd.DataFrame, out: Path, *, title: str) -> Path:
    """Per-fold objective of each configuration (columns, best first; rows: subjects), one line per
    subject joining its folds across configurations, so a difference is read pairwise."""
    fig, ax = plt.subplots(figsize=(8, 5))
    x = np.arange(scores.shape[1])
    for _, row in scores.iterrows():
        ax.plot(x, row.to_numpy(dtype=float), color="0.75", linewidth=0.8, marker="o", markersize=3, zorder=1)
    data = [scores[c].dropna().to_numpy(dtype=float) for c in scores.columns]
    ax.boxplot(data, positions=x, widths=0.4, showfliers=False, zorder=2)
    ax.set_xticks(x, [str(c) for c in scores.columns], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("fold score")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)
