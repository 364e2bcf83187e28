"""Sweeps on a real local Ray cluster (one per module), real Optuna, real MLflow on SQLite.

The fold function is ``sweep_helpers.quick_fold`` (cheap, deterministic, real FoldResults), so
these tests check orchestration: trials per fold, retries, pruning, tracking, cross-domain.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
from sweep_helpers import cheap_code, cheap_hooks, local_ray, write_tiny_cache

from orchestration.sweep.folder import SweepFolder
from orchestration.sweep.resources import ResourceError
from orchestration.sweep.run import SweepHooks, run_sweep
from orchestration.sweep.settings import SweepSettings
from orchestration.tracking.mlflow_tracker import TAG_CONFIG, TAG_LEVEL, TAG_PARENT, MlflowTracker

SPACE = """\
base: quick
fixed: {train.epochs: 2}
params:
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.dropout: {type: float, low: 0.1, high: 0.5}
"""


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """A 2-CPU local Ray shared by the module; workers import tests/sweep_helpers.py."""
    control = tmp_path_factory.mktemp("control") / "control.json"
    control.write_text("{}")
    with local_ray(2, control):
        yield control


@pytest.fixture
def controls(ray_session, tmp_path):
    """Per-test controls of quick_fold (read by the workers from the control file)."""

    def set_controls(**values):
        ray_session.write_text(json.dumps({"counter": str(tmp_path / "trainings.txt"), "sleep": 0.15, **values}))

    set_controls()
    yield set_controls
    ray_session.write_text("{}")


def _settings(tmp_path: Path, space_text: str = SPACE, **overrides) -> SweepSettings:
    space = tmp_path / "space.yaml"
    space.write_text(space_text)
    cache = write_tiny_cache(tmp_path / "casme2.npz", name="casme2", subjects=5, clips_per_subject=4)
    values = {
        "name": "t",
        "space": space,
        "cache": cache,
        "workdir": tmp_path / "work",
        "n_configs": 3,
        "pruner": "none",
        "seed": 3,
        "tracking_uri": "none",
    }
    values.update(overrides)
    return SweepSettings(**values)


def _trainings(tmp_path: Path) -> list[tuple[str, str, str]]:
    path = tmp_path / "trainings.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [tuple(line.split()[:3]) for line in lines]


def test_sweep_tracks_every_fold_once_retries_a_failure_and_runs_cross_domain(controls, tmp_path):
    controls(fail_fold="s03", fail_dir=str(tmp_path))
    cross = write_tiny_cache(tmp_path / "samm.npz", name="samm", subjects=4, clips_per_subject=4, aus=(2, 4, 7, 12), seed=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = _settings(tmp_path, cross_cache=cross, top_k_cross=1, tracking_uri=uri)
    summary = run_sweep(settings, cheap_hooks(tracked=True), progress=False)

    assert summary.finished and summary.n_complete == 3 and summary.errors == []
    assert (tmp_path / "failed-s03").exists()  # the fold did fail once ...
    trained = _trainings(tmp_path)
    assert len(trained) == len(set(trained))  # ... and no fold was trained twice
    assert Counter(p for _, p, _ in trained) == {"loso": 3 * 5, "cross": 2}
    assert summary.folds_trained == len(trained) and summary.folds_from_store == 0
    store = SweepFolder(settings.sweep_dir).store
    assert {(fp, p, f) for fp, p, f in store.entries()} == set(trained)
    assert sorted(r.fold_id for r in store.results(summary.best_fp, "cross")) == ["casme2->samm", "samm->casme2"]
    assert set(summary.cross[summary.best_fp]) == {"casme2->samm", "samm->casme2"}

    tracker = MlflowTracker(uri, "t")
    client = tracker.client
    sweeps = tracker._search(level="sweep", sweep="t")
    assert len(sweeps) == 1 and client.get_run(sweeps[0].info.run_id).info.status == "FINISHED"
    configs = tracker._search(level="config", sweep="t")
    folds = tracker._search(level="fold", sweep="t")
    assert len(configs) == 3
    assert len(folds) == len(trained)  # one fold run per fold actually trained
    config_ids = {r.data.tags[TAG_CONFIG]: r.info.run_id for r in configs}
    assert all(r.data.tags[TAG_PARENT] == sweeps[0].info.run_id for r in configs)
    assert all(r.data.tags[TAG_PARENT] == config_ids[r.data.tags[TAG_CONFIG]] for r in folds)
    assert all(r.data.tags[TAG_LEVEL] == "fold" for r in folds)
    best = client.get_run(config_ids[summary.best_fp]).data
    assert any(k.startswith("cross/") for k in best.metrics)
    leaderboard = pd.read_csv(settings.sweep_dir / "leaderboard.csv")
    assert leaderboard["objective"].iloc[0] == pytest.approx(summary.best_score)
    assert leaderboard["objective"].is_monotonic_decreasing


class Recorder:
    """In-memory tracker (same protocol as MlflowTracker) to check the driver's calls."""

    calls: ClassVar[list[tuple]] = []

    def __init__(self, tracking_uri: str, sweep_name: str) -> None:
        Recorder.calls = []

    def start(self, *, space, settings):
        Recorder.calls.append(("start",))
        return "sweep"

    def log_fold(self, config_fp, params, result, *, duration_s, objective=None):
        Recorder.calls.append(("fold", config_fp, result.protocol, result.fold_id))
        return "fold"

    def log_config(self, config_fp, params, results, *, status, n_folds_total, number=None, objective=None,
                   cross=None):
        Recorder.calls.append(("config", config_fp, status == "pruned", len(results), n_folds_total))
        return "config"

    def finish(self, leaderboard, artifact_dir):
        Recorder.calls.append(("finish", len(leaderboard)))

    def logged(self):
        return set()


