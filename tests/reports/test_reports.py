"""Report tables, plots and the nested LOSO estimate, on real fold stores and a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _train_data import tiny_clipset
from PIL import Image
from sklearn.metrics import f1_score

from aullm_core.train.objective import Objective
from aullm_core.train.result import FoldResult
from orchestration.folds.store import FoldStore
from orchestration.reports.nested import OUTER_PROTOCOL, NestedPlan, nested_loso, outer_subjects
from orchestration.reports.report import build_report
from orchestration.results import tables
from orchestration.search.space import space_from_dict
from orchestration.sweep.folder import SweepFolder, data_record
from orchestration.sweep.settings import SweepSettings

DATA_FP = "0123456789abcdef"
from orchestration.tracking.mlflow_tracker import MlflowTracker, default_tracking_uri

AUS = (1, 4, 12)
SUBJECTS = ["sub01", "sub02", "sub03", "sub04"]


def fold(subject: str, quality: float, seed: int, protocol: str = "loso") -> FoldResult:
    """Predictions that follow the labels with weight ``quality`` (higher = better)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((10, len(AUS))) < 0.4).astype(np.uint8)
    labels[0] = 1
    probs = np.clip(quality * labels + (1 - quality) * rng.random((10, len(AUS))), 0, 1)
    return FoldResult(subject, protocol, AUS, [f"{subject}_{i}" for i in range(10)], [subject] * 10, probs, labels,
                      [1.0, 0.5], inner_thresholds=rng.uniform(0.3, 0.6, len(AUS)), duration_s=2.0)


def config(lr: float) -> dict:
    return {"train": {"lr": lr, "epochs": 3}, "model": {"dropout": 0.3}}


def fill_store(store: FoldStore) -> dict[str, list[FoldResult]]:
    """Config 'good' complete, 'bad' complete, 'partial' pruned after 2 folds with a high score."""
    out = {}
    for i, (fp, quality, n) in enumerate((("good" * 4, 0.6, 4), ("bad0" * 4, 0.2, 4), ("part" * 4, 0.9, 2))):
        out[fp] = [fold(s, quality, seed=10 * i + k) for k, s in enumerate(SUBJECTS[:n])]
        for r in out[fp]:
            store.put(fp, "loso", r.fold_id, r, config(10.0 ** -(i + 2)))
    cross = fold("casme2->samm", 0.5, 99, protocol="cross")
    store.put("good" * 4, "cross", cross.fold_id, cross, config(1e-2))
    return out


def pooled_f1(results: list[FoldResult], *, inner: bool) -> list[float]:
    """Independent reference: sklearn F1 per AU on pooled binarised predictions."""
    y = np.concatenate([r.labels for r in results])
    yhat = np.concatenate([r.probs >= (r.inner_thresholds if inner else 0.5) for r in results])
    return [f1_score(y[:, k], yhat[:, k], zero_division=0) for k in range(len(AUS))]


def test_leaderboard_ranks_marks_and_matches_sklearn(tmp_path: Path) -> None:
    store = FoldStore(tmp_path / "folds")
    results = fill_store(store)
    board = tables.leaderboard(store, objective="f1_pos:inner:pooled", n_folds_total=4,
                               states={"part" * 4: "pruned", "good" * 4: "complete"})
    assert board["config_fp"].tolist() == ["good" * 4, "bad0" * 4, "part" * 4]  # incomplete last
    assert board["status"].tolist() == ["complete", "complete", "pruned"]
    assert board["objective"][2] > board["objective"][0]  # ...despite its higher partial score
    assert board["selection_biased"].tolist() == [True, False, False]
    assert board.loc[0, "objective"] == pytest.approx(np.mean(pooled_f1(results["good" * 4], inner=True)))
    assert board.loc[0, "fixed_pooled_f1_pos"] == pytest.approx(np.mean(pooled_f1(results["good" * 4], inner=False)))
    assert board.loc[1, "folds_done"] == 4 and board.loc[2, "folds_done"] == 2
    assert "train.lr" in board.columns and "model.dropout" not in board.columns  # only what varies
    assert not np.isnan(board.loc[0, "cross_casme2_to_samm_fixed_f1_pos"])
    md = tables.to_markdown(board)
    assert "test-tuned pooled F1-macro" in md and "selection-biased" in md
    assert board.loc[0, "objective_low"] < board.loc[0, "objective"] < board.loc[0, "objective_high"]
    assert "objective [95% CI]" in tables.to_markdown(tables.compact(board))
    with pytest.raises(ValueError, match="objective"):
        tables.leaderboard(store, objective="accuracy")


def test_per_au_table_and_files(tmp_path: Path) -> None:
    store = FoldStore(tmp_path / "folds")
    results = fill_store(store)["bad0" * 4]
    table = tables.per_au_table(results)
    ref = pooled_f1(results, inner=False)
    assert table.loc[[f"AU{a}" for a in AUS], "fixed_pooled_f1_pos"].tolist() == pytest.approx(ref)
    assert table.loc["mean", "fixed_pooled_f1_pos"] == pytest.approx(np.mean(ref))
    assert {"paper_pooled_f1_macro", "inner_fold_mean_f1_pos"} <= set(table.columns)
    csv, md = tables.write_table(table, tmp_path / "t", index=True, notes=[tables.BIAS_NOTE])
    assert pd.read_csv(csv, index_col=0).shape == table.shape
    assert "selection-biased" in md.read_text()


