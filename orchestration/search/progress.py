"""Where one configuration of a fold-wise search stands: its folds handed out, scored, and its outcome."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from aullm_core.errors import ConfigError
from orchestration.search.journal import open_journal
from orchestration.search.racing import PASSED
from orchestration.search.space import PAPER_DEFAULTS, SearchSpace
from orchestration.search.trials import StudyTrials

__all__ = [
    "LABEL_ATTR",
    "OUTCOMES",
    "PAPER_DEFAULTS",
    "ConfigOutcome",
    "ConfigState",
    "Status",
    "asked_count",
    "saved_search_ended_early",
    "study_rows",
    "sync_with_study",
]

logger = logging.getLogger(__name__)

#: Optuna user attribute naming a configuration that was enqueued rather than sampled.
LABEL_ATTR = "label"
class Status(StrEnum):
    """Where a configuration stands, in the searcher, the leaderboard, MLflow and the reports: open (folds
    to run), running (Optuna's view of an open one), complete (every fold), incomplete (fewer folds than
    the protocol's, not stopped: a sweep still running or stopped), pruned, failed, or duplicate (the
    fingerprint of an earlier configuration: it takes that one's outcome)."""

    OPEN = "open"
    RUNNING = "running"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    PRUNED = "pruned"
    FAILED = "failed"
    DUPLICATE = "duplicate"


#: The outcomes a configuration is told to Optuna with.
OUTCOMES = (Status.COMPLETE, Status.PRUNED, Status.FAILED)


@dataclass
class ConfigState:
    """One configuration's progress (JSON-serialisable)."""

    number: int  # Optuna trial number
    fp: str
    overrides: dict[str, Any]
    config: dict[str, Any]
    order: list[str]  # fold ids in hand-out order
    next: int = 0
    running: dict[str, str] = field(default_factory=dict)  # Tune trial id -> fold id
    scores: dict[str, float | None] = field(default_factory=dict)  # fold id -> fold score (None = NaN)
    status: Status = Status.OPEN
    told: bool = False
    value: float | None = None
    duplicate_of: int | None = None
    error: str | None = None
    label: str = ""  # "paper defaults", "quick preset" for the configurations start_with enqueued, else ""
    passed: int = 0  # racing: the deepest rung it was promoted past (it may run folds up to the next rung's end)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # a restored state holds the plain string

    @property
    def partial_mean(self) -> float | None:
        finite = [v for v in self.scores.values() if v is not None]
        return float(np.mean(finite)) if finite else None

    @property
    def has_folds_left(self) -> bool:
        return self.status == Status.OPEN and self.next < len(self.order)


@dataclass(frozen=True)
class TrialRow:
    """What the Optuna study knows of a configuration (the sweep's side of a leaderboard row)."""

    number: int
    label: str
    status: Status
    overrides: Mapping[str, Any]
    partial_mean: float | None


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
    names = {TrialState.COMPLETE: Status.COMPLETE, TrialState.PRUNED: Status.PRUNED, TrialState.FAIL: Status.FAILED,
             TrialState.RUNNING: Status.RUNNING}
    rows: dict[str, TrialRow] = {}
    for trial in study.get_trials(deepcopy=False):
        fp = trial.user_attrs.get("config_fp")
        if fp is None or fp in rows:
            continue
        rows[fp] = TrialRow(number=trial.number, label=trial.user_attrs.get(LABEL_ATTR, ""),
                            status=names.get(trial.state, trial.state.name.lower()),
                            overrides=space.decode(trial.params), partial_mean=trial.user_attrs.get("partial_mean"))
    return rows


def sync_with_study(configs: dict[int, ConfigState], study: optuna.Study, trials: StudyTrials, space: SearchSpace,
                    fold_order: Callable[[int], list[str]]) -> list[ConfigState]:
    """Reconcile restored states with the journal, which may be ahead of Tune's snapshot: a
    configuration asked after the snapshot is adopted into ``configs`` (continued, not asked again),
    one told after it takes Optuna's outcome. Returns the states newly told whose outcome is to be
    passed on (duplicates are not)."""
    outcomes = {TrialState.COMPLETE: Status.COMPLETE, TrialState.PRUNED: Status.PRUNED, TrialState.FAIL: Status.FAILED}
    told: list[ConfigState] = []
    for frozen in study.get_trials(deepcopy=False):
        state = configs.get(frozen.number)
        if state is None and frozen.state == TrialState.RUNNING:
            state = _adopt(frozen, space, fold_order(frozen.number))
            if state is not None:
                configs[state.number] = state
                if frozen.user_attrs.get("config_fp") != state.fp:  # killed between ask and this attribute
                    trials.set_user_attr(frozen.number, "config_fp", state.fp)
        if state is not None:  # a promotion recorded after the snapshot is kept
            state.passed = max(state.passed, int(frozen.user_attrs.get(PASSED, 0)))
        if state is None or frozen.state not in outcomes or state.told:
            continue
        if state.status != Status.DUPLICATE:
            state.status = outcomes[frozen.state]
        state.value, state.told, state.finished_at = frozen.value, True, time.time()
        if state.status != Status.DUPLICATE:
            told.append(state)
    return told


def _adopt(frozen: optuna.trial.FrozenTrial, space: SearchSpace, order: list[str]) -> ConfigState | None:
    try:
        overrides = space.decode(frozen.params)
        config = space.build(overrides)
    except ConfigError:
        return None
    logger.info("resumed configuration %d asked after the last snapshot", frozen.number)
    return ConfigState(number=frozen.number, fp=config.fingerprint(),
                       overrides=overrides, config=config.model_dump(mode="json"), order=order,
                       label=str(frozen.user_attrs.get(LABEL_ATTR, "")))


def asked_count(study: optuna.Study) -> int:
    """Configurations the study holds as asked: every trial but a start preset still waiting to be asked."""
    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def saved_search_ended_early(experiment: Path, journal: Path, study_name: str) -> str | None:
    """Why Tune's snapshot in ``experiment`` cannot resume the search, or None: its ``FoldSearcher`` counted
    the budget as spent while the journal holds fewer configurations asked (Tune then takes the search
    as finished and never asks again; a rebuild from the journal runs the rest)."""
    states = sorted(experiment.glob("searcher-state-*.pkl"))  # FoldSearcher.save's JSON, under Tune's name
    if not states or not journal.is_file():
        return None
    saved = json.loads(states[-1].read_text())
    if saved.get("n_asked", 0) < saved.get("n_configs", 0) or not all(c.get("told") for c in saved["configs"]):
        return None
    try:
        study = optuna.load_study(study_name=study_name, storage=open_journal(journal))
    except KeyError:
        return None
    asked = asked_count(study)
    if asked >= saved["n_configs"]:
        return None
    return f"its search ended after {asked} of {saved['n_configs']} configurations"