def test_pruned_configurations_stop_getting_folds(controls, tmp_path):
    controls(sleep=0.05)
    cache = write_tiny_cache(tmp_path / "big.npz", name="casme2", subjects=10, clips_per_subject=4)
    settings = _settings(tmp_path, cache=cache, n_configs=6, pruner="wilcoxon", startup_configs=2, seed=11,
                         max_concurrent_configs=1, tracking_uri="memory")
    summary = run_sweep(settings, SweepHooks(code=cheap_code(), tracker=Recorder), progress=False)
    board = summary.leaderboard
    pruned = board[board["status"] == "pruned"]
    assert summary.n_pruned == len(pruned) >= 1
    assert (pruned["folds_done"] < 10).all() and (board.loc[board["status"] == "complete", "folds_done"] == 10).all()
    trained = Counter(fp for fp, _, _ in _trainings(tmp_path))
    for fp, done in zip(pruned["config_fp"], pruned["folds_done"]):
        # its remaining folds were never handed out (one fold may have been running at the prune)
        assert trained[fp] <= done + 1 < 10 + 1 and trained[fp] < 10
    assert summary.folds_trained == sum(trained.values()) < 6 * 10
    assert summary.folds_stopped == 0  # running folds of a pruned configuration finish by default
    # the driver told the tracker once per fold and once per configuration, pruned flag included
    folds = [c for c in Recorder.calls if c[0] == "fold"]
    assert len(folds) == len(set(folds)) == sum(trained.values())
    configs = {c[1]: c for c in Recorder.calls if c[0] == "config"}
    assert len(configs) == 6 == len([c for c in Recorder.calls if c[0] == "config"])
    for fp in board["config_fp"]:
        assert configs[fp][2] == (fp in set(pruned["config_fp"]))
    assert Recorder.calls[0] == ("start",) and Recorder.calls[-1] == ("finish", 6)


@pytest.mark.parametrize(
    ("request_", "needle"),
    [({"gpus_per_fold": 1.0}, "one fold needs GPU 1 but the Ray cluster has GPU 0"),
     ({"cpus_per_fold": 3.0}, "one fold needs CPU 3 but the Ray cluster has CPU 2"),
     ({"workers_per_fold": 3}, "one fold needs CPU 3.1 but the Ray cluster has CPU 2")],
)
def test_unsatisfiable_requests_fail_fast(controls, tmp_path, request_, needle):
    deepspeed = SPACE.replace("train.epochs: 2", "train.epochs: 2, train.engine: deepspeed")
    with pytest.raises(ResourceError) as info:
        run_sweep(_settings(tmp_path, space_text=deepspeed, **request_), cheap_hooks(tracked=True), progress=False)
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert _trainings(tmp_path) == []
    assert not (tmp_path / "work" / "sweeps" / "t" / "sweep.json").exists()  # fix the flag and start again


