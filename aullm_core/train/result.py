"""What training one fold returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

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
