"""Bootstrap intervals over subjects and the paired test, against naive computations with sklearn and an
exact enumeration of the signed-rank distribution."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import f1_score

from aullm_core.train.objective import Objective
from aullm_core.train.result import FoldResult
from aullm_core.train.uncertainty import (
    au_support,
    draw_indices,
    objective_interval,
    paired_comparison,
    per_au_intervals,
)

AUS = (1, 4, 12)


def _folds(seed: int, n_folds: int = 9, skill: float = 1.0) -> list[FoldResult]:
    """Folds of 3-7 clips whose probabilities lean towards the labels by ``skill``; AU1 absent from some."""
    rng = np.random.default_rng(seed)
    out = []
    for f in range(n_folds):
        n = int(rng.integers(3, 8))
        labels = (rng.uniform(size=(n, len(AUS))) < [0.15, 0.4, 0.5]).astype(int)
        probs = np.clip(0.5 + skill * (labels - 0.5) * rng.uniform(0, 1, size=labels.shape)
                        + rng.normal(0, 0.25, size=labels.shape), 0, 1)
        out.append(FoldResult(
            fold_id=f"sub{f:02d}", protocol="loso", aus=AUS, clip_ids=[f"c{f}_{i}" for i in range(n)],
            subjects=[f"sub{f:02d}"] * n, probs=probs, labels=labels, epoch_losses=[],
            inner_thresholds=rng.choice([0.3, 0.4, 0.5, 0.6], size=len(AUS)),
        ))
    return out


def _naive_per_au(objective: Objective, folds: list[FoldResult]) -> np.ndarray:
    """Per-AU score of a list of folds (repeats allowed) with sklearn, as the objective defines it."""
    average = "binary" if objective.metric == "f1_pos" else "macro"
    thr = [np.asarray(f.inner_thresholds) if objective.thresholds == "inner" else np.full(len(AUS), 0.5) for f in folds]
    if objective.aggregate == "pooled":
        y = np.concatenate([f.labels for f in folds])
        p = np.concatenate([f.probs >= t for f, t in zip(folds, thr)])
        return np.array([f1_score(y[:, k], p[:, k], average=average, zero_division=0) for k in range(len(AUS))])
    rows = []
    for f, t in zip(folds, thr):
        pred = f.probs >= t
        rows.append([np.nan if objective.metric == "f1_pos" and not f.labels[:, k].any()
                     else f1_score(f.labels[:, k], pred[:, k], average=average, zero_division=0)
                     for k in range(len(AUS))])
    return np.nanmean(np.array(rows, dtype=float), axis=0)


@pytest.mark.parametrize("text", ["f1_pos:inner:pooled", "f1_macro:fixed:pooled", "f1_pos:inner:fold_mean",
                                  "f1_macro:fixed:fold_mean"])
def test_the_interval_is_the_percentiles_of_the_objective_recomputed_on_resampled_subjects(text):
    objective = Objective.parse(text)
    folds = _folds(3)
    draws = 100  # sklearn per resample: enough to pin the percentiles, cheap enough to run
    got = objective_interval(objective, folds, draws=draws, seed=11)
    naive = [np.nanmean(_naive_per_au(objective, [folds[i] for i in row]))
             for row in draw_indices(len(folds), draws=draws, seed=11)]
    low, high = np.percentile(naive, [2.5, 97.5])
    assert got.value == pytest.approx(objective.of_results(folds))
    assert got.value == pytest.approx(np.nanmean(_naive_per_au(objective, folds)))
    assert (got.low, got.high) == pytest.approx((low, high))
    assert got.low < got.value < got.high


def test_per_au_intervals_and_support_match_sklearn_on_the_resamples():
    objective = Objective()
    folds = _folds(5)
    got = per_au_intervals(objective, folds, draws=200, seed=2)
    naive = np.array([_naive_per_au(objective, [folds[i] for i in row])
                      for row in draw_indices(len(folds), draws=200, seed=2)])
    point = _naive_per_au(objective, folds)
    for k, au in enumerate(AUS):
        assert got[au].value == pytest.approx(point[k])
        assert (got[au].low, got[au].high) == pytest.approx(tuple(np.percentile(naive[:, k], [2.5, 97.5])))
    labels = np.concatenate([f.labels for f in folds])
    assert au_support(folds) == {au: int(labels[:, k].sum()) for k, au in enumerate(AUS)}


def test_more_subjects_give_a_narrower_interval():
    objective = Objective()
    few = objective_interval(objective, _folds(7, n_folds=6))
    many = objective_interval(objective, _folds(7, n_folds=60))
    assert many.half_width < few.half_width


def _exact_signed_rank_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact p of the signed-rank statistic by enumerating every sign assignment (no ties)."""
    d = a - b
    d = d[d != 0]
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[d > 0].sum()
    total = ranks.sum()
    stats = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(d))]
    extreme = min(observed, total - observed)
    return min(1.0, 2 * np.mean([s <= extreme for s in stats]))