@pytest.mark.slow
def test_running_folds_of_a_pruned_configuration_are_stopped_on_request(controls, tmp_path):
    controls(sleep=0.6)
    cache = write_tiny_cache(tmp_path / "big.npz", name="casme2", subjects=10, clips_per_subject=4)
    settings = _settings(tmp_path, cache=cache, n_configs=6, pruner="wilcoxon", startup_configs=2, seed=11,
                         max_concurrent_configs=1, stop_pruned_folds=True, tracking_uri="memory")
    summary = run_sweep(settings, SweepHooks(code=cheap_code(), tracker=Recorder), progress=False)
    assert summary.finished and summary.n_pruned >= 1
    assert 1 <= summary.folds_stopped <= summary.n_pruned  # two slots, one configuration in flight
    board = summary.leaderboard
    trained = Counter(fp for fp, _, _ in _trainings(tmp_path))
    for fp, done in zip(board.loc[board["status"] == "pruned", "config_fp"], board.loc[board["status"] == "pruned", "folds_done"]):
        assert trained[fp] <= done + 1 and done < 10
    # one tracker call per stored fold, stopped ones included when they stored a result before the
    # sweep ended (a last stopped fold may still be finishing in its worker when the sweep returns)
    folds = [c[1:] for c in Recorder.calls if c[0] == "fold"]
    stored = set(SweepFolder(settings.sweep_dir).store.entries())
    assert len(folds) == len(set(folds)) and set(folds) <= stored and len(stored) - len(folds) <= 1


def test_every_view_gives_each_configuration_the_same_number(controls, tmp_path):
    """One number per configuration, pruned ones included (over the folds they ran): the sweep's
    summary, ``aullm report``'s leaderboard, the MLflow configuration runs and the Optuna study agree."""
    import optuna

    from orchestration.reports.report import build_report
    from orchestration.sweep.folder import load_study

    controls(sleep=0.05)
    cache = write_tiny_cache(tmp_path / "big.npz", name="casme2", subjects=10, clips_per_subject=4)
    settings = _settings(tmp_path, cache=cache, n_configs=6, pruner="wilcoxon", startup_configs=2, seed=11,
                         max_concurrent_configs=1, tracking_uri=None)
    summary = run_sweep(settings, cheap_hooks(tracked=True), progress=False)
    cli = dict(zip(summary.leaderboard["config_fp"], summary.leaderboard["objective"]))
    statuses = dict(zip(summary.leaderboard["config_fp"], summary.leaderboard["status"]))
    assert "pruned" in statuses.values() and "complete" in statuses.values()

    report = build_report(settings.workdir, "t", tmp_path / "report", progress=False)
    written = pd.read_csv(tmp_path / "report" / "leaderboard.csv")
    assert dict(zip(written["config_fp"], written["objective"])) == pytest.approx(cli, abs=1e-6)  # CSV: 6 digits
    assert dict(zip(report.leaderboard["config_fp"], report.leaderboard["status"])) == statuses

    tracker = MlflowTracker(f"sqlite:///{settings.workdir / 'mlflow.db'}", "t")
    runs = {r.data.tags[TAG_CONFIG]: r for r in tracker._search(level="config", sweep="t")}
    assert {fp: r.data.metrics["objective"] for fp, r in runs.items()} == pytest.approx(cli, abs=1e-4)
    assert {fp: r.data.tags["aullm.status"] for fp, r in runs.items()} == statuses

    study = load_study(SweepFolder(settings.sweep_dir), "t")
    optuna_values = {}
    for trial in study.get_trials(deepcopy=False):
        fp = trial.user_attrs["config_fp"]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            optuna_values[fp] = trial.value
        elif trial.state == optuna.trial.TrialState.PRUNED:
            optuna_values[fp] = trial.user_attrs["partial_objective"]
    assert optuna_values == pytest.approx(cli, abs=1e-9)


def test_a_failed_configuration_keeps_its_error_in_the_summary_after_a_resume(controls, tmp_path):
    controls(fail_fold="s03", fail_dir=str(tmp_path))
    settings = _settings(tmp_path, n_configs=2, max_failures=0)
    first = run_sweep(settings, cheap_hooks(tracked=True), progress=False)
    assert first.finished and first.n_failed == 1
    (line,) = first.errors
    assert line.startswith("configuration ") and "fold s03" in line and "injected failure of fold s03" in line
    assert "\n" not in line and "Traceback" not in line
    again = run_sweep(settings.model_copy(update={"resume": True}), cheap_hooks(tracked=True), progress=False)
    assert again.finished and again.errors == [line]
    assert json.loads((settings.sweep_dir / "summary.json").read_text())["errors"] == [line]
