"""A fold's round trip: the ``FoldTask`` a trial carries in, the ``FoldOutcome`` it reports back, and the
names derived from them (store key, tracker tag, trial folder)."""

from __future__ import annotations

import math
import os

import pytest
from sweep_helpers import cheap_code, load_tiny_cache, write_tiny_cache

from aullm_core.config import ExperimentConfig
from aullm_core.data.splits import loso_folds
from orchestration.folds.outcome import FoldOutcome
from orchestration.folds.store import FoldStore
from orchestration.folds.task import FoldKey, FoldTask
from orchestration.folds.trainable import FoldJob, job_data_key, run_fold


@pytest.fixture()
def job_and_task(tmp_path, monkeypatch):
    monkeypatch.setenv("AULLM_TEST_SLEEP", "0")
    cache = write_tiny_cache(tmp_path / "c.npz", subjects=3, clips_per_subject=2)
    config = ExperimentConfig.preset("quick")
    job = FoldJob(store_root=str(tmp_path / "folds"), cache=str(cache), code=cheap_code())
    fold = loso_folds(load_tiny_cache(cache))[1]
    task = FoldTask(number=4, fp=config.fingerprint(), experiment=config, protocol="loso", fold_id=fold.fold_id,
                    fold_index=1, data_fp=job_data_key(job))
    return job, task


def test_run_fold_reports_a_typed_outcome_of_the_task_it_was_given(job_and_task) -> None:
    job, task = job_and_task
    first = run_fold(task.to_tune(), job)
    assert isinstance(first, FoldOutcome) and first.trained
    assert (first.number, first.fp, first.protocol, first.fold_id, first.fold_index) == (
        task.number, task.fp, task.protocol, task.fold_id, task.fold_index)
    stored = FoldStore(job.store_root).get(*task.key)
    assert stored is not None and first.fold_score == pytest.approx(job.fold_score.of(stored))
    again = run_fold(task.to_tune(), job)  # a retried trial: found in the store, never trained twice
    assert not again.trained and again.fold_score == first.fold_score and again.key == task.key


def test_an_outcome_survives_tunes_report_and_refuses_a_renamed_key(job_and_task) -> None:
    job, task = job_and_task
    outcome = run_fold(task.to_tune(), job)
    reported = {**outcome.to_tune(), "done": True, "training_iteration": 1, "trial_id": "ab12"}  # Tune's keys
    assert FoldOutcome.from_tune(reported) == outcome
    assert FoldOutcome.from_tune(None) is None and FoldOutcome.from_tune({"done": True}) is None
    renamed = {("score" if k == "fold_score" else k): v for k, v in outcome.to_tune().items()}
    assert FoldOutcome.from_tune(renamed) is None  # no score: a trial that reported nothing
    broken = {**outcome.to_tune(), "fold_index": -1}
    with pytest.raises(ValueError):
        FoldOutcome.from_tune(broken)


def test_a_refused_fold_reports_its_error_and_no_score(job_and_task) -> None:
    _, task = job_and_task
    refused = FoldOutcome.refused(task, "model.llm='x': not found")
    assert refused.config_error and refused.score is None and math.isnan(refused.fold_score)
    assert not refused.trained and FoldOutcome.from_tune(refused.to_tune()) == refused


@pytest.mark.parametrize("fold_id", ["sub01", "samm->casme2", "a_b/c d", "017"])
def test_a_trial_folder_name_gives_back_its_configuration_and_fold(job_and_task, fold_id) -> None:
    _, task = job_and_task
    named = task.model_copy(update={"fold_id": fold_id})
    assert FoldTask.parse_trial_dirname(named.trial_dirname("0a1b2c3d")) == (4, fold_id)
    assert FoldTask.parse_trial_dirname("not-a-trial") is None
    assert named.key == FoldKey(task.fp, "loso", fold_id)
    assert named.key.tag == f"fold:{task.fp}:loso:{fold_id}"


def test_a_fold_that_needs_no_torch_does_not_import_it(tmp_path) -> None:
    """A worker's thread count is set without importing torch (torch reads it when a fold imports it): a
    fold found in the store or a fold function without torch costs no torch import."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    script = f"""
import os, sys
sys.path.insert(0, {str(tests)!r})
from sweep_helpers import cheap_code, load_tiny_cache, write_tiny_cache
from aullm_core.config import ExperimentConfig
from aullm_core.data.splits import loso_folds
from orchestration.folds.task import FoldTask
from orchestration.folds.trainable import FoldJob, job_data_key, run_fold
cache = write_tiny_cache({str(tmp_path / 'c.npz')!r}, subjects=2, clips_per_subject=2)
job = FoldJob(store_root={str(tmp_path / 'folds')!r}, cache=str(cache), code=cheap_code(), cpus_per_fold=3)
config = ExperimentConfig.preset("quick")
fold = loso_folds(load_tiny_cache(cache))[0]
task = FoldTask(number=0, fp=config.fingerprint(), experiment=config, protocol="loso", fold_id=fold.fold_id,
                fold_index=0, data_fp=job_data_key(job))
run_fold(task.to_tune(), job)
print("torch" in sys.modules, os.environ["OMP_NUM_THREADS"])
import torch
run_fold(task.to_tune(), job)
print(torch.get_num_threads())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AULLM_TEST_SLEEP": "0"}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "3", "3"]
