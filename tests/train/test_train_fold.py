"""Fold training on tiny learnable ClipSets: it learns, it is deterministic, both engines work."""

import numpy as np
import pytest
import torch
from _train_data import tiny_clipset

from aullm_core.config import ExperimentConfig
from aullm_core.data.splits import cross_domain_fold, loso_folds
from aullm_core.model import clear_pool, pool_loads
from aullm_core.train.fold import inner_split, train_fold, train_full
from aullm_core.train.metrics import PAPER_THRESHOLDS

EPOCHS = 6


def _config(**overrides) -> ExperimentConfig:
    base = {"train.epochs": EPOCHS, "train.lr": 1e-3, "train.inner_val_share": 0.0}
    return ExperimentConfig.preset("quick").with_overrides({**base, **overrides})


@pytest.fixture(scope="module")
def clips():
    return tiny_clipset(subjects=3, clips_per_subject=4, aus=(1, 4, 12))


@pytest.fixture(scope="module")
def plain(clips):
    fold = loso_folds(clips)[0]
    return fold, train_fold(clips, clips, fold, _config(), progress=False)


def _falls(losses: list[float]) -> bool:
    return np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2])


def test_plain_fold_learns_and_reports(clips, plain):
    fold, result = plain
    assert len(result.epoch_losses) == EPOCHS and _falls(result.epoch_losses)
    assert result.probs.shape == (len(fold.test_idx), 3)
    assert ((result.probs > 0) & (result.probs < 1)).all()
    np.testing.assert_array_equal(result.labels, clips.labels[fold.test_idx])
    assert result.subjects == ["sub01"] * len(fold.test_idx)
    assert result.clip_ids == list(clips.meta["clip"].iloc[fold.test_idx])
    assert result.inner_thresholds is None and result.fold_id == "sub01"


def test_same_seed_same_probabilities(clips, plain):
    fold, first = plain
    again = train_fold(clips, clips, fold, _config(), progress=False)
    np.testing.assert_array_equal(again.probs, first.probs)
    assert again.epoch_losses == first.epoch_losses
    other = train_fold(clips, clips, fold, _config(**{"train.seed": 2, "train.epochs": 1}), progress=False)
    assert other.epoch_losses[0] != first.epoch_losses[0]


def test_deepspeed_zero2_fold_learns_like_the_plain_engine(clips, plain):
    fold, torch_result = plain
    cfg = _config(**{"train.engine": "deepspeed", "train.zero_stage": 2})
    result = train_fold(clips, clips, fold, cfg, progress=False)
    assert _falls(result.epoch_losses)
    # same seed, same Adam, fp32, one process: the same training up to summation order
    np.testing.assert_allclose(result.epoch_losses, torch_result.epoch_losses, rtol=1e-3)
    np.testing.assert_allclose(result.probs, torch_result.probs, atol=2e-3)


def test_inner_validation_never_uses_the_test_subject_and_refit_keeps_predictions(clips, plain):
    fold, no_inner = plain
    train_subjects = clips.subjects[fold.train_idx]
    fit, val = inner_split(train_subjects, 0.5, seed=1)
    assert set(train_subjects[val]).isdisjoint(train_subjects[fit]) and len(val) > 0
    assert "sub01" not in set(train_subjects)
    cfg = _config(**{"train.inner_val_share": 0.5, "train.inner_refit": True})
    result = train_fold(clips, clips, fold, cfg, progress=False)
    assert result.inner_thresholds is not None and result.inner_thresholds.shape == (3,)
    assert set(result.inner_thresholds.tolist()) <= set(PAPER_THRESHOLDS) | {0.5}
    np.testing.assert_array_equal(result.probs, no_inner.probs)  # refit on all = the run without inner
    cheap = train_fold(clips, clips, fold, cfg.with_overrides({"train.inner_refit": False}), progress=False)
    np.testing.assert_array_equal(cheap.inner_thresholds, result.inner_thresholds)  # same inner model
    assert not np.allclose(cheap.probs, no_inner.probs)  # the test subject is predicted by the inner model


def test_select_epoch_refits_with_the_chosen_epoch_count(clips):
    fold = loso_folds(clips)[1]
    cfg = _config(**{"train.inner_val_share": 0.5, "train.select_epoch": True, "train.epochs": 3,
                     "train.inner_refit": True})
    result = train_fold(clips, clips, fold, cfg, progress=False)
    assert 1 <= result.best_epoch <= 3
    assert len(result.epoch_losses) == result.best_epoch


