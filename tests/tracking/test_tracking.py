"""MlflowTracker on a real MLflow SQLite store: hierarchy, idempotent re-logging, run states."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.metrics import f1_score

from aullm_core.train.objective import Objective
from aullm_core.train.result import FoldResult
from aullm_core.train.uncertainty import objective_interval
from orchestration.tracking.mlflow_tracker import MlflowTracker, default_tracking_uri

AUS = (1, 4, 12)


def make_result(fold_id: str, seed: int, *, protocol: str = "loso", n: int = 12, epochs: int = 7,
                inner: bool = True) -> FoldResult:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(AUS))) < 0.4).astype(np.uint8)
    labels[0] = 1  # every AU has a positive in every fold but one:
    if fold_id == "sub02":
        labels[:, -1] = 0  # sub02 never shows the last AU (its F1 there is undefined, not 0)
    probs = np.clip(0.35 * labels + 0.65 * rng.random((n, len(AUS))), 0, 1)
    return FoldResult(
        fold_id=fold_id, protocol=protocol, aus=AUS,
        clip_ids=[f"{fold_id}_c{i}" for i in range(n)], subjects=[fold_id] * n,
        probs=probs, labels=labels, epoch_losses=list(np.linspace(2.0, 0.5, epochs)),
        inner_thresholds=rng.uniform(0.3, 0.6, len(AUS)) if inner else None, duration_s=3.0 + seed,
    )


def runs(client: MlflowClient, level: str) -> list:
    exp = client.get_experiment_by_name("aullm")
    return client.search_runs([exp.experiment_id], f"tags.`aullm.level` = '{level}'", max_results=1000)


SPACE = {"base": "quick", "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
SETTINGS = {"name": "s1", "n_configs": 2, "pruner": "wilcoxon"}
PARAMS = {"a": {"train": {"lr": 0.001, "epochs": 3}}, "b": {"train": {"lr": 0.01, "epochs": 3}}}
FOLDS = {"a": ["sub01", "sub02", "sub03"], "b": ["sub02", "sub01"]}  # b pruned after 2 of 3 folds
NUMBERS = {"a": 0, "b": 1}
OBJECTIVE = Objective.parse("f1_pos:fixed:pooled")


def log_sweep(uri: str, tmp: Path) -> MlflowTracker:
    tracker = MlflowTracker(uri, "s1")
    tracker.start(space=SPACE, settings=SETTINGS)
    values = {}
    for fp, folds in FOLDS.items():
        results = []
        for i, fold in enumerate(folds):
            result = make_result(fold, seed=hash((fp, fold)) % 1000)
            tracker.log_fold(f"{fp}" * 16, PARAMS[fp], result, duration_s=result.duration_s, objective=OBJECTIVE)
            results.append(result)
        tracker.log_config(fp * 16, PARAMS[fp], results, status="pruned" if fp == "b" else "complete",
                           n_folds_total=3, number=NUMBERS[fp], objective=OBJECTIVE,
                           cross=[make_result("casme2->samm", 5, protocol="cross")] if fp == "a" else None)
        values[fp] = OBJECTIVE.of_results(results)
    board = pd.DataFrame({"rank": [1, 2], "number": [0, 1], "config_fp": ["a" * 16, "b" * 16],
                          "status": ["complete", "pruned"], "folds_done": [3, 2], "n_folds_total": [3, 3],
                          "objective": [values["a"], values["b"]]})
    tracker.finish(board, tmp / "report")
    return tracker


@pytest.fixture()
def uri(tmp_path: Path) -> str:
    return default_tracking_uri(tmp_path)


def test_hierarchy_metrics_and_artifacts(uri: str, tmp_path: Path) -> None:
    tracker = log_sweep(uri, tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db" and (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(uri)
    (sweep,) = runs(client, "sweep")
    configs = runs(client, "config")
    folds = runs(client, "fold")
    assert sweep.info.run_id == tracker.sweep_run_id
    assert len(configs) == 2 and len(folds) == sum(len(f) for f in FOLDS.values())
    assert {r.data.tags["mlflow.parentRunId"] for r in configs} == {sweep.info.run_id}
    config_ids = {r.data.tags["aullm.config_fp"]: r.info.run_id for r in configs}
    for run in folds:
        assert run.data.tags["mlflow.parentRunId"] == config_ids[run.data.tags["aullm.config_fp"]]
        assert run.data.tags["aullm.protocol"] == "loso"
    assert all(r.info.status == "FINISHED" for r in [sweep, *configs, *folds])

    # Fold run: per-AU F1 equals sklearn's on the fold's predictions (fixed threshold 0.5).
    fold = next(r for r in folds if r.data.tags["aullm.config_fp"] == "a" * 16
                and r.data.tags["aullm.fold_id"] == "sub02")
    expected = make_result("sub02", seed=hash(("a", "sub02")) % 1000)
    defined = []
    for k, au in enumerate(AUS):  # the objective's protocol (fixed 0.5); undefined where no clip is positive
        ref = f1_score(expected.labels[:, k], expected.probs[:, k] >= 0.5, zero_division=0)
        if expected.labels[:, k].any():
            assert fold.data.metrics[f"AU{au:02d}/f1"] == pytest.approx(ref, abs=1e-4)
            defined.append(ref)
        else:
            assert math.isnan(fold.data.metrics[f"AU{au:02d}/f1"])
        assert fold.data.metrics[f"AU{au:02d}/positives"] == expected.labels[:, k].sum()
    assert fold.data.metrics["objective"] == pytest.approx(np.mean(defined), abs=1e-4)
    assert list(fold.data.metrics)[:3] == ["objective", f"AU{AUS[0]:02d}/f1", f"AU{AUS[0]:02d}/positives"]
    assert {"protocols/test_tuned_pooled/mean_f1_macro", "protocols/inner_pooled/mean_f1_pos"} <= set(fold.data.metrics)
    assert not any(k.startswith("paper") or "_AU" in k for k in fold.data.metrics)  # no per-AU grid, no bare 'paper'
    assert fold.data.tags["mlflow.runName"].startswith("sub02 ")  # the subject first, then the configuration
    assert fold.data.params["train.lr"] == "0.001" and fold.data.metrics["duration_s"] == expected.duration_s
    history = client.get_metric_history(fold.info.run_id, "loss")
    assert [m.step for m in history] == list(range(7))
    assert [m.value for m in history] == pytest.approx(expected.epoch_losses)
    csv = Path(client.download_artifacts(fold.info.run_id, "predictions.csv", str(tmp_path / "dl")))
    preds = pd.read_csv(csv)
    assert preds["clip"].astype(str).tolist() == expected.clip_ids
    np.testing.assert_allclose(preds[f"prob_AU{AUS[1]}"], expected.probs[:, 1], atol=1e-6)

    # Configuration run: pooled LOSO F1 over its folds, pruned flag, folds done, cross-domain.
    cfg_a = next(r for r in configs if r.data.tags["aullm.config_fp"] == "a" * 16)
    cfg_b = next(r for r in configs if r.data.tags["aullm.config_fp"] == "b" * 16)
    pooled = [make_result(f, seed=hash(("a", f)) % 1000) for f in FOLDS["a"]]
    y = np.concatenate([r.labels for r in pooled])
    p = np.concatenate([r.probs for r in pooled]) >= 0.5
    ref_mean = np.mean([f1_score(y[:, k], p[:, k]) for k in range(len(AUS))])
    assert cfg_a.data.metrics["protocols/fixed_pooled/mean_f1_pos"] == pytest.approx(ref_mean, abs=1e-4)
    assert cfg_a.data.metrics["objective"] == pytest.approx(ref_mean, abs=1e-4)  # the objective is fixed:pooled
    interval = objective_interval(OBJECTIVE, pooled)
    assert (cfg_a.data.metrics["objective_low"], cfg_a.data.metrics["objective_high"]) == pytest.approx(
        (interval.low, interval.high), abs=1e-4)
    assert list(cfg_a.data.metrics)[:5] == ["objective", "objective_low", "objective_high", f"AU{AUS[0]:02d}/f1",
                                            f"AU{AUS[0]:02d}/f1_low"]
    assert cfg_a.data.metrics[f"AU{AUS[1]:02d}/positives"] == y[:, 1].sum()
    assert "protocols/test_tuned_fold_mean/mean_f1_macro" in cfg_a.data.metrics
    assert "cross/casme2_to_samm/fixed_pooled/mean_f1_pos" in cfg_a.data.metrics
    assert all(math.isnan(v) or v == round(v, 4) for v in cfg_a.data.metrics.values())
    by_subject = pd.read_csv(client.download_artifacts(cfg_a.info.run_id, "folds.csv", str(tmp_path / "dl")))
    assert by_subject["subject"].tolist() == sorted(FOLDS["a"])
    assert by_subject["objective"].notna().all() and {f"AU{au} F1" for au in AUS} <= set(by_subject.columns)
    assert cfg_a.data.tags["aullm.pruned"] == "false" and cfg_b.data.tags["aullm.pruned"] == "true"
    assert cfg_a.data.tags["aullm.status"] == "complete" and cfg_b.data.tags["aullm.status"] == "pruned"
    assert cfg_b.data.tags["aullm.folds_done"] == "2/3" and cfg_b.data.metrics["folds_done"] == 2
    assert (cfg_a.data.metrics["rank"], cfg_b.data.metrics["rank"]) == (1, 2)
    assert cfg_a.data.tags["mlflow.runName"] == f"1. {ref_mean:.3f} #0"  # from the unrounded objective
    assert cfg_b.data.tags["mlflow.runName"].startswith("2. ") and cfg_b.data.tags["mlflow.runName"].endswith("#1 pruned")
    assert client.get_experiment(sweep.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    # Sweep run: code version, space, leaderboard and the three plots.
    # (others may commit meanwhile: the tag must be HEAD at logging time, an ancestor of HEAD now)
    repo = Path(__file__).parents[2]
    tagged = sweep.data.tags["aullm.git_commit"]
    check = subprocess.run(["git", "merge-base", "--is-ancestor", tagged, "HEAD"], cwd=repo, check=False)
    assert check.returncode == 0, f"{tagged} is not a commit of this checkout"
    assert sweep.data.tags["aullm.version"]
    names = {a.path for a in client.list_artifacts(sweep.info.run_id)}
    assert {"search_space.yaml", "leaderboard.csv", "leaderboard.md", "per_au_f1.png",
            "fold_au_heatmap.png", "pruning_timeline.png"} <= names
    assert sweep.data.params["pruner"] == "wilcoxon"
    assert sweep.data.tags["aullm.best_config_fp"] == "a" * 16
    assert sweep.data.tags["aullm.best_config_run"] == cfg_a.info.run_id
    assert sweep.data.metrics["best_objective"] == pytest.approx(ref_mean, abs=1e-4)
    assert cfg_a.info.run_id in sweep.data.tags["mlflow.note.content"]
    table = json.loads(Path(client.download_artifacts(sweep.info.run_id, "leaderboard.json", str(tmp_path / "t"))).read_text())
    assert table["columns"][:4] == ["rank", "number", "status", "folds_done"] and len(table["data"]) == 2


def test_relogging_after_resume_creates_no_duplicates(uri: str, tmp_path: Path) -> None:
    first = log_sweep(uri, tmp_path)
    client = MlflowClient(uri)
    before = {lvl: sorted(r.info.run_id for r in runs(client, lvl)) for lvl in ("sweep", "config", "fold")}
    second = log_sweep(uri, tmp_path)  # a resumed sweep logs everything again
    after = {lvl: sorted(r.info.run_id for r in runs(client, lvl)) for lvl in ("sweep", "config", "fold")}
    assert after == before and second.sweep_run_id == first.sweep_run_id
    all_runs = client.search_runs([client.get_experiment_by_name("aullm").experiment_id], max_results=1000)
    assert {r.info.status for r in all_runs} == {"FINISHED"}


def test_failed_logging_ends_failed_and_is_replaced(uri: str) -> None:
    tracker = MlflowTracker(uri, "s2")
    tracker.start(space=SPACE, settings=SETTINGS)
    broken = make_result("sub01", 1)
    broken.probs = broken.probs[:, :2]  # shapes disagree: scoring raises
    with pytest.raises(ValueError):
        tracker.log_fold("c" * 16, {}, broken, duration_s=1.0)
    client = MlflowClient(uri)
    (failed,) = runs(client, "fold")
    assert failed.info.status == "FAILED"
    good_id = tracker.log_fold("c" * 16, {}, make_result("sub01", 1), duration_s=1.0)
    (active,) = runs(client, "fold")
    assert active.info.run_id == good_id != failed.info.run_id and active.info.status == "FINISHED"
    tracker.close("KILLED")
    (sweep,) = runs(client, "sweep")
    assert sweep.info.status == "KILLED"


def test_two_sweeps_opening_a_fresh_tracking_database_at_once_both_start(tmp_path: Path) -> None:
    """Two real processes create the MLflow schema of one new SQLite file at the same moment."""
    for attempt in range(3):
        db = tmp_path / f"w{attempt}" / "mlflow.db"
        code = ("import os; from orchestration.tracking.mlflow_tracker import MlflowTracker; "
                f"MlflowTracker('sqlite:///{db}', 's' + str(os.getpid()))")
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        assert [rc for rc, _ in outcomes] == [0, 0], [err[-400:] for _, err in outcomes]


def test_a_fold_run_left_running_by_a_killed_driver_is_ended_when_replaced(uri: str, tmp_path: Path) -> None:
    """A driver SIGKILLed while logging a fold leaves its run RUNNING; the resumed driver's run replaces
    it, and the replaced run is ended KILLED (then deleted), so no run anywhere stays RUNNING."""
    import os
    import signal
    import time

    from mlflow.entities import ViewType

    child = subprocess.Popen([sys.executable, "-c", f"""
