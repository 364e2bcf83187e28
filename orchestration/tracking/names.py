"""How the MLflow runs of a sweep are named and tagged: the names a researcher reads in the UI.

Metric names are the same on fold and configuration runs for the same quantity (``run_metrics``);
AUs are zero-padded (``AU04/f1``) so they sort as numbers; configuration runs are named rank
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

__all__ = ["config_run_name", "run_status"]

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
    "`objective` is the score the search ranks by; `objective_low`/`objective_high` its 95% bootstrap "
    "interval over subjects; `AU<nn>/f1` each AU's F1 under the same protocol (NaN on a fold without a "
    "positive clip of that AU: undefined, not zero) and `AU<nn>/positives` its positive clips. Other "
    "protocols, for comparison only, under `protocols/`: `test_tuned` picks each AU's threshold on the "
    "pooled TEST predictions (leaky, as published numbers do); `fixed` uses 0.5; `inner` uses thresholds "
    "chosen on held-out training subjects; `pooled` scores all folds' clips together, `fold_mean` averages "
    "the folds. Every per-AU value of every protocol: `scores.csv`; the folds by subject: `folds.csv`. "
    "A sweep's best LOSO score is selection-biased: the configuration was chosen and scored on the same "
    "folds (see `aullm report --nested`)."
)


def run_status(status: str, folds_done: int, n_folds: int) -> str:
    """What a configuration run's ``aullm.status`` tag and name say: complete, pruned or failed."""
    if status in (Status.PRUNED, Status.FAILED):
        return status
    return Status.COMPLETE if folds_done >= n_folds else Status.INCOMPLETE


def config_run_name(number: int, status: str, objective: float | None, rank: int | None = None,
                    label: str = "") -> str:
    """A name that survives the runs table's width: rank and score first, then the trial number, the
    status when not complete and the label of a configuration ``start_with`` enqueued ('paper-defaults' for
    the paper's values, never 'paper' alone: that word names no protocol anywhere; 'quick-preset'), e.g.
    '1. 0.453 #3', '9. 0.301 #4 pruned', '2. 0.440 #0 paper-defaults'."""
    score = "-" if objective is None or not math.isfinite(objective) else f"{objective:.3f}"
    head = f"{rank}. " if rank is not None else ""
    tail = ("" if status == Status.COMPLETE else f" {status}") + (f" {label.replace(' ', '-')}" if label else "")
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


#: experiment tag prefix under which MLflow's UI keeps a shared view of the runs table
#: (opened with ``#/experiments/<id>/runs?viewStateShareKey=<key>``, columns included: the URL alone
#: cannot choose columns in MLflow 3.17)
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def view_key(sweep_name: str) -> str:
    """The shared-view key of a sweep's configurations table (letters, digits, '-' and '_')."""
    return "aullm-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in sweep_name)


def landing_view(sweep_name: str, searched: list[str], *, now_ms: int) -> tuple[str, str]:
    """(tag, value) of the view a researcher lands on: the sweep's configuration runs best first, with the
    objective, its interval, the folds run and every searched parameter as columns."""
    import json

    columns = ["metrics.`objective`", "metrics.`objective_low`", "metrics.`objective_high`",
               "metrics.`folds_done`", *(f"params.`{key}`" for key in searched), "attributes.`Duration`"]
    state = {"searchFilter": f"tags.`{TAG_LEVEL}` = 'config' and tags.`{TAG_SWEEP}` = '{sweep_name}'",
             "orderByKey": "metrics.`rank`", "orderByAsc": True, "selectedColumns": columns, "columnOrder": columns,
             "lifecycleFilter": "Active", "datasetsFilter": []}
    envelope = {"name": f"aullm: {sweep_name}", "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)}
    return VIEW_TAG_PREFIX + view_key(sweep_name), json.dumps(envelope)
