"""The core of a fold-wise search, shared by the sweep's Tune searcher and the nested estimate.

One configuration is judged fold by fold: ``SearchCore`` says which sampler proposes the next
configuration (a fresh one seeded by the search's seed and the trial number, so a resumed search
proposes what an uninterrupted one would), in which order its folds run (shuffled per
configuration, seeded; a race's one shared order), how many may be handed out before a decision
(``hand_out_limit``: a racing configuration waits at an undecided rung), what Optuna is told after
each fold (``report``: Wilcoxon and the race pair the fold's score at step = the fold's index in the
sorted fold list; median reads the running mean at step = folds done, since ``MedianPruner``
compares trials at equal steps of a learning curve) and whether to stop, and what the finished
configuration scores (``value``).

Outcomes: a configuration with all folds in is ``COMPLETE`` with the objective computed from the
stored fold results; a pruned one is ``PRUNED`` once its running folds are in (partial fold mean in
the user attribute ``partial_mean``), not ``COMPLETE`` with the partial mean: the objective is a
pooled score whose scale differs from a mean of per-fold scores, and a partial mean over a few
folds could become ``study.best_trial``, the reference ``WilcoxonPruner`` pairs folds against,
which must hold every fold. TPE still learns from PRUNED trials (it ranks them below every complete
one). A configuration whose fold failed for good (after Tune's retries) is ``FAIL``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import TrialState

from aullm_core.train.objective import DEFAULT_OBJECTIVE, FoldScore, Objective
from aullm_core.train.result import FoldResult
from orchestration.pruners import make_pruner
from orchestration.racing import FoldRace, FoldRacePruner

if TYPE_CHECKING:
    from orchestration.settings import SweepSettings

__all__ = ["SearchCore", "SearchPlan"]

_SHARED_ORDER = 0x5ACE  # entropy word of the race's shared fold order (apart from per-configuration orders)


@dataclass(frozen=True, kw_only=True)
class SearchPlan:
    """How a fold-wise search samples, orders, prunes and scores (``SweepSettings`` holds the same fields)."""

    objective: Objective = DEFAULT_OBJECTIVE
    fold_score: FoldScore = None  # type: ignore[assignment]  # None: the objective's (see Objective.fold_score)
    pruner: str = "wilcoxon"
    p_threshold: float | str = 0.1
    pocock_alpha: float = 0.1
    prune_startup_folds: int = 2
    race_min_folds: int = 3
    race_eta: float = 3.0
    sampler: str = "tpe"
    startup_configs: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "objective", Objective.coerce(self.objective))
        score = self.objective.fold_score if self.fold_score is None else FoldScore.coerce(self.fold_score)
        object.__setattr__(self, "fold_score", score)

    def search_fields(self) -> dict[str, object]:
        """This plan's ``SearchPlan`` fields by name (for a subclass's constructor)."""
        return {f.name: getattr(self, f.name) for f in fields(SearchPlan)}

    @classmethod
    def of(cls, settings: SweepSettings) -> SearchPlan:
        """The plan of a sweep's settings."""
        return cls(
            objective=settings.objective, fold_score=settings.fold_score, pruner=settings.pruner,
            p_threshold=settings.p_threshold, pocock_alpha=settings.pocock_alpha,
            prune_startup_folds=settings.prune_startup_folds, race_min_folds=settings.race_min_folds,
            race_eta=settings.race_eta, sampler=settings.sampler,
            startup_configs=settings.startup_configs, seed=settings.seed,
        )


