"""Nested LOSO: an estimate of the whole search procedure that is not selection-biased.

A sweep picks the configuration with the best LOSO score and that same score is reported, so it
is optimistic (the maximum of several noisy estimates on the same folds). Here, for each outer
subject s:
1. the search runs on the other subjects only: an Optuna study (same space, sampler, pruner,
   objective and per-fold score as the sweep; ``budget`` configurations) where each configuration
   is scored by LOSO over the remaining subjects (inner folds; s is never seen);
2. the best complete configuration is retrained on every subject but s and tested on s.
The outer test predictions of all outer subjects are pooled and scored under every protocol
variant: that is the estimate of "run this search, deploy its winner" on new subjects.

The inner search is a plain sequential Optuna loop on the driver (no Ray): the same rules as the
sweep's searcher (folds in a seeded shuffled order; Wilcoxon pruning with the fold's rank as its
step; pruned configurations told PRUNED; the winner is the best COMPLETE configuration). Every
trained fold is recorded in a fold store (protocol ``nested:<outer subject>`` for inner folds,
``nested-outer`` for the retrained winners), so an interrupted run resumes without retraining.
Cost: outer_folds x budget x (subjects - 1) inner folds at most (less with pruning), plus one
training per outer subject.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
from pydantic import Field
from tqdm.auto import tqdm

from aullm_core.config import ExperimentConfig
from aullm_core.data.records import ClipSet
from aullm_core.data.splits import LOSO, Fold, loso_folds
from aullm_core.errors import ConfigError
from aullm_core.train.metrics import Score
from aullm_core.train.result import FoldResult
from orchestration.folds.store import FoldStore
from orchestration.folds.trainable import FoldFn
from orchestration.results.tables import variant_scores
from orchestration.search.plan import SearchCore, SearchPlan
from orchestration.search.space import SearchSpace
from orchestration.search.trials import StudyTrials

__all__ = ["NestedPlan", "NestedResult", "OuterResult", "nested_loso", "outer_subjects"]

log = logging.getLogger(__name__)

OUTER_PROTOCOL = "nested-outer"


class NestedPlan(SearchPlan):
    """The search procedure to estimate (``SearchPlan``, as in the sweep) and the budget of the estimate.

    Args:
        budget: configurations proposed by each inner search.
        outer_folds: outer subjects to evaluate (None = every subject; fewer = cheaper, the
            estimate then covers only those subjects, chosen at random with ``seed``).
    """

    budget: int = Field(ge=1, description="Configurations proposed by each inner search.")
    outer_folds: int | None = Field(None, ge=1, description="Outer subjects to evaluate (None: all).")

    @classmethod
    def from_settings(cls, settings: SearchPlan, *, budget: int | None = None,
                      outer_folds: int | None = None) -> NestedPlan:
        """The plan that repeats a sweep's procedure (``SweepSettings``), budget overridable."""
        return cls(**settings.plan().model_dump(), budget=budget or getattr(settings, "n_configs", 1),
                   outer_folds=outer_folds)


@dataclass
class OuterResult:
    """One outer fold: what the inner search chose and how it did on the unseen subject."""

    subject: str
    chosen_fp: str
    chosen_overrides: dict[str, Any]
    inner_objective: float
    configs_tried: int
    configs_pruned: int
    inner_folds_trained: int
    result: FoldResult