def make_sweep(workdir: Path, name: str = "s1") -> SweepSettings:
    """A sweep folder as `aullm sweep` leaves it: settings, fold store, MLflow runs."""
    space = tmp_space(workdir)
    settings = SweepSettings(name=name, space=space, cache=workdir / "c.h5", workdir=workdir, n_configs=3)
    folder = SweepFolder(settings.sweep_dir)
    folder.create(settings, data_record({str(settings.cache): DATA_FP}, DATA_FP))
    store = folder.store
    results = fill_store(store)
    tracker = MlflowTracker(default_tracking_uri(workdir), name)
    tracker.start(space=yaml.safe_load(space.read_text()), settings=json.loads(settings.model_dump_json()))
    for fp, rs in results.items():
        for r in rs:
            tracker.log_fold(fp, config(1e-3), r, duration_s=r.duration_s)
        tracker.log_config(fp, config(1e-3), rs, status="pruned" if fp == "part" * 4 else "complete",
                           n_folds_total=4)
    tracker.finish(tables.leaderboard(store, n_folds_total=4), settings.sweep_dir / "tracked")
    return settings


def tmp_space(root: Path) -> Path:
    path = root / "space.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"base": "quick", "params": {"train.lr": {"type": "float", "low": 1e-4,
                                                                             "high": 1e-2, "log": True}}}))
    return path


def test_build_report_writes_tables_plots_and_markdown(tmp_path: Path) -> None:
    make_sweep(tmp_path)
    report = build_report(tmp_path, "s1", tmp_path / "out", progress=False)
    names = {p.name for p in report.files}
    assert {"leaderboard.csv", "leaderboard.md", "best_per_au.csv", "cross_domain.csv", "per_au_f1.png",
            "fold_au_heatmap.png", "pruning_timeline.png", "report.md"} <= names
    assert report.best_fp == "good" * 4 and report.leaderboard["status"].tolist()[-1] == "pruned"
    assert (report.folds_trained, report.folds_possible) == (10, 12)
    for png in (p for p in report.files if p.suffix == ".png"):
        with Image.open(png) as im:
            assert 700 <= im.width <= 1100 and 450 <= im.height <= 900  # ~8x5 in at 120 dpi
    text = report.markdown.read_text()
    assert "test-tuned" in text and "selection-biased" in text and "![Per-AU F1" in text
    for png in (p for p in report.files if p.suffix == ".png"):  # every plot embedded
        assert f"]({png.name})" in text, f"{png.name} is not embedded in report.md"
    assert str(tmp_path) not in text  # no path of this machine
    assert text.count("F1+ = ") == 1  # defined once
    assert "\n- 1. " not in text and "\n- rank 1" in text  # a list of runs, not a list of lists all numbered 1.
    assert "baseline: all-positive" in text and "objective [95% CI]" in text
    best = report.leaderboard.iloc[0]
    assert f"{best['objective']:.3f} [{best['objective_low']:.3f}, {best['objective_high']:.3f}]" in text
    with pytest.raises(FileNotFoundError, match="no such sweep"):
        build_report(tmp_path, "nope")


def test_outer_subjects_seeded_subset() -> None:
    subjects = [f"s{i:02d}" for i in range(10)]
    assert outer_subjects(subjects * 2, None, 0) == subjects
    pick = outer_subjects(subjects, 3, seed=1)
    assert len(pick) == 3 and pick == sorted(pick) and pick == outer_subjects(subjects, 3, seed=1)


@pytest.mark.slow
def test_nested_loso_selects_on_inner_folds_only(tmp_path: Path) -> None:
    """Real training (tiny model): the winner of each outer fold is the best inner configuration,
    chosen without the outer subject, then retrained and tested on it; resuming trains nothing."""
    from aullm_core.train.fold import train_fold

    clips = tiny_clipset(subjects=4, clips_per_subject=3, seed=3)
    space = space_from_dict({"base": "quick", "fixed": {"train.epochs": 1, "train.inner_val_share": 0.0,
                                                        "train.batch_size": 16},
                             "params": {"train.lr": {"type": "categorical", "choices": [1e-3, 3e-2]}}})
    plan = NestedPlan(budget=2, outer_folds=1, objective="f1_pos:fixed:pooled", pruner="none", seed=0,
                      startup_configs=2)
    store = FoldStore(tmp_path / "nested")
    calls: list[str] = []

    def counted(*args, **kwargs) -> FoldResult:
        calls.append(args[2].fold_id)
        return train_fold(*args, **kwargs)

    result = nested_loso(clips, space, plan, store=store, fold_fn=counted, progress=False)
    (outer,) = result.outer
    assert outer.subject in set(clips.subjects)
    protocol = f"nested:{outer.subject}"
    inner = {fp: store.results(fp, protocol) for fp in store.configs() if store.results(fp, protocol)}
    assert all(outer.subject not in {r.fold_id for r in rs} for rs in inner.values())
    assert all(len(rs) == 3 for rs in inner.values())  # LOSO over the 3 other subjects
    values = {fp: Objective.parse("f1_pos:fixed:pooled").of_results(rs) for fp, rs in inner.items()}
    assert outer.chosen_fp == max(values, key=values.get)
    assert outer.inner_objective == pytest.approx(values[outer.chosen_fp])
    assert outer.result.subjects == [outer.subject] * len(outer.result.subjects)
    assert store.get(outer.chosen_fp, OUTER_PROTOCOL, outer.subject) is not None
    assert len(calls) == outer.inner_folds_trained + 1 and outer.inner_folds_trained == 3 * len(inner)
    assert result.estimate() == pytest.approx(Objective.parse("f1_pos:fixed:pooled").of_results([outer.result]))
    assert set(result.summary()["mode"]) == {"paper", "fixed"}

    calls.clear()
    again = nested_loso(clips, space, plan, store=store, fold_fn=counted, progress=False)
    assert calls == [] and again.outer[0].chosen_fp == outer.chosen_fp
