"""F1 scores per AU under three threshold protocols, pooled or averaged over folds.

Protocols (``Score.mode``):
- ``paper``: per AU, the threshold in 0.10, 0.15, ..., 0.85 that maximises macro F1 ON THE POOLED
  TEST predictions (the published protocol, method.md section 5). It reads the test labels, so the
  result is marked ``test_tuned=True``. Ties go to the lowest threshold. The same thresholds are
  used for the fold-mean aggregate.
- ``fixed``: one threshold for every AU (0.5 unless given).
- ``inner``: each fold's thresholds chosen on held-out TRAINING subjects (``FoldResult.inner_thresholds``);
  ``Score.thresholds`` then shows their mean over folds.
Aggregates: ``pooled`` binarises each fold with its thresholds, pools all test clips and scores
once; ``fold_mean`` scores each fold and averages. In ``fold_mean``, positive-class F1 of an AU is
averaged over the folds whose test clips show that AU (it is undefined elsewhere); macro F1 over
all folds.

F1 conventions are sklearn's: ``f1_pos`` = ``f1_score(y, yhat)`` (0 when there is no positive in
either), ``f1_macro`` = ``f1_score(y, yhat, average="macro")`` (mean over the classes present in
``y`` or ``yhat``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from aullm_core.train.result import FoldResult

__all__ = [
    "PAPER_THRESHOLDS",
    "Score",
    "best_thresholds",
    "f1_macro",
    "f1_pos",
    "fold_thresholds",
    "loso_baselines",
    "loso_baselines_per_au",
    "score_all",
    "score_arrays",
    "score_results",
    "trivial_scores",
]

#: 0.10, 0.15, ..., 0.85 (16 values), as the paper sweeps them.
PAPER_THRESHOLDS: tuple[float, ...] = tuple(round(0.10 + 0.05 * k, 2) for k in range(16))

#: How each AU's decision threshold is chosen, and how folds are combined (one definition: the
#: objective's grammar reads these too).
ThresholdMode = Literal["inner", "fixed", "paper"]
Aggregate = Literal["pooled", "fold_mean"]


def _counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[int, int, int, int]:
    t = np.asarray(y_true).astype(bool).ravel()
    p = np.asarray(y_pred).astype(bool).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values, y_pred {p.size}")
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    return tp, fp, fn, t.size - tp - fp - fn


def _f1(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def f1_pos(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Positive-class F1 of binary vectors (sklearn's ``f1_score`` with zero_division=0)."""
    tp, fp, fn, _ = _counts(y_true, y_pred)
    return _f1(tp, fp, fn)


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean of the positive- and negative-class F1 over the classes present (sklearn's macro)."""
    tp, fp, fn, tn = _counts(y_true, y_pred)
    present_pos = tp + fp + fn > 0
    present_neg = tn + fp + fn > 0
    scores = ([_f1(tp, fp, fn)] if present_pos else []) + ([_f1(tn, fn, fp)] if present_neg else [])
    return float(np.mean(scores)) if scores else 0.0


_METRICS = {"f1_pos": f1_pos, "f1_macro": f1_macro}


def best_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    metric: Literal["f1_macro", "f1_pos"] = "f1_macro",
    grid: Sequence[float] = PAPER_THRESHOLDS,
    fallback: float = 0.5,
    reference: bool = False,
) -> np.ndarray:
    """Per column, the grid threshold maximising ``metric``; ties go to the lowest (recall first).

    ``reference=True`` is the reference's search, kept for the paper protocol: the first best value
    in grid order, ``fallback`` only for a column without positives. The default rule, used for
    leak-free thresholds, never silently pins an AU to the grid floor: a column where no threshold
    finds a single true positive (every value ties at the same score, so the lowest would win and
    turn the AU into an all-positive guess) has nothing to tune on and gets ``fallback``, as a
    column without positive labels does.
    """
    fn = _METRICS[metric]
    out = np.full(probs.shape[1], fallback, dtype=np.float64)
    for k in range(probs.shape[1]):
        positive = labels[:, k] == 1
        if not positive.any():
            continue
        if not reference and not np.any(probs[positive, k] >= grid[0]):
            continue
        values = [fn(labels[:, k], probs[:, k] >= t) for t in grid]
        out[k] = grid[int(np.argmax(values))]
    return out


