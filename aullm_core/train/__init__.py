"""Fold training, losses, metrics, checkpoints and prediction.

Names are re-exported lazily so that ``import aullm_core.train.result`` (used by the sweep driver
and the fold store) does not pull in torch, transformers and peft.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "verify_checkpoint": "checkpoint",
    "TrainedModel": "fold",
    "build_model": "fold",
    "inner_split": "fold",
    "train_fold": "fold",
    "train_full": "fold",
    "asl_loss": "losses",
    "bce_loss": "losses",
    "faithful_loss": "losses",
    "get_loss": "losses",
    "PAPER_THRESHOLDS": "metrics",
    "Score": "metrics",
    "f1_macro": "metrics",
    "f1_pos": "metrics",
    "score_all": "metrics",
    "score_results": "metrics",
    "trivial_scores": "metrics",
    "binarize": "predict",
    "predict_clips": "predict",
    "FoldResult": "result",
}

__all__ = [
    "PAPER_THRESHOLDS",
    "FoldResult",
    "Score",
    "TrainedModel",
    "asl_loss",
    "bce_loss",
    "binarize",
    "build_model",
    "f1_macro",
    "f1_pos",
    "faithful_loss",
    "get_loss",
    "inner_split",
    "load_checkpoint",
    "predict_clips",
    "save_checkpoint",
    "score_all",
    "score_results",
    "train_fold",
    "train_full",
    "trivial_scores",
    "verify_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