import time, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_tracking import make_result
from orchestration.tracking.mlflow_tracker import MlflowTracker
tracker = MlflowTracker({uri!r}, "s3")
tracker.start(space={{}}, settings={{}})
MlflowTracker._ended = lambda self, run_id, body: time.sleep(600)  # the run made, its logging stuck
tracker.log_fold("d" * 16, {{}}, make_result("sub01", 1), duration_s=1.0)
"""], env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    client = MlflowClient(uri)
    deadline = time.time() + 60
    while time.time() < deadline and child.poll() is None:
        experiment = client.get_experiment_by_name("aullm")
        if experiment is not None and runs(client, "fold"):
            break
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    (stale,) = runs(client, "fold")
    assert stale.info.status == "RUNNING"

    tracker = MlflowTracker(uri, "s3")
    tracker.start(space={}, settings={})
    new_id = tracker.log_fold("d" * 16, {}, make_result("sub01", 1), duration_s=1.0)
    tracker.close("FINISHED")
    replaced = client.get_run(stale.info.run_id)
    assert replaced.info.lifecycle_stage == "deleted" and replaced.info.status == "KILLED"
    everything = client.search_runs([client.get_experiment_by_name("aullm").experiment_id],
                                    run_view_type=ViewType.ALL, max_results=1000)
    assert not [r for r in everything if r.info.status == "RUNNING"]
    assert client.get_run(new_id).info.status == "FINISHED"


def test_what_was_logged_is_read_back_from_mlflow_by_a_new_process(uri: str, tmp_path: Path) -> None:
    """The one record of what a sweep has logged is MLflow itself: a tracker opened later (a resumed
    driver) reads finished fold runs and configuration outcomes back from their tags."""
    log_sweep(uri, tmp_path)
    logged = MlflowTracker(uri, "s1").logged()
    folds = {f"fold:{fp * 16}:loso:{fold}" for fp, names in FOLDS.items() for fold in names}
    assert logged == folds | {f"config:{'a' * 16}:complete", f"config:{'b' * 16}:pruned", f"config:{'a' * 16}:cross"}
    assert MlflowTracker(uri, "other").logged() == set()
