"""What training one fold returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
