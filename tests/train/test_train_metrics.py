"""Scoring against sklearn's f1_score, including the paper's threshold sweep."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from aullm_core.train.metrics import (
    PAPER_THRESHOLDS,
    best_thresholds,
    f1_macro,
    f1_pos,
    score_all,
    score_results,
    trivial_scores,
)
from aullm_core.train.objective import FoldScore
from aullm_core.train.result import FoldResult

AUS = (1, 4, 12)


def _folds(seed: int = 0, n_folds: int = 4, inner: bool = True) -> list[FoldResult]:
    rng = np.random.default_rng(seed)
    out = []
    for f in range(n_folds):
        n = int(rng.integers(5, 15))
        labels = (rng.random((n, len(AUS))) < [0.2, 0.5, 0.3]).astype(int)
        probs = np.clip(0.35 * labels + rng.random((n, len(AUS))) * 0.7, 0, 1)
        out.append(FoldResult(
            fold_id=f"s{f}", protocol="loso", aus=AUS, clip_ids=[f"c{i}" for i in range(n)],
            subjects=[f"s{f}"] * n, probs=probs, labels=labels, epoch_losses=[1.0],
            inner_thresholds=rng.choice(PAPER_THRESHOLDS, size=len(AUS)) if inner else None,
        ))
    return out


def test_paper_grid():
    assert PAPER_THRESHOLDS[0] == 0.10 and PAPER_THRESHOLDS[-1] == 0.85 and len(PAPER_THRESHOLDS) == 16


@pytest.mark.parametrize("seed", range(25))
def test_f1_match_sklearn_on_random_vectors(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    y = (rng.random(n) < rng.random()).astype(int)
    yhat = (rng.random(n) < rng.random()).astype(int)
    assert f1_pos(y, yhat) == pytest.approx(f1_score(y, yhat, zero_division=0))
    assert f1_macro(y, yhat) == pytest.approx(f1_score(y, yhat, average="macro", zero_division=0))


def test_f1_edge_cases_match_sklearn():
    for y, yhat in [([0, 0, 0], [0, 0, 0]), ([1, 1], [1, 1]), ([0, 0], [1, 1]), ([1, 0], [0, 0])]:
        assert f1_pos(y, yhat) == pytest.approx(f1_score(y, yhat, zero_division=0))
        assert f1_macro(y, yhat) == pytest.approx(f1_score(y, yhat, average="macro", zero_division=0))


def test_all_negative_scores_about_half_on_rare_au():
    y = np.array([1] + [0] * 19)
    assert f1_macro(y, np.zeros(20)) == pytest.approx(f1_score(y, np.zeros(20), average="macro"))
    assert 0.47 < f1_macro(y, np.zeros(20)) < 0.5


def test_paper_mode_equals_brute_force_sweep_with_sklearn():
    folds = _folds()
    score = score_results(folds, mode="paper", aggregate="pooled")
    probs = np.concatenate([r.probs for r in folds])
    labels = np.concatenate([r.labels for r in folds])
    assert score.test_tuned and score.name == "pooled/paper"
    for k, au in enumerate(AUS):
        sweep = [f1_score(labels[:, k], probs[:, k] >= t, average="macro") for t in PAPER_THRESHOLDS]
        best = int(np.argmax(sweep))
        assert score.thresholds[au] == PAPER_THRESHOLDS[best]
        assert score.f1_macro[au] == pytest.approx(sweep[best])
        assert score.f1_pos[au] == pytest.approx(f1_score(labels[:, k], probs[:, k] >= PAPER_THRESHOLDS[best]))
    assert score.mean_f1_macro == pytest.approx(np.mean(list(score.f1_macro.values())))


def test_fixed_pooled_and_fold_mean_against_sklearn():
    folds = _folds(1)
    pooled = score_results(folds, mode="fixed", aggregate="pooled", fixed_threshold=0.4)
    labels = np.concatenate([r.labels for r in folds])
    probs = np.concatenate([r.probs for r in folds])
    for k, au in enumerate(AUS):
        assert pooled.f1_pos[au] == pytest.approx(f1_score(labels[:, k], probs[:, k] >= 0.4))
        assert pooled.thresholds[au] == 0.4
    assert not pooled.test_tuned
    mean = score_results(folds, mode="fixed", aggregate="fold_mean")
    for k, au in enumerate(AUS):
        macro = [f1_score(r.labels[:, k], r.probs[:, k] >= 0.5, average="macro") for r in folds]
        pos = [f1_score(r.labels[:, k], r.probs[:, k] >= 0.5) for r in folds if r.labels[:, k].any()]
        assert mean.f1_macro[au] == pytest.approx(np.mean(macro))
        assert mean.f1_pos[au] == pytest.approx(np.mean(pos))


def test_inner_mode_uses_each_folds_thresholds():
    folds = _folds(2)
    score = score_results(folds, mode="inner", aggregate="pooled")
    labels = np.concatenate([r.labels for r in folds])
    preds = np.concatenate([r.probs >= r.inner_thresholds[None, :] for r in folds])
    for k, au in enumerate(AUS):
        assert score.f1_pos[au] == pytest.approx(f1_score(labels[:, k], preds[:, k]))
        assert score.thresholds[au] == pytest.approx(np.mean([r.inner_thresholds[k] for r in folds]))
    assert not score.test_tuned


def test_score_all_lists_inner_only_when_available():
    names = {s.name for s in score_all(_folds(3))}
    assert names == {f"{a}/{m}" for a in ("pooled", "fold_mean") for m in ("paper", "fixed", "inner")}
    names = {s.name for s in score_all(_folds(3, inner=False))}
    assert "pooled/inner" not in names and "pooled/paper" in names
    with pytest.raises(ValueError, match="inner thresholds"):
        score_results(_folds(3, inner=False), mode="inner", aggregate="pooled")


def test_trivial_predictors():
    folds = _folds(4)
    labels = np.concatenate([r.labels for r in folds])
    pos, neg = trivial_scores(folds)
    for k, au in enumerate(AUS):
        assert pos.f1_pos[au] == pytest.approx(f1_score(labels[:, k], np.ones(len(labels))))
        assert neg.f1_macro[au] == pytest.approx(f1_score(labels[:, k], np.zeros(len(labels)), average="macro"))
        assert neg.f1_pos[au] == 0.0


def test_best_thresholds_never_pin_an_undetected_au_to_the_grid_floor():
    grid = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    # AU 0: 0.3..0.6 separate the classes perfectly: ties go to the lowest (recall first), 0.3
    # AU 1: the only positive scores below every threshold: every value ties at F1+ 0 and the
    # reference's search takes 0.1 (all clips positive); the leak-free rule falls back instead
    probs = np.array([[0.65, 0.05], [0.25, 0.2], [0.22, 0.3], [0.9, 0.01]])
    labels = np.array([[1, 1], [0, 0], [0, 0], [1, 0]])
    f1s = [[f1_score(labels[:, k], probs[:, k] >= t) for t in grid] for k in range(2)]
    assert [t for t, v in zip(grid, f1s[0]) if v == max(f1s[0])] == [0.3, 0.4, 0.5, 0.6]
    assert max(f1s[1]) == 0.0
    thr = best_thresholds(probs, labels, metric="f1_pos", grid=grid, fallback=0.5)
    assert thr[0] == 0.3 and thr[1] == 0.5
    reference = best_thresholds(probs, labels, metric="f1_pos", grid=grid, reference=True)
    assert reference[0] == 0.3 and reference[1] == 0.1


def test_best_thresholds_fallback_without_positives():
    probs = np.array([[0.2, 0.9], [0.3, 0.1]])
    labels = np.array([[0, 1], [0, 0]])
    thr = best_thresholds(probs, labels, metric="f1_pos")
    assert thr[0] == 0.5 and thr[1] > 0.1


def test_fold_score_and_flat_dict():
    fold = _folds(5)[0]
    want = np.mean([f1_score(fold.labels[:, k], fold.probs[:, k] >= 0.5) for k in range(len(AUS))])
    assert FoldScore().of(fold) == pytest.approx(want)
    inner = np.mean([f1_score(fold.labels[:, k], fold.probs[:, k] >= fold.inner_thresholds[k], average="macro")
                     for k in range(len(AUS))])
    assert FoldScore.parse("f1_macro:inner").of(fold) == pytest.approx(inner)
    with pytest.raises(ValueError, match="expected <f1_pos"):
        FoldScore.parse("accuracy:fixed")
    score = score_results([fold], mode="fixed", aggregate="pooled")
    flat = score.as_flat_dict("cv/")
    assert flat["cv/f1_pos_AU04"] == score.f1_pos[4] and flat["cv/mean_f1_macro"] == score.mean_f1_macro
    assert all(np.isfinite(v) for v in flat.values())


def test_mismatched_aus_rejected():
    a, b = _folds(6, n_folds=2)
    b.aus = (1, 4, 15)
    with pytest.raises(ValueError, match="AUs"):
        score_results([a, b], mode="fixed", aggregate="pooled")


def test_loso_baselines_against_sklearn_and_a_naive_prior():
    from sklearn.model_selection import LeaveOneGroupOut

    from aullm_core.train.metrics import loso_baselines

    rng = np.random.default_rng(3)
    labels = (rng.uniform(size=(60, 3)) < [0.1, 0.3, 0.6]).astype(int)
    subjects = np.repeat([f"s{i}" for i in range(6)], 10)
    got = loso_baselines(labels, subjects, draws=50, seed=7)
    assert got["all_positive"] == pytest.approx(
        np.mean([f1_score(labels[:, k], np.ones(60)) for k in range(3)])
    )
    # naive: the same seeded draws, rates from LeaveOneGroupOut's training folds
    rates = np.zeros((60, 3))
    for train, test in LeaveOneGroupOut().split(labels, groups=subjects):
        rates[test] = labels[train].mean(axis=0)
    draws = np.random.default_rng(7)
    naive = np.mean([np.mean([f1_score(labels[:, k], g[:, k], zero_division=0.0) for k in range(3)])
                     for g in (draws.uniform(size=(60, 3)) < rates for _ in range(50))])
    assert got["prior"] == pytest.approx(naive)
    assert 0 < got["prior"] < got["all_positive"]
