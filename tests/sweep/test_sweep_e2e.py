"""End to end with the real science: synthetic datasets -> HDF5 caches -> sweep with train_fold.

Nothing injected: the default fold function (aullm_core.train.fold.train_fold), the default cache
loader, a local Ray, Optuna and MLflow on SQLite.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from aullm_core.data.cache import load_cache, make_cache
from aullm_core.data.synth import write_synthetic
from orchestration.cli.wiring import sweep_hooks
from orchestration.sweep.folder import SweepFolder
from orchestration.sweep.run import run_sweep
from orchestration.sweep.settings import SweepSettings
from orchestration.tracking.mlflow_tracker import MlflowTracker

SPACE = """\
base: quick
fixed: {train.epochs: 1, train.batch_size: 16, train.inner_refit: false, model.efp_input: high}
params:
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  train.loss: {type: categorical, choices: [faithful, bce]}
"""


@pytest.mark.slow
def test_real_fold_training_sweep_with_cross_domain(tmp_path):
    casme = make_cache("casme2", write_synthetic("casme2", tmp_path / "casme2", subjects=3, clips_per_subject=3,
                                                  seed=0, progress=False), tmp_path / "casme2.h5", progress=False).path
    samm = make_cache("samm", write_synthetic("samm", tmp_path / "samm", subjects=2, clips_per_subject=3,
                                               seed=1, progress=False), tmp_path / "samm.h5", progress=False).path
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    settings = SweepSettings(name="e2e", space=space, cache=casme, cross_cache=samm, workdir=tmp_path / "work",
                             n_configs=2, num_cpus=2, top_k_cross=1, seed=0)
    summary = run_sweep(settings, sweep_hooks(), progress=False)  # aullm_core's fold training, as `aullm sweep`

    assert summary.finished and summary.errors == [] and summary.n_complete + summary.n_pruned == 2
    subjects = len(set(load_cache(casme).subjects))
    store = SweepFolder(Path(summary.sweep_dir)).store
    assert summary.folds_trained == len(store.entries()) == summary.n_complete * subjects + 2
    assert math.isfinite(summary.best_score) and 0.0 <= summary.best_score <= 1.0
    low, high = summary.best_interval  # the 95% bootstrap interval over subjects, around the score
    assert low <= summary.best_score <= high
    cross = store.results(summary.best_fp, "cross")
    assert sorted(r.fold_id for r in cross) == ["casme2->samm", "samm->casme2"]
    assert all(r.aus == (2, 4, 7, 12) for r in cross)  # the shared AUs
    tracker = MlflowTracker(settings.resolved_tracking_uri, "e2e")
    assert len(tracker.fold_runs()) == summary.folds_trained
    assert len(tracker.config_runs()) == 2
    sweep_run = tracker.client.get_run(tracker._find_sweep_run())
    logged = {a.path for a in tracker.client.list_artifacts(sweep_run.info.run_id)}
    assert {"leaderboard.json", "optimization_history.png", "per_au_f1.png", "report"} <= logged
    report = {a.path for a in tracker.client.list_artifacts(sweep_run.info.run_id, "report")}
    assert {"report/report.md", "report/leaderboard.csv", "report/per_au_f1.png"} <= report
    markdown = Path(tracker.client.download_artifacts(sweep_run.info.run_id, "report/report.md",
                                                      str(tmp_path / "dl"))).read_text()
    best_run = tracker.config_runs().loc[summary.best_fp, "run_id"]
    assert f"/runs/{best_run})" in markdown  # the report links the configuration runs it ranks
