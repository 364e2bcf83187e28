"""What training one fold returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from aullm_core.data.records import ClipSet
    from aullm_core.data.splits import Fold


@dataclass
class FoldResult:
    """Test predictions of one fold plus what is needed to score and record it.

    ``probs`` and ``labels`` are (n_test, len(aus)); ``inner_thresholds`` holds one threshold per
    AU chosen on held-out training subjects (None without inner validation).
    """

    fold_id: str
    protocol: str
    aus: tuple[int, ...]
    clip_ids: list[str]
    subjects: list[str]
    probs: np.ndarray
    labels: np.ndarray
    epoch_losses: list[float]
    inner_thresholds: np.ndarray | None = None
    best_epoch: int | None = None
    duration_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def for_fold(cls, fold: Fold, test_set: ClipSet, **fields: Any) -> FoldResult:
        """A result identified by ``fold`` (id, protocol, AUs) over its test clips of ``test_set``
        (their clip ids and subjects, in ``fold.test_idx`` order); ``fields`` gives the rest."""
        meta = test_set.meta.iloc[np.asarray(fold.test_idx)]
        return cls(
            fold_id=fold.fold_id,
            protocol=fold.protocol,
            aus=tuple(fold.aus),
            clip_ids=[str(c) for c in meta["clip"]],
            subjects=[str(s) for s in meta["subject"]],
            **fields,
        )


def predictions_frame(results: Sequence[FoldResult]) -> pd.DataFrame:
    """The one predictions layout: a row per test clip with ``fold``, ``clip``, ``subject``, the labels
    ``AU<k>`` (0/1) and the probabilities ``prob_AU<k>``; what ``aullm score`` reads (``--labels`` takes
    the ``AU<k>`` columns, ``--probs`` the ``prob_AU<k>`` ones)."""
    frames = []
    for result in results:
        frame = pd.DataFrame({"fold": result.fold_id, "clip": result.clip_ids, "subject": result.subjects})
        for k, au in enumerate(result.aus):
            frame[f"AU{au}"] = np.asarray(result.labels[:, k]).astype(int)
        for k, au in enumerate(result.aus):
            frame[f"prob_AU{au}"] = result.probs[:, k]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["fold", "clip", "subject"])
