"""The one grammar for scores: ``Objective`` and ``FoldScore`` parse, print, validate inside settings and
compute what an independent sklearn computation gives."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from aullm_core.train.objective import FoldScore, Objective
from aullm_core.train.result import FoldResult
from orchestration.sweep.settings import SweepSettings

AUS = (1, 2, 4)


def _fold(fold_id: str, rng: np.random.Generator, n: int = 12) -> FoldResult:
    labels = rng.integers(0, 2, (n, len(AUS)))
    labels[0], labels[1] = 1, 0  # both classes in every AU
    probs = np.clip(labels * 0.3 + rng.uniform(0, 0.7, (n, len(AUS))), 0, 1)
    return FoldResult(fold_id=fold_id, protocol="loso", aus=AUS, clip_ids=[f"{fold_id}_{i}" for i in range(n)],
                      subjects=[fold_id] * n, probs=probs, labels=labels, epoch_losses=[1.0],
                      inner_thresholds=np.array([0.4, 0.55, 0.6]))


@pytest.mark.parametrize("text", ["f1_pos:inner:pooled", "f1_macro:fixed:fold_mean", "f1_pos:paper:pooled"])
def test_objective_round_trips_through_its_text_and_settings(text: str, tmp_path) -> None:
    objective = Objective.parse(text)
    assert str(objective) == text and Objective.parse(str(objective)) == objective
    settings = SweepSettings(space=tmp_path / "s.yaml", cache=tmp_path / "c.h5", objective=text)
    assert settings.objective == objective
    assert SweepSettings.model_validate_json(settings.model_dump_json()).objective == objective
    assert settings.model_dump(mode="json")["objective"] == text


@pytest.mark.parametrize("text", ["f1:inner:pooled", "f1_pos:inner", "f1_pos:inner:pooled:x", "f1_pos:test:pooled"])
def test_a_malformed_objective_is_refused_in_one_line(text: str, tmp_path) -> None:
    with pytest.raises(ValueError, match="expected <f1_pos\\|f1_macro>:<inner\\|fixed\\|paper>") as err:
        Objective.parse(text)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError):
        SweepSettings(space=tmp_path / "s.yaml", cache=tmp_path / "c.h5", objective=text)


def test_auto_fold_metric_judges_what_the_objective_judges(tmp_path) -> None:
    base = {"space": tmp_path / "s.yaml", "cache": tmp_path / "c.h5"}
    assert SweepSettings(**base).fold_score == FoldScore.parse("f1_pos:inner")
    assert SweepSettings(**base, objective="f1_macro:paper:pooled").fold_score == FoldScore.parse("f1_macro:fixed")
    chosen = SweepSettings(**base, fold_metric="f1_macro:inner")
    assert chosen.fold_score == FoldScore(metric="f1_macro", thresholds="inner")
    with pytest.raises(ValueError):
        SweepSettings(**base, fold_metric="f1_pos_fixed")


def test_objective_values_match_sklearn_on_pooled_and_per_fold_predictions() -> None:
    rng = np.random.default_rng(3)
    folds = [_fold(f"sub{i:02d}", rng) for i in range(4)]
    labels = np.concatenate([f.labels for f in folds])
    inner_pred = np.concatenate([f.probs >= f.inner_thresholds for f in folds])
    pooled = np.mean([f1_score(labels[:, k], inner_pred[:, k]) for k in range(len(AUS))])
    assert Objective.parse("f1_pos:inner:pooled").of_results(folds) == pytest.approx(pooled)
    fold_mean = np.mean([np.mean([f1_score(f.labels[:, k], f.probs[:, k] >= 0.5, average="macro")
                                  for k in range(len(AUS))]) for f in folds])
    assert Objective.parse("f1_macro:fixed:fold_mean").of_results(folds) == pytest.approx(fold_mean)
    assert FoldScore.parse("f1_pos:inner").of(folds[0]) == pytest.approx(
        np.mean([f1_score(folds[0].labels[:, k], folds[0].probs[:, k] >= folds[0].inner_thresholds[k])
                 for k in range(len(AUS))]))


def test_the_objective_has_one_parser() -> None:
    """No other module parses the objective's text (the acceptance check of the one-contract issue)."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    offenders = [
        str(p.relative_to(root)) for folder in ("aullm_core", "orchestration") for p in (root / folder).rglob("*.py")
        if p.name != "objective.py" and ("(pooled|fold_mean)" in p.read_text() or '.split(":")' in p.read_text())
    ]
    assert offenders == []
