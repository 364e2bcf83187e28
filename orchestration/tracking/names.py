"""How the MLflow runs of a sweep are named and tagged: the names a researcher reads in the UI.

Metric names are the same on fold and configuration runs for the same quantity (``metric_prefix``);
AUs are zero-padded (``f1_pos_AU04``) so they sort as numbers; configuration runs are named rank
and score first (``config_run_name``) so the runs table shows the answer without added columns.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from orchestration.search.progress import Status

__all__ = ["config_run_name", "metric_prefix", "run_status"]

TAG_SWEEP = "aullm.sweep"
TAG_LEVEL = "aullm.level"  # 'sweep', 'config' or 'fold'
TAG_CONFIG = "aullm.config_fp"
TAG_PROTOCOL = "aullm.protocol"
TAG_FOLD = "aullm.fold_id"
TAG_PRUNED = "aullm.pruned"
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"
TAG_STATUS = "aullm.status"
TAG_CROSS = "aullm.cross_directions"  # the cross-domain directions a configuration run holds
#: MLflow 3's UI opens an experiment in its model-training view (runs table, charts) rather than its
#: GenAI view (traces, an assistant panel) when the experiment carries this kind.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

#: Shown on sweep and configuration runs (MLflow's run description).
PROTOCOL_NOTE = (
    "Protocol variants: `paper` picks each AU's threshold on the pooled TEST predictions "
    "(test-tuned, leaky; only for comparison with published numbers); `fixed` uses threshold 0.5; "
    "`inner` uses thresholds chosen on held-out training subjects. `pooled` scores all folds' "
    "predictions together, `fold_mean` averages per-fold scores. A sweep's best LOSO score is "
    "selection-biased: the configuration was chosen and scored on the same folds (see "
    "`aullm report --nested`)."
)


def metric_prefix(mode: str, aggregate: str = "pooled") -> str:
    """Metric-name prefix of a protocol variant, the same on fold and configuration runs: 'inner_pooled/'
    is the F1 with inner thresholds over the run's clips pooled (one fold's clips on a fold run, every
    fold's on its configuration run); 'inner_fold_mean/' (configuration runs only) averages the folds."""
    return f"{mode}_{aggregate}/"


def run_status(status: str, folds_done: int, n_folds: int) -> str:
    """What a configuration run's ``aullm.status`` tag and name say: complete, pruned or failed."""
    if status in (Status.PRUNED, Status.FAILED):
        return status
    return Status.COMPLETE if folds_done >= n_folds else Status.INCOMPLETE


def config_run_name(number: int, status: str, objective: float | None, rank: int | None = None,
                    label: str = "") -> str:
    """A name that survives the runs table's width: rank and score first, then the trial number, the
    status when not complete and 'paper' for the paper's values, e.g. '1. 0.453 #3', '9. 0.301 #4 pruned'."""
    score = "-" if objective is None or not math.isfinite(objective) else f"{objective:.3f}"
    head = f"{rank}. " if rank is not None else ""
    tail = ("" if status == Status.COMPLETE else f" {status}") + (" paper" if label.startswith("paper") else "")
    return f"{head}{score} #{number}{tail}"


def code_version() -> dict[str, str]:
    """Package version and, when the code sits in a git checkout, its commit."""
    tags: dict[str, str] = {}
    try:
        tags["aullm.version"] = metadata.version("aullm")
    except metadata.PackageNotFoundError:
        tags["aullm.version"] = "unknown"
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return tags
    commit = out.stdout.strip()
    if commit:
        tags["aullm.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
        tags["aullm.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    return tags


#: Leaderboard columns shown in the sweep run's table (MLflow's artifact view renders it).
TABLE_COLUMNS = ("rank", "number", "label", "status", "folds_done", "n_folds_total", "objective", "config_fp")


def best_note(best: Mapping[str, Any], run_id: str | None) -> str:
    """The sweep run's description: the winner, its score and a link to its configuration run."""
    link = f"[configuration run](#/experiments/-/runs/{run_id})" if run_id else "its configuration run"
    number = best.get("number", math.nan)
    which = f"#{int(number)} " if not pd.isna(number) else ""
    return (f"**Best configuration** {which}`{best['config_fp']}`: objective **{float(best['objective']):.3f}** "
            f"(LOSO, selection-biased); per-AU F1 and folds in {link}.")