def test_cross_domain_fold_uses_shared_aus():
    source = tiny_clipset(subjects=2, clips_per_subject=3, aus=(1, 2, 4, 12), name="casme2", seed=1)
    target = tiny_clipset(subjects=2, clips_per_subject=2, aus=(2, 4, 7, 12), name="samm", seed=2, color=True)
    fold = cross_domain_fold(source, target)
    assert fold.aus == (2, 4, 12)
    result = train_fold(source, target, fold, _config(**{"train.epochs": 2}), progress=False)
    assert result.probs.shape == (len(target), 3)
    np.testing.assert_array_equal(result.labels, target.label_matrix((2, 4, 12)))


def test_llm_reuse_gives_the_same_fold_as_a_fresh_worker(clips):
    folds = loso_folds(clips)
    cfg = _config(**{"train.epochs": 2})
    clear_pool()
    train_fold(clips, clips, folds[0], cfg, progress=False)  # this worker trained another fold first
    reused = train_fold(clips, clips, folds[2], cfg, progress=False)
    assert pool_loads() == 1  # the base LLM was loaded once for both folds
    clear_pool()  # a fresh worker
    fresh = train_fold(clips, clips, folds[2], cfg, progress=False)
    np.testing.assert_array_equal(reused.probs, fresh.probs)


def test_no_llm_ablation_trains(clips):
    fold = loso_folds(clips)[0]
    cfg = _config(**{"model.use_llm": False, "train.lr": 1e-4})  # no final RMSNorm: a smaller step
    result = train_fold(clips, clips, fold, cfg, progress=False)
    assert _falls(result.epoch_losses)


def test_train_full_thresholds(clips):
    trained = train_full(clips, _config(**{"train.epochs": 1, "train.inner_val_share": 0.34}), progress=False)
    assert trained.aus == (1, 4, 12) and set(trained.thresholds) == {1, 4, 12}
    assert not trained.model.training
    default = train_full(clips, _config(**{"train.epochs": 1}), aus=(4,), progress=False)
    assert default.thresholds == {4: 0.5} and default.model.head.out_features == 1


def test_cpu_determinism_setting_is_restored(clips, plain):
    assert not torch.are_deterministic_algorithms_enabled()


def test_deepspeed_zero3_trained_model_is_gathered_back(clips):
    """ZeRO-3 partitions parameters in place; train_full must hand back the full trained weights."""
    from aullm_core.train.predict import predict_clips

    base = {"train.epochs": 2}
    zero3 = train_full(clips, _config(**base, **{"train.engine": "deepspeed", "train.zero_stage": 3}), progress=False)
    plain = train_full(clips, _config(**base), progress=False)
    np.testing.assert_allclose(predict_clips(zero3, clips.frames[:4]), predict_clips(plain, clips.frames[:4]), atol=1e-4)


def test_fold_result_for_fold_names_the_test_clips_in_fold_order(clips):
    from aullm_core.data.splits import Fold
    from aullm_core.train.result import FoldResult

    test_idx = np.array([5, 0, 9])
    fold = Fold("custom", "loso", np.array([1, 2]), test_idx, (4, 12))
    probs = np.zeros((3, 2))
    result = FoldResult.for_fold(fold, clips, probs=probs, labels=probs.astype(np.int64), epoch_losses=[0.5])
    assert (result.fold_id, result.protocol, result.aus) == ("custom", "loso", (4, 12))
    assert result.clip_ids == [str(clips.meta["clip"].iloc[i]) for i in test_idx]
    assert result.subjects == [str(clips.meta["subject"].iloc[i]) for i in test_idx]
    assert result.epoch_losses == [0.5] and result.probs is probs


@pytest.mark.parametrize("size", [32, 96])
def test_a_cache_of_other_frame_sizes_trains_and_its_checkpoint_reloads(size, tmp_path):
    """The model is built for the frames it is given (the cache's size), and a checkpoint for the size it
    was trained at."""
    from aullm_core.train.checkpoint import load_checkpoint, save_checkpoint

    other = tiny_clipset(subjects=3, clips_per_subject=2, size=size)
    fold = loso_folds(other)[0]
    result = train_fold(other, other, fold, _config(**{"train.epochs": 1}), progress=False)
    assert result.probs.shape == (len(fold.test_idx), 3) and np.isfinite(result.probs).all()
    trained = train_full(other, _config(**{"train.epochs": 1}), progress=False)
    save_checkpoint(trained, tmp_path / "model")
    assert load_checkpoint(tmp_path / "model").model.encoder.frame_size == size
