"""Where one configuration of a fold-wise search stands: its folds handed out, scored, and its outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from orchestration.reports.tables import TrialRow
from orchestration.space import SearchSpace

__all__ = [
    "COMPLETE", "DUPLICATE", "FAILED", "LABEL_ATTR", "OPEN", "PAPER_DEFAULTS", "PRUNED",
    "ConfigOutcome", "ConfigState", "study_rows",
]

#: Optuna user attribute naming a configuration that was enqueued rather than sampled.
LABEL_ATTR = "label"
PAPER_DEFAULTS = "paper defaults"
OPEN, PRUNED, COMPLETE, FAILED, DUPLICATE = "open", "pruned", "complete", "failed", "duplicate"


@dataclass
class ConfigState:
    """One configuration's progress (JSON-serialisable)."""

    number: int  # Optuna trial number
    optuna_id: int  # Optuna's internal trial id (for reports)
    fp: str
    overrides: dict[str, Any]
    config: dict[str, Any]
    order: list[str]  # fold ids in hand-out order
    next: int = 0
    running: dict[str, str] = field(default_factory=dict)  # Tune trial id -> fold id
    scores: dict[str, float | None] = field(default_factory=dict)  # fold id -> fold score (None = NaN)
    status: str = OPEN
    told: bool = False
    value: float | None = None
    duplicate_of: int | None = None
    error: str | None = None
    label: str = ""  # "paper defaults" for the enqueued first configuration, else ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def partial_mean(self) -> float | None:
        finite = [v for v in self.scores.values() if v is not None]
        return float(np.mean(finite)) if finite else None

    @property
    def has_folds_left(self) -> bool:
        return self.status == OPEN and self.next < len(self.order)


@dataclass(frozen=True)
class ConfigOutcome:
    """A configuration that was just told to Optuna (drained by the sweep's tracking callback)."""

    number: int
    fp: str
    overrides: dict[str, Any]
    config: dict[str, Any]
    status: str  # complete, pruned or failed
    value: float | None
    folds_done: list[str]
    n_folds_total: int


def study_rows(study: optuna.Study, space: SearchSpace) -> dict[str, TrialRow]:
    """What the study knows of each configuration (its first trial per fingerprint), for the leaderboard."""
    names = {TrialState.COMPLETE: COMPLETE, TrialState.PRUNED: PRUNED, TrialState.FAIL: FAILED,
             TrialState.RUNNING: "running"}
    rows: dict[str, TrialRow] = {}
    for trial in study.get_trials(deepcopy=False):
        fp = trial.user_attrs.get("config_fp")
        if fp is None or fp in rows:
            continue
        rows[fp] = TrialRow(number=trial.number, label=trial.user_attrs.get(LABEL_ATTR, ""),
                            status=names.get(trial.state, trial.state.name.lower()),
                            overrides=space.decode(trial.params), partial_mean=trial.user_attrs.get("partial_mean"))
    return rows
