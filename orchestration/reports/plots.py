"""PNG plots of a sweep: per-AU F1 of the best configurations, fold x AU heatmap, pruning timeline.

Each plotting function takes a small DataFrame (so the same plot can be drawn from the fold store or
from the MLflow runs), writes one PNG (matplotlib Agg, ~8x5 in, 120 dpi) and returns its path.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

__all__ = ["fold_au_heatmap", "label", "per_au_bars", "preferred_mode", "pruning_timeline", "sweep_plots"]

DPI = 120
_AU_COLUMN = re.compile(r"f1_pos_AU(\d+)$")


def _save(fig: plt.Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out


def per_au_bars(scores: pd.DataFrame, out: Path, *, title: str, ylabel: str = "F1 (positive class)") -> Path:
    """Grouped bars: one group per AU (columns), one bar per configuration (rows, best first)."""
    n_cfg, n_au = scores.shape
    fig, ax = plt.subplots(figsize=(8, 5))
    width = 0.8 / max(n_cfg, 1)
    x = np.arange(n_au)
    colors = plt.get_cmap("tab10")
    for i, (label, row) in enumerate(scores.iterrows()):
        ax.bar(x + (i - (n_cfg - 1) / 2) * width, row.to_numpy(dtype=float), width, label=str(label),
               color=colors(i % 10))
    ax.set_xticks(x, [str(c) for c in scores.columns])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("Action Unit")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="configuration (#rank fingerprint)", fontsize=8, title_fontsize=8, loc="upper center",
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
    ax.set_ylabel("configuration (#rank fingerprint)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([0], [0], color="tab:blue", marker="o", lw=1.5, label="fold finished (kept configuration)"),
               Line2D([0], [0], color="tab:red", marker="o", lw=1.5, label="fold finished (pruned configuration)"),
               Line2D([0], [0], color="black", marker="x", lw=0, mew=2.5, ms=9, label="pruned")]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3,
              frameon=False)
    return _save(fig, out)


def preferred_mode(columns: list[str] | pd.Index, template: str) -> str | None:
    """First protocol variant with metrics present: 'inner' (leak-free, tuned on training subjects),
    then 'fixed'. ``template`` is a name with ``{mode}``, e.g. 'loso/{mode}_pooled/mean_f1_pos'."""
    names = set(columns)
    for mode in ("inner", "fixed"):
        if template.format(mode=mode) in names:
            return mode
    return None


def _au_columns(columns: pd.Index, prefix: str) -> dict[str, str]:
    """Columns '<prefix>f1_pos_AU<n>' -> 'AU<n>' in AU order."""
    found = {}
    for col in columns:
        if col.startswith(prefix):
            m = _AU_COLUMN.search(col[len(prefix):])
            if m and col[len(prefix):] == m.group(0):
                found[col] = f"AU{m.group(1)}"
    return dict(sorted(found.items(), key=lambda kv: int(kv[1][2:])))


def label(config_fp: str, rank: int | None = None) -> str:
    """Short readable name of a configuration."""
    return f"#{rank} {config_fp[:8]}" if rank is not None else config_fp[:8]


def sweep_plots(configs: pd.DataFrame, folds: pd.DataFrame, order: list[str], out_dir: Path,
                *, top: int = 5) -> list[Path]:
    """The three sweep plots from run tables (see ``SweepTracker.config_runs``/``fold_runs``).

    ``configs`` is indexed by config fingerprint with 'loso/<mode>_pooled/f1_pos_AU<n>' columns;
    ``folds`` has config_fp, protocol, fold_id, start, end and '<mode>/f1_pos_AU<n>' columns;
    ``order`` lists fingerprints best first.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    ranked = [fp for fp in order if fp in configs.index]
    mode = preferred_mode(configs.columns, "loso/{mode}_pooled/mean_f1_pos") if len(configs) else None
    if ranked and mode:
        prefix = f"loso/{mode}_pooled/"
        cols = _au_columns(configs.columns, prefix)
        best = configs.loc[ranked[:top], list(cols)].rename(columns=cols)
        best.index = [label(fp, i + 1) for i, fp in enumerate(best.index)]
        written.append(per_au_bars(best, out_dir / "per_au_f1.png",
                                   title=f"Per-AU F1 of the best configurations (LOSO pooled, {mode} thresholds)"))
    loso = folds[folds["protocol"] == "loso"] if len(folds) else folds
    if ranked and len(loso):
        best_folds = loso[loso["config_fp"] == ranked[0]].sort_values("fold_id")
        fold_mode = preferred_mode(best_folds.columns, "{mode}/mean_f1_pos")
        if len(best_folds) and fold_mode:
            cols = _au_columns(best_folds.columns, f"{fold_mode}/")
            matrix = best_folds.set_index("fold_id")[list(cols)].rename(columns=cols)
            written.append(fold_au_heatmap(
                matrix, out_dir / "fold_au_heatmap.png",
                title=f"Per-fold F1 of the best configuration {ranked[0][:8]} ({fold_mode} thresholds)"))
    if len(loso):
        t0 = loso["start"].min()
        pruned = configs["pruned"] if "pruned" in configs.columns else pd.Series(dtype=bool)
        rank = {fp: i + 1 for i, fp in enumerate(ranked)}
        events = pd.DataFrame({
            "config": [label(fp, rank.get(fp)) for fp in loso["config_fp"]],
            "start": loso["start"] - t0,
            "end": loso["end"] - t0,
            "pruned": [bool(pruned.get(fp, False)) for fp in loso["config_fp"]],
        })
        written.append(pruning_timeline(events, out_dir / "pruning_timeline.png"))
    return written
