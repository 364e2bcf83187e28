"""Label-free predictors scored exactly as a configuration is: the floor every LOSO table stands beside.

``all-positive`` calls every clip positive for every AU; ``prior rate`` calls a test clip positive with
the positive rate of its fold's training subjects (the other folds), averaged over seeded draws. Both
are turned into ``FoldResult``s on the configuration's own test clips, so the objective, its threshold
mode and aggregate, and its bootstrap interval apply to them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from aullm_core.train.objective import Objective
from aullm_core.train.result import FoldResult
from aullm_core.train.uncertainty import Interval, objective_interval

__all__ = ["BASELINES", "baseline_results", "baseline_scores"]

BASELINES = ("all-positive", "prior rate")
_PRIOR_DRAWS = 50


def _as_decisions(result: FoldResult, decisions: np.ndarray) -> FoldResult:
    """The fold with its probabilities replaced by hard 0/1 decisions (1.0 clears every threshold but none
    above 1; 0.0 clears none), its thresholds kept."""
    return replace(result, probs=decisions.astype(np.float64))


def baseline_results(results: Sequence[FoldResult], name: str, *, seed: int = 0) -> list[FoldResult]:
    """The folds as the baseline ``name`` would have predicted them (one seeded draw for 'prior rate')."""
    if name == "all-positive":
        return [_as_decisions(r, np.ones_like(r.probs)) for r in results]
    if name != "prior rate":
        raise ValueError(f"unknown baseline {name!r}: expected one of {BASELINES}")
    rng = np.random.default_rng(seed)
    labels = [np.asarray(r.labels).astype(bool) for r in results]
    out = []
    for i, r in enumerate(results):
        train = [lab for j, lab in enumerate(labels) if j != i]
        rate = np.concatenate(train).mean(axis=0) if train else np.zeros(labels[i].shape[1])
        out.append(_as_decisions(r, rng.uniform(size=labels[i].shape) < rate[None, :]))
    return out


def baseline_scores(objective: Objective, results: Sequence[FoldResult], *, seed: int = 0) -> dict[str, Interval]:
    """Each baseline's objective on these folds: all-positive with its bootstrap interval, prior rate as
    the mean over seeded draws (its interval is the spread over draws and subjects, not computed)."""
    results = list(results)
    if not results:
        return {}
    out = {"all-positive": objective_interval(objective, baseline_results(results, "all-positive"))}
    prior = [objective.of_results(baseline_results(results, "prior rate", seed=seed + k)) for k in range(_PRIOR_DRAWS)]
    out["prior rate"] = Interval(float(np.mean(prior)), math.nan, math.nan, len(results))
    return out