@dataclass
class NestedResult:
    """Outer folds and the pooled scores of their test predictions."""

    plan: NestedPlan
    n_subjects: int
    outer: list[OuterResult] = field(default_factory=list)

    @property
    def scores(self) -> dict[tuple[str, str], Score]:
        return variant_scores([o.result for o in self.outer])

    def estimate(self) -> float:
        """The plan's objective on the pooled outer predictions (the unbiased counterpart of the
        sweep's best LOSO score)."""
        return self.plan.objective.of_results([o.result for o in self.outer])

    def table(self) -> pd.DataFrame:
        """One row per outer subject."""
        rows = []
        for o in self.outer:
            rows.append({
                "outer_subject": o.subject, "chosen_config": o.chosen_fp,
                "inner_objective": o.inner_objective,
                "outer_objective": self.plan.objective.of_results([o.result]),
                "configs_tried": o.configs_tried, "configs_pruned": o.configs_pruned,
                "inner_folds_trained": o.inner_folds_trained,
                "chosen_overrides": ", ".join(f"{k}={v}" for k, v in o.chosen_overrides.items()),
            })
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """One row per protocol variant: mean F1 (positive class, macro) of the pooled outer folds."""
        rows = [{"mode": mode, "aggregate": agg, "test_tuned": s.test_tuned, "mean_f1_pos": s.mean_f1_pos,
                 "mean_f1_macro": s.mean_f1_macro, "n_outer_folds": s.n_folds}
                for (mode, agg), s in self.scores.items()]
        return pd.DataFrame(rows)


def outer_subjects(subjects: Sequence[str], k: int | None, seed: int) -> list[str]:
    """All subjects (sorted), or ``k`` of them drawn at random (seeded), kept in sorted order."""
    every = sorted(set(map(str, subjects)))
    if k is None or k >= len(every):
        return every
    rng = np.random.default_rng([seed, 7919])
    return sorted(every[i] for i in rng.choice(len(every), size=k, replace=False))


class _InnerSearch:
    """The search on every subject but ``outer``, with folds cached in ``store``."""

    def __init__(self, clips: ClipSet, space: SearchSpace, plan: NestedPlan, outer: str, outer_index: int,
                 store: FoldStore, fold_fn: FoldFn, device: str, bar: tqdm) -> None:
        subjects = clips.subjects.astype(str)
        self.clips, self.space, self.plan, self.outer = clips, space, plan, outer
        self.store, self.fold_fn, self.device, self.bar = store, fold_fn, device, bar
        self.protocol = f"nested:{outer}"
        held_out = np.flatnonzero(subjects == outer)
        self.folds = {  # LOSO over every subject but the outer one
            f.fold_id: replace(f, train_idx=np.setdiff1d(f.train_idx, held_out))
            for f in loso_folds(clips) if f.fold_id != outer
        }
        self.core = SearchCore(plan.plan().model_copy(update={"seed": plan.seed * 1000 + outer_index}),
                               list(self.folds))
        self.inner_ids = self.core.fold_ids
        self.trials = StudyTrials(optuna.storages.InMemoryStorage(), f"nested-{outer}")
        self.study = self.trials.open(sampler=self.core.sampler_for(0), pruner=self.core.pruner())
        self.trained = 0
        self.pruned = 0
        self.rung_scores: dict[int, dict[int, float]] = {}  # racing: rung -> configuration number -> score

    def _fold(self, fp: str, config: ExperimentConfig, sid: str) -> FoldResult:
        result, trained = self.store.get_or_train(
            fp, self.protocol, sid,
            lambda: replace(self.fold_fn(self.clips, self.clips, self.folds[sid], config, device=self.device,
                                         progress=False), protocol=self.protocol),
            config.model_dump(mode="json"))
        self.trained += trained
        return result

    def _evaluate(self, trial: optuna.Trial, fp: str, config: ExperimentConfig) -> list[FoldResult] | None:
        """Inner LOSO of one configuration; None when the pruner stops it."""
        order = self.core.fold_order(trial.number)
        results: list[FoldResult] = []
        scores: list[float | None] = []
        for done, sid in enumerate(order, start=1):
            result = self._fold(fp, config, sid)
            self.bar.update(1)
            results.append(result)
            scores.append(self.core.fold_value(result))
            stop = self._race_stops(trial.number, results) if self.core.racing else \
                self.core.report(self.study, self.trials, trial.number, sid, scores)
            if stop and done < len(order):
                finite = [s for s in scores if s is not None]
                trial.set_user_attr("partial_mean", float(np.mean(finite)))
                self.bar.update(len(order) - done)  # the folds it will not run
                return None
        return results

    def _race_stops(self, number: int, results: list[FoldResult]) -> bool:
        """At a rung, whether the race (one configuration at a time) stops this configuration there."""
        rung = len(results)
        if rung not in self.core.race.rungs[:-1]:
            return False
        at_rung = self.rung_scores.setdefault(rung, {})
        at_rung[number] = self.core.value_or_nan(results)
        return not self.core.race.goes_on_alone(number, at_rung)

    def run(self) -> tuple[str, dict[str, Any], ExperimentConfig, float, int]:
        """Budget configurations; returns the best complete one (fp, overrides, config, objective, tried)."""
        best: tuple[float, str, dict[str, Any], ExperimentConfig] | None = None
        tried = 0
        for _ in range(self.plan.budget):
            self.study.sampler = self.core.sampler_for(len(self.study.trials))
            trial = self.study.ask()
            try:
                overrides = self.space.sample(trial)
                config = self.space.build(overrides)
            except ConfigError as err:
                log.warning("nested: configuration %d is not valid, told FAIL: %s", trial.number, err)
                self.study.tell(trial, state=TrialState.FAIL)
                self.bar.update(len(self.inner_ids))
                continue
            tried += 1
            fp = config.fingerprint()
            results = self._evaluate(trial, fp, config)
            if results is None:
                self.pruned += 1
                self.study.tell(trial, state=TrialState.PRUNED)
                continue
            value = self.core.value(results)
            if not math.isfinite(value):
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            self.study.tell(trial, value)
            if best is None or value > best[0]:
                best = (value, fp, overrides, config)
        if best is None:
            raise ConfigError(f"nested: no configuration completed the inner search for outer subject {self.outer}")
        value, fp, overrides, config = best
        return fp, overrides, config, value, tried


