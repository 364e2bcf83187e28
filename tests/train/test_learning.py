"""A fold of the quick recipe learns: on the easy synthetic difficulty its test AUC is clearly above
chance and clearly above the same network left untrained. A change that breaks learning (a lost
gradient, a wrong label order, frames fed out of order) fails here."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from aullm_core.config import ExperimentConfig
from aullm_core.data.cache import load_cache, make_cache
from aullm_core.data.splits import Fold
from aullm_core.data.synth import write_synthetic
from aullm_core.train.fold import train_fold

pytestmark = pytest.mark.slow

TEST_SUBJECTS = ("sub07", "sub08")


def _auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-AU ROC AUC over the AUs with both classes among the test clips."""
    usable = [k for k in range(labels.shape[1]) if 0 < labels[:, k].sum() < len(labels)]
    return float(np.mean([roc_auc_score(labels[:, k], probs[:, k]) for k in usable]))


@pytest.fixture(scope="module")
def easy_clips(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("learn")
    data = write_synthetic("casme2", root / "easy", subjects=8, clips_per_subject=6, seed=0,
                           difficulty="easy", progress=False)
    return load_cache(make_cache("casme2", data, root / "easy.h5", progress=False).path)


def test_a_quick_fold_learns_on_the_easy_difficulty(easy_clips) -> None:
    test = np.isin(easy_clips.subjects, TEST_SUBJECTS)
    fold = Fold("sub07+sub08", "loso", np.flatnonzero(~test), np.flatnonzero(test), easy_clips.aus)
    base = ExperimentConfig.preset("quick").with_overrides({"train.inner_val_share": 0.0, "train.epochs": 12})
    trained = train_fold(easy_clips, easy_clips, fold, base, progress=False)
    untrained = train_fold(easy_clips, easy_clips, fold, base.with_overrides({"train.lr": 1e-12}), progress=False)
    auc, control = _auc(trained.probs, trained.labels), _auc(untrained.probs, untrained.labels)
    assert trained.epoch_losses[-1] < 0.8 * trained.epoch_losses[0]
    assert auc > 0.7, f"test AUC {auc:.3f} (untrained {control:.3f})"
    assert auc > control + 0.1, f"test AUC {auc:.3f} is not clearly above the untrained network's {control:.3f}"
