"""Racing configurations over folds: asynchronous successive halving with folds as the budget.

Every configuration of a racing sweep runs its folds in one shared order (``FoldRace.order``), so
after r folds any two configurations have been scored on the same r subjects and compare paired.
The order is cut into rungs of geometrically growing size (``rungs``: ``min_folds``, then x ``eta``
until every fold). When a configuration has every fold of a rung, its rung score (the mean of its
fold scores over the rung's folds) is ranked among the rung scores of every configuration that has
reached that rung so far, whatever became of it since; it goes on only if it is in the top
1/``eta`` (the rule of ASHA, Li et al. 2020, with folds, not epochs, as the resource). The first
configuration at a rung always goes on; a later one must beat all but a fraction of those before it.

Two properties a sweep needs from this:
- **No barrier.** A decision is taken as soon as one configuration's rung is in: it never waits for a
  rung to fill, so free fold slots start new configurations while others are being decided (the
  searcher hands out a configuration's folds only up to its next undecided rung: ``hand_out_limit``).
- **Resume-safe.** A decision reads only the fold scores reported to the Optuna study (its journal),
  so a driver killed and resumed decides from the same numbers; a configuration stopped at a rung
  stays stopped (PRUNED in the study, with the rung it stopped at in its user attributes).

The pruner is an Optuna ``BasePruner`` fed the same way as the Wilcoxon pruner (a fold's score at
step = the fold's index in the sorted fold list), so the searcher's reporting path is shared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from orchestration.search.trials import StudyTrials

__all__ = ["FoldRace", "FoldRacePruner", "race_rungs"]


def race_rungs(n_folds: int, min_folds: int, eta: float) -> tuple[int, ...]:
    """Fold counts after which a configuration is judged: min_folds, x eta, ..., and n_folds last.

    >>> race_rungs(26, 3, 3)
    (3, 9, 26)
    >>> race_rungs(8, 2, 2)
    (2, 4, 8)
    """
    if n_folds <= 0:
        return ()
    rungs: list[int] = []
    r = float(max(1, min_folds))
    while round(r) < n_folds:
        if not rungs or round(r) > rungs[-1]:
            rungs.append(round(r))
        r *= eta
    return (*rungs, n_folds)


@dataclass(frozen=True)
class FoldRace:
    """The race's shape over one protocol: the shared fold order (fold indices) and the rungs."""

    order: tuple[int, ...]  # fold indices (positions in the sorted fold list) in the order every configuration runs them
    min_folds: int = 3
    eta: float = 3.0

    @property
    def rungs(self) -> tuple[int, ...]:
        return race_rungs(len(self.order), self.min_folds, self.eta)

    def hand_out_limit(self, steps: set[int]) -> int:
        """How many folds of the order may be handed out to a configuration that has reported ``steps``
        (and was not stopped): up to the end of its first rung not yet complete."""
        for r in self.rungs:
            if not set(self.order[:r]) <= steps:
                return r
        return len(self.order)

    def rung_score(self, values: dict[int, float], rung: int) -> float | None:
        """Mean fold score over the rung's folds (None: a fold missing, or no finite score)."""
        steps = self.order[:rung]
        if any(s not in values for s in steps):
            return None
        finite = [values[s] for s in steps if math.isfinite(values[s])]
        return float(np.mean(finite)) if finite else None

    def goes_on(self, own: float, others: Sequence[float]) -> bool:
        """ASHA's rule: in the top 1/eta of the rung scores (own included), ties going on."""
        recorded = np.asarray([*others, own], dtype=float)
        cutoff = float(np.percentile(recorded, (1.0 - 1.0 / self.eta) * 100.0))
        return own >= cutoff - 1e-12


class FoldRacePruner(BasePruner):
    """Optuna pruner of a fold race (see the module docstring); intermediate values are fold scores
    at step = fold index (NaN for a fold whose score is undefined).

    A configuration is judged once per rung, when its reported folds are exactly the rung's (the
    searcher hands out no fold beyond an undecided rung). The decision is kept in the trial's user
    attributes (``race_passed``: the deepest rung passed; ``race_stopped_at``), so asking again (a
    resumed driver re-reporting its folds) returns the decision taken, not a new one."""

    PASSED, STOPPED = "race_passed", "race_stopped_at"

    def __init__(self, race: FoldRace, trials: StudyTrials) -> None:
        self.race = race
        self.trials = trials

    def rung_reached(self, steps: set[int]) -> int | None:
        """The rung (below the last) whose folds are exactly ``steps``, if any."""
        for r in self.race.rungs[:-1]:
            if steps == set(self.race.order[:r]):
                return r
        return None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        decided = trial.user_attrs  # as stored when the pruner is asked: decisions taken by any handle
        if self.STOPPED in decided:
            return True
        own = trial.intermediate_values
        rung = self.rung_reached(set(own))
        if rung is None or decided.get(self.PASSED, 0) >= rung:
            return False
        score = self.race.rung_score(own, rung)
        others = [
            value
            for other in study.get_trials(deepcopy=False, states=_COMPETITORS)
            if other.number != trial.number
            and (value := self.race.rung_score(other.intermediate_values, rung)) is not None
        ]
        goes_on = score is None or self.race.goes_on(score, others)
        self.trials.set_user_attr(trial.number, self.PASSED if goes_on else self.STOPPED, rung)
        return not goes_on


_COMPETITORS = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
