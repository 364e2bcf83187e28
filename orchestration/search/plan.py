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
from functools import cached_property
from typing import Literal

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field, field_validator

from aullm_core.train.objective import FoldScore, Objective
from aullm_core.train.result import FoldResult
from orchestration.search.pruners import make_pruner
from orchestration.search.racing import FoldRace
from orchestration.search.trials import StudyTrials

__all__ = ["PrunerName", "SamplerName", "SearchCore", "SearchPlan"]

_SHARED_ORDER = 0x5ACE  # entropy word of the race's shared fold order (apart from per-configuration orders)


PrunerName = Literal["race", "wilcoxon", "median", "none"]
SamplerName = Literal["tpe", "random"]


class SearchPlan(BaseModel):
    """How a fold-wise search samples, orders, prunes and scores: the search's part of a sweep's
    settings (``SweepSettings`` extends it), and all the nested estimate repeats of a sweep."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    sampler: SamplerName = Field("tpe", description="Optuna sampler: tpe (default) or random.")
    startup_configs: int = Field(
        5, ge=0, description="Configurations sampled at random before TPE models the space."
    )
    pruner: PrunerName = Field(
        "race", description="Fold-level pruning: race (asynchronous successive halving over a shared fold order, "
        "ranked by the objective on the folds shared; see orchestration/search/racing.py), wilcoxon, median or none.",
    )
    p_threshold: float | Literal["pocock"] = Field(
        0.1,
        description="Wilcoxon p-value threshold, or 'pocock' for the Pocock-corrected nominal p of "
        "pocock_alpha over the sweep's folds (fewer false prunes, less saving).",
    )
    pocock_alpha: float = Field(0.1, gt=0.0, lt=1.0, description="Overall level when p_threshold='pocock'.")
    prune_startup_folds: int = Field(
        2, ge=0, description="Wilcoxon and median: folds a configuration must have before it may be pruned."
    )
    race_min_folds: int = Field(
        3, ge=1, description="Race: folds of the first rung (every configuration runs at least these)."
    )
    race_eta: float = Field(
        3.0, gt=1.0, description="Race: each rung has eta times the folds of the one before, and a "
        "configuration is promoted from a rung when it ranks in the top 1/eta of the configurations that reached it.",
    )
    objective: Objective = Field(
        Objective(),
        description="Configuration score told to Optuna, e.g. f1_pos:inner:pooled = metric (f1_pos or f1_macro), "
        "thresholds (inner: chosen on training subjects; fixed: 0.5; paper: test-tuned, leaky), aggregate "
        "(pooled or fold_mean).",
    )
    fold_metric: FoldScore | Literal["auto"] = Field(
        "auto",
        description="Per-fold score reported to Optuna and judged by the Wilcoxon and median pruners (a race ranks by the objective itself), e.g. f1_pos:inner = metric (f1_pos or f1_macro), "
        "thresholds (inner or fixed: a fold's F1 at its inner thresholds or at 0.5), or auto = the objective's F1 at its thresholds (inner, "
        "else 0.5), so pruning and selection judge the same thing.",
    )
    seed: int = Field(0, description="Seed of the sampler and of the per-configuration fold orders.")

    @field_validator("p_threshold")
    @classmethod
    def _p_in_range(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError(f"p_threshold={value}: expected a number in (0, 1) or 'pocock'")
        return value

    @property
    def fold_score(self) -> FoldScore:
        """``fold_metric`` with 'auto' replaced by the objective's metric and threshold mode."""
        return self.objective.fold_score if self.fold_metric == "auto" else self.fold_metric

    def plan(self) -> SearchPlan:
        """The search's part alone (of a ``SweepSettings``, say)."""
        return SearchPlan(**{name: getattr(self, name) for name in SearchPlan.model_fields})


class SearchCore:
    """Sampler, fold order, reports, pruning and score of one search over ``fold_ids``."""

    def __init__(self, plan: SearchPlan, fold_ids: Sequence[str], *, concurrent_configs: int = 1) -> None:
        self.plan = plan
        self.fold_ids = sorted(fold_ids)
        self.fold_index = {fid: i for i, fid in enumerate(self.fold_ids)}
        self.concurrent_configs = concurrent_configs

    @property
    def racing(self) -> bool:
        """Whether configurations race over one shared fold order (``orchestration.search.racing``)."""
        return self.plan.pruner == "race"

    @cached_property
    def race(self) -> FoldRace:
        """The race's shared order and rungs (the order is a function of the plan's seed only)."""
        rng = np.random.default_rng([self.plan.seed, _SHARED_ORDER])
        order = tuple(int(i) for i in rng.permutation(len(self.fold_ids)))
        return FoldRace(order=order, min_folds=self.plan.race_min_folds, eta=self.plan.race_eta)

    def pruner(self) -> BasePruner:
        """The Optuna pruner of the study (a race decides in the searcher, which records its decisions on
        the trials: Optuna's pruner sees one trial at a time and cannot hold a configuration waiting)."""
        p = self.plan
        if self.racing:
            return optuna.pruners.NopPruner()
        return make_pruner(p.pruner, p_threshold=p.p_threshold, startup_folds=p.prune_startup_folds,
                           n_folds=len(self.fold_ids), pocock_alpha=p.pocock_alpha)

    def configs_in_flight(self, slots: int, given: int | None = None) -> int:
        """Configurations in flight at once: ``given``, else 2, or when racing enough for ``slots`` fold
        slots to stay busy (configurations waiting at a rung are not in flight)."""
        if given is not None:
            return given
        if self.racing:
            return max(2, math.ceil(slots / max(1, self.plan.race_min_folds)) + 1)
        return 2

    def hand_out_limit(self, done: Sequence[str], passed: int = 0) -> int:
        """How many folds of its order a configuration that has finished the folds ``done`` (promoted past
        rung ``passed`` when racing) may have handed out: all of them, or when racing, up to the end of the
        rung it runs or waits at."""
        if not self.racing:
            return len(self.fold_ids)
        return self.race.hand_out_limit(self.steps(done), passed)

    def steps(self, done: Sequence[str]) -> set[int]:
        """Fold ids as the steps Optuna is told (their positions in the sorted fold list)."""
        return {self.fold_index[f] for f in done}

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

    def report(self, study: optuna.Study, trials: StudyTrials, number: int, fold_id: str,
               scores: Sequence[float | None]) -> bool:
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
        frozen = trials.get(number)
        if frozen.state != TrialState.RUNNING:
            return False
        trial = trials.live(study, number)
        if step not in frozen.intermediate_values:
            trial.report(value, step)
        return trial.should_prune()

    def value(self, results: Sequence[FoldResult]) -> float:
        """The objective of a configuration's folds (ValueError if the objective does not apply)."""
        return self.plan.objective.of_results(results)

    def value_or_nan(self, results: Sequence[FoldResult]) -> float:
        """``value``, NaN where the objective does not apply (a race ranks such a rung score last)."""
        try:
            return self.value(results)
        except ValueError:
            return math.nan