def nested_loso(clips: ClipSet, space: SearchSpace, plan: NestedPlan, *, store: FoldStore,
                fold_fn: FoldFn, device: str = "cpu", progress: bool = True) -> NestedResult:
    """Run the nested estimate (see the module docstring); ``store`` caches every trained fold."""
    subjects = clips.subjects.astype(str)
    n_subjects = len(set(subjects.tolist()))
    if n_subjects < 3:
        raise ValueError(f"nested LOSO needs at least 3 subjects, the cache has {n_subjects}")
    outers = outer_subjects(subjects.tolist(), plan.outer_folds, plan.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = len(outers) * (plan.budget * (n_subjects - 1) + 1)
    out = NestedResult(plan=plan, n_subjects=n_subjects)
    with tqdm(total=total, desc="nested LOSO (folds)", unit="fold", disable=not progress) as bar:
        for k, outer in enumerate(outers):
            bar.set_postfix_str(f"outer {outer} ({k + 1}/{len(outers)})")
            search = _InnerSearch(clips, space, plan, outer, k, store, fold_fn, device, bar)
            fp, overrides, config, inner_value, tried = search.run()
            fold = Fold(outer, LOSO, np.flatnonzero(subjects != outer), np.flatnonzero(subjects == outer),
                        tuple(clips.aus))
            result, _ = store.get_or_train(
                fp, OUTER_PROTOCOL, outer,
                lambda fold=fold, config=config: replace(
                    fold_fn(clips, clips, fold, config, device=device, progress=False), protocol=OUTER_PROTOCOL),
                config.model_dump(mode="json"))
            bar.update(1)
            out.outer.append(OuterResult(
                subject=outer, chosen_fp=fp, chosen_overrides=overrides, inner_objective=inner_value,
                configs_tried=tried, configs_pruned=search.pruned, inner_folds_trained=search.trained,
                result=result,
            ))
            log.info("nested: outer %s chose %s (inner %.3f)", outer, fp, inner_value)
    return out