@dataclass
class Score:
    """F1 per AU and their means under one protocol; ``test_tuned`` flags leaky thresholds."""

    mode: str
    aggregate: str
    aus: tuple[int, ...]
    f1_pos: dict[int, float]
    f1_macro: dict[int, float]
    thresholds: dict[int, float]
    mean_f1_pos: float
    mean_f1_macro: float
    test_tuned: bool
    n_clips: int = 0
    n_folds: int = 0
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.aggregate}/{self.mode}"

    def as_flat_dict(self, prefix: str = "") -> dict[str, float]:
        """The one flattening of a score into metric names: ``{prefix}mean_f1_pos``, ``{prefix}f1_pos_AU04``,
        ``{prefix}threshold_AU04``, ...; undefined values (an AU without positives) are left out."""
        out = {f"{prefix}mean_f1_pos": self.mean_f1_pos, f"{prefix}mean_f1_macro": self.mean_f1_macro}
        for au in self.aus:  # AU04, not AU4: the names then sort as numbers (AU02 before AU12)
            out[f"{prefix}f1_pos_AU{au:02d}"] = self.f1_pos[au]
            out[f"{prefix}f1_macro_AU{au:02d}"] = self.f1_macro[au]
            if au in self.thresholds:
                out[f"{prefix}threshold_AU{au:02d}"] = self.thresholds[au]
        return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(v)}

    def to_dict(self) -> dict[str, object]:
        return {
            "protocol": self.name,
            "mode": self.mode,
            "aggregate": self.aggregate,
            "test_tuned": self.test_tuned,
            "n_clips": self.n_clips,
            "n_folds": self.n_folds,
            "mean_f1_pos": self.mean_f1_pos,
            "mean_f1_macro": self.mean_f1_macro,
            "per_au": {
                f"AU{au}": {
                    "f1_pos": self.f1_pos[au],
                    "f1_macro": self.f1_macro[au],
                    "threshold": self.thresholds[au],
                }
                for au in self.aus
            },
        }


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _make_score(mode: str, aggregate: str, aus: tuple[int, ...], pos: np.ndarray, mac: np.ndarray,
                thr: np.ndarray, *, n_clips: int, n_folds: int) -> Score:
    return Score(
        mode=mode,
        aggregate=aggregate,
        aus=aus,
        f1_pos={a: float(v) for a, v in zip(aus, pos)},
        f1_macro={a: float(v) for a, v in zip(aus, mac)},
        thresholds={a: float(v) for a, v in zip(aus, thr)},
        mean_f1_pos=_mean(list(pos)),
        mean_f1_macro=_mean(list(mac)),
        test_tuned=mode == "paper",
        n_clips=n_clips,
        n_folds=n_folds,
    )


def _check_folds(results: Sequence[FoldResult]) -> tuple[int, ...]:
    if not results:
        raise ValueError("no fold results to score")
    aus = tuple(results[0].aus)
    for r in results:
        if tuple(r.aus) != aus:
            raise ValueError(f"fold {r.fold_id} has AUs {r.aus}, expected {aus} like the first fold")
        if r.probs.shape != r.labels.shape or r.probs.shape[1] != len(aus):
            raise ValueError(f"fold {r.fold_id}: probs {r.probs.shape} and labels {r.labels.shape} differ")
    return aus


def fold_thresholds(results: Sequence[FoldResult], mode: ThresholdMode, aus: tuple[int, ...],
                     fixed_threshold: float) -> list[np.ndarray]:
    if mode == "fixed":
        return [np.full(len(aus), fixed_threshold) for _ in results]
    if mode == "inner":
        missing = [r.fold_id for r in results if r.inner_thresholds is None]
        if missing:
            raise ValueError(f"mode='inner' needs inner thresholds; folds {missing[:3]} have none")
        return [np.asarray(r.inner_thresholds, dtype=np.float64) for r in results]
    if mode == "paper":
        probs = np.concatenate([r.probs for r in results])
        labels = np.concatenate([r.labels for r in results])
        thr = best_thresholds(probs, labels, metric="f1_macro", fallback=PAPER_THRESHOLDS[0], reference=True)
        return [thr for _ in results]
    raise ValueError(f"unknown mode {mode!r}: expected 'paper', 'fixed' or 'inner'")


def score_results(
    results: Sequence[FoldResult],
    *,
    mode: ThresholdMode,
    aggregate: Aggregate,
    fixed_threshold: float = 0.5,
) -> Score:
    """Score folds' test predictions under one threshold protocol and aggregate."""
    aus = _check_folds(results)
    thresholds = fold_thresholds(results, mode, aus, fixed_threshold)
    preds = [r.probs >= t[None, :] for r, t in zip(results, thresholds)]
    mean_thr = np.round(np.mean(np.stack(thresholds), axis=0), 6)  # inner: the mean over folds
    n_clips = sum(len(r.probs) for r in results)
    if aggregate == "pooled":
        y = np.concatenate([r.labels for r in results])
        yhat = np.concatenate(preds)
        pos = np.array([f1_pos(y[:, k], yhat[:, k]) for k in range(len(aus))])
        mac = np.array([f1_macro(y[:, k], yhat[:, k]) for k in range(len(aus))])
    elif aggregate == "fold_mean":
        pos_rows, mac_rows = [], []
        for r, p in zip(results, preds):
            pos_rows.append([f1_pos(r.labels[:, k], p[:, k]) if r.labels[:, k].any() else np.nan
                             for k in range(len(aus))])
            mac_rows.append([f1_macro(r.labels[:, k], p[:, k]) for k in range(len(aus))])
        pos = np.array([_mean(col) for col in np.array(pos_rows).T])
        mac = np.array(mac_rows).mean(axis=0)
    else:
        raise ValueError(f"unknown aggregate {aggregate!r}: expected 'pooled' or 'fold_mean'")
    return _make_score(mode, aggregate, aus, pos, mac, mean_thr, n_clips=n_clips, n_folds=len(results))