class SearchCore:
    """Sampler, fold order, reports, pruning and score of one search over ``fold_ids``."""

    def __init__(self, plan: SearchPlan, fold_ids: Sequence[str], *, concurrent_configs: int = 1) -> None:
        self.plan = plan
        self.fold_ids = sorted(fold_ids)
        self.fold_index = {fid: i for i, fid in enumerate(self.fold_ids)}
        self.concurrent_configs = concurrent_configs

    @property
    def racing(self) -> bool:
        """Whether configurations race over one shared fold order (``orchestration.racing``)."""
        return self.plan.pruner == "race"

    @cached_property
    def race(self) -> FoldRace:
        """The race's shared order and rungs (the order is a function of the plan's seed only)."""
        rng = np.random.default_rng([self.plan.seed, _SHARED_ORDER])
        order = tuple(int(i) for i in rng.permutation(len(self.fold_ids)))
        return FoldRace(order=order, min_folds=self.plan.race_min_folds, eta=self.plan.race_eta)

    def pruner(self) -> BasePruner:
        p = self.plan
        if self.racing:
            return FoldRacePruner(self.race)
        return make_pruner(p.pruner, p_threshold=p.p_threshold, startup_folds=p.prune_startup_folds,
                           n_folds=len(self.fold_ids), pocock_alpha=p.pocock_alpha)

    def configs_in_flight(self, slots: int, given: int | None = None) -> int:
        """Configurations in flight at once: ``given``, else 2, or when racing enough for ``slots`` fold
        slots to stay busy while configurations wait at undecided rungs."""
        if given is not None:
            return given
        if self.racing:
            return max(2, math.ceil(slots / max(1, self.plan.race_min_folds)) + 1)
        return 2

    def hand_out_limit(self, done: Sequence[str]) -> int:
        """How many folds of its order a configuration that has finished the folds ``done`` may have
        handed out: all of them, or when racing, up to the end of its next undecided rung."""
        if not self.racing:
            return len(self.fold_ids)
        return self.race.hand_out_limit({self.fold_index[f] for f in done})

    def trial_seed(self, number: int) -> int:
        """The sampler's seed for trial ``number``: a function of the plan's seed and the number only."""
        return int(np.random.SeedSequence([self.plan.seed, number]).generate_state(1)[0])

    def sampler_for(self, number: int) -> optuna.samplers.BaseSampler:
        """A fresh sampler for trial ``number`` (set as ``study.sampler`` before each ask)."""
        seed = self.trial_seed(number)
        if self.plan.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=self.plan.startup_configs, constant_liar=self.concurrent_configs > 1
        )

    def fold_order(self, number: int) -> list[str]:
        """Configuration ``number``'s folds in the order they run: shuffled per configuration, or when
        racing, the race's one order for every configuration (so rungs pair)."""
        if self.racing:
            return [self.fold_ids[i] for i in self.race.order]
        rng = np.random.default_rng([self.plan.seed, number])
        return [self.fold_ids[i] for i in rng.permutation(len(self.fold_ids))]

    def fold_value(self, result: FoldResult) -> float | None:
        """The per-fold score the pruner compares (None when undefined)."""
        score = self.plan.fold_score.of(result)
        return score if math.isfinite(score) else None

    def report(self, study: optuna.Study, trial_id: int, fold_id: str, scores: Sequence[float | None]) -> bool:
        """Tell Optuna one more fold of a running trial (``scores``: the fold scores so far, this one last);
        True when the pruner says stop the configuration."""
        finite = [s for s in scores if s is not None]
        if self.plan.pruner == "median":
            step, value = len(scores), (float(np.mean(finite)) if finite else None)
        else:
            step, value = self.fold_index[fold_id], scores[-1]
        if self.racing and value is None:
            value = math.nan  # a race counts every fold of a rung, scored or not
        if value is None or (not math.isfinite(value) and not self.racing):
            return False
        frozen = study._storage.get_trial(trial_id)
        if frozen.state != TrialState.RUNNING:
            return False
        trial = optuna.trial.Trial(study, trial_id)
        if step not in frozen.intermediate_values:
            trial.report(value, step)
        return trial.should_prune()

    def value(self, results: Sequence[FoldResult]) -> float:
        """The objective of a configuration's folds (ValueError if the objective does not apply)."""
        return self.plan.objective.of_results(results)