def test_the_paired_test_compares_shared_subjects_against_an_exact_enumeration():
    objective = Objective()
    good, weak = _folds(1, n_folds=10, skill=1.6), _folds(1, n_folds=10, skill=0.2)
    test = paired_comparison(objective, good, weak[:-1], draws=400, seed=4)  # the last subject only in `good`
    shared = good[:-1]
    assert test.n_subjects == 9
    assert test.difference.value == pytest.approx(objective.of_results(shared) - objective.of_results(weak[:-1]))
    fa = np.array([objective.fold_score.of(r) for r in shared])
    fb = np.array([objective.fold_score.of(r) for r in weak[:-1]])
    moved = np.abs(fa - fb)[fa != fb]
    assert len(set(np.round(moved, 12))) == len(moved) > 5  # no tied magnitudes: the exact p applies
    assert test.p_value == pytest.approx(_exact_signed_rank_p(fa, fb))
    assert test.wins == int((fa > fb).sum()) and test.losses == int((fa < fb).sum())
    naive = [np.mean(_naive_per_au(objective, [shared[i] for i in row]))
             - np.mean(_naive_per_au(objective, [weak[i] for i in row]))
             for row in draw_indices(9, draws=400, seed=4)]
    assert (test.difference.low, test.difference.high) == pytest.approx(tuple(np.percentile(naive, [2.5, 97.5])))


def test_a_configuration_against_itself_differs_by_zero_with_no_p_value():
    folds = _folds(2)
    test = paired_comparison(Objective(), folds, folds)
    assert test.difference.value == 0 and test.difference.low == 0 and test.difference.high == 0
    assert np.isnan(test.p_value) and test.wins == test.losses == 0


def test_the_baselines_score_as_the_label_only_reference_computes_them():
    from aullm_core.train.baselines import baseline_scores
    from aullm_core.train.metrics import loso_baselines

    folds = _folds(8, n_folds=12)
    labels = np.concatenate([f.labels for f in folds])
    subjects = np.concatenate([f.subjects for f in folds])
    reference = loso_baselines(labels, subjects, draws=400, seed=1)
    got = baseline_scores(Objective(), folds)
    assert got["all-positive"].value == pytest.approx(reference["all_positive"])
    assert got["all-positive"].low <= got["all-positive"].value <= got["all-positive"].high
    assert got["prior rate"].value == pytest.approx(reference["prior"], abs=0.03)


def test_an_au_no_test_clip_shows_has_no_f1_rather_than_zero():
    folds = _folds(4)
    for fold in folds:
        fold.labels[:, 0] = 0  # AU1 never shown
    got = per_au_intervals(Objective(), folds)
    assert np.isnan(got[1].value) and np.isnan(got[1].low) and "no positive" in str(got[1])
    assert not np.isnan(got[4].value)