def score_all(results: Sequence[FoldResult], *, fixed_threshold: float = 0.5) -> list[Score]:
    """Every protocol that applies: paper and fixed, inner when every fold carries inner thresholds."""
    modes: list[ThresholdMode] = ["paper", "fixed"]
    if all(r.inner_thresholds is not None for r in results):
        modes.append("inner")
    aggregates: tuple[Aggregate, ...] = ("pooled", "fold_mean")
    return [
        score_results(results, mode=m, aggregate=a, fixed_threshold=fixed_threshold)
        for a in aggregates
        for m in modes
    ]


def trivial_scores(results: Sequence[FoldResult]) -> list[Score]:
    """Pooled scores of the all-positive and all-negative predictors (a floor to beat)."""
    aus = _check_folds(results)
    y = np.concatenate([r.labels for r in results])
    out = []
    for name, value in (("all_positive", True), ("all_negative", False)):
        yhat = np.full(y.shape, value)
        pos = np.array([f1_pos(y[:, k], yhat[:, k]) for k in range(len(aus))])
        mac = np.array([f1_macro(y[:, k], yhat[:, k]) for k in range(len(aus))])
        thr = np.full(len(aus), 0.0 if value else 1.0)
        score = _make_score(name, "pooled", aus, pos, mac, thr, n_clips=len(y), n_folds=len(results))
        score.test_tuned = False
        out.append(score)
    return out


def score_arrays(
    probs: np.ndarray,
    labels: np.ndarray,
    aus: tuple[int, ...],
    *,
    folds: Sequence[str] | None = None,
) -> list[FoldResult]:
    """Wrap external predictions (n, n_aus) as FoldResults, one per distinct ``folds`` value."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.shape != labels.shape:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} differ in shape")
    groups = np.asarray(folds if folds is not None else ["all"] * len(probs)).astype(str)
    out = []
    for g in dict.fromkeys(groups.tolist()):
        sel = groups == g
        out.append(FoldResult(
            fold_id=g, protocol="external", aus=aus, clip_ids=[str(i) for i in np.flatnonzero(sel)],
            subjects=[g] * int(sel.sum()), probs=probs[sel], labels=labels[sel], epoch_losses=[],
        ))
    return out


def loso_baselines(labels: np.ndarray, subjects: np.ndarray, *, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """Mean pooled positive-class F1 over AUs of two label-free predictors under LOSO.

    ``all_positive`` calls every clip positive for every AU; ``prior`` calls a test clip positive
    with the positive rate of its fold's training subjects (the expected F1 over ``draws`` seeded
    draws). Neither looks at a frame: a model has to beat both to have learnt anything.
    """
    per_au = loso_baselines_per_au(labels, subjects, draws=draws, seed=seed)
    return {name: float(np.mean(values)) for name, values in per_au.items()}


def loso_baselines_per_au(labels: np.ndarray, subjects: np.ndarray, *, draws: int = 200,
                          seed: int = 0) -> dict[str, np.ndarray]:
    """``loso_baselines`` per AU: ``{'all_positive': (k,), 'prior': (k,)}`` pooled positive-class F1."""
    labels = np.asarray(labels).astype(bool)
    subjects = np.asarray(subjects).astype(str)
    n, k = labels.shape
    rates = np.zeros((n, k))
    for subject in np.unique(subjects):
        test = subjects == subject
        rates[test] = labels[~test].mean(axis=0) if (~test).any() else 0.0
    rng = np.random.default_rng(seed)
    prior = np.array([
        [f1_pos(labels[:, j], guess[:, j]) for j in range(k)]
        for guess in (rng.uniform(size=(n, k)) < rates for _ in range(draws))
    ])  # (draws, k)
    return {
        "all_positive": np.array([f1_pos(labels[:, j], np.ones(n, bool)) for j in range(k)]),
        "prior": prior.mean(axis=0),
    }
