"""Folds trained by several Ray Train workers (TorchTrainer, Train V2) inside a Tune trial, on CPU.

``workers_per_fold > 1`` makes each fold trial build a TorchTrainer whose workers (gloo process
group) run the fold function together; rank 0 stores the result. The first test checks the plumbing
with the cheap fold function, the second runs the real ``train_fold`` with ``train.engine:
deepspeed`` on two CPU workers (ZeRO stage 2 over gloo).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sweep_helpers import cheap_hooks, local_ray, write_tiny_cache

from orchestration.sweep.folder import SweepFolder
from orchestration.sweep.run import run_sweep
from orchestration.sweep.settings import SweepSettings


@pytest.fixture(scope="module")
def ray_3cpu(tmp_path_factory):
    control = tmp_path_factory.mktemp("control") / "control.json"
    control.write_text('{"sleep": 0.1}')
    with local_ray(3, control):
        yield


def _space(tmp_path: Path, fixed: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(
        f"base: quick\nfixed: {{{fixed}}}\nparams:\n  train.lr: {{type: float, low: 1.0e-4, high: 1.0e-3, log: true}}\n"
    )
    return path


@pytest.mark.slow
def test_two_worker_folds_store_rank_zero_result(ray_3cpu, tmp_path):
    cache = write_tiny_cache(tmp_path / "c.npz", subjects=2, clips_per_subject=3)
    settings = SweepSettings(
        name="dist", space=_space(tmp_path, "train.epochs: 1, train.engine: deepspeed"), cache=cache,
        workdir=tmp_path / "w", n_configs=1, pruner="none", workers_per_fold=2, cpus_per_fold=1.0, tracking_uri="none",
    )
    summary = run_sweep(settings, cheap_hooks(tracked=True), progress=False)
    assert summary.finished and summary.n_complete == 1 and summary.errors == []
    store = SweepFolder(Path(summary.sweep_dir)).store
    assert sorted(f for _, _, f in store.entries()) == ["s01", "s02"]
    # one Ray Train run per fold, each with two workers
    runs = sorted((Path(summary.sweep_dir) / "ray" / "train").iterdir())
    assert len(runs) == 2


@pytest.mark.slow
@pytest.mark.heavy
def test_real_deepspeed_fold_on_two_cpu_workers(ray_3cpu, tmp_path):
    from aullm_core.data.cache import load_cache, make_cache
    from aullm_core.data.synth import write_synthetic

    root = write_synthetic("casme2", tmp_path / "casme2", subjects=2, clips_per_subject=2, seed=0, progress=False)
    cache = make_cache("casme2", root, tmp_path / "casme2.h5", progress=False).path
    fixed = "train.epochs: 1, train.batch_size: 4, train.engine: deepspeed, train.inner_val_share: 0.0, model.efp_input: high"
    settings = SweepSettings(
        name="ds", space=_space(tmp_path, fixed), cache=cache, workdir=tmp_path / "w", n_configs=1, pruner="none",
        workers_per_fold=2, cpus_per_fold=1.0, objective="f1_pos:fixed:pooled", tracking_uri="none", max_failures=0,
    )
    summary = run_sweep(settings, cheap_hooks(tracked=True), progress=False)
    assert summary.finished and summary.n_complete == 1, summary.errors
    store = SweepFolder(Path(summary.sweep_dir)).store
    clips = load_cache(cache)
    for fp, protocol, fold_id in store.entries():
        result = store.get(fp, protocol, fold_id)
        # predictions gathered from both ranks: one row per test clip of the subject
        assert result.probs.shape == (int((clips.subjects == fold_id).sum()), len(clips.aus))
