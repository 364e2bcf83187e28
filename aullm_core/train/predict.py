"""Predicting AU probabilities for clips with a trained model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from aullm_core.train.engine_torch import autocast_dtype
from aullm_core.train.sampling import DeviceClips

if TYPE_CHECKING:
    from aullm_core.train.fold import TrainedModel

EVAL_BATCH = 256


@torch.no_grad()
def predict_clips(trained: TrainedModel, clips: Sequence[np.ndarray]) -> np.ndarray:
    """Probabilities (n, n_aus) for clips of uint8 frames (T, H, W) or (T, H, W, 3), sampled evenly
    over each whole clip (the test-time rule of method.md section 2)."""
    n_aus = len(trained.aus)
    if len(clips) == 0:
        return np.zeros((0, n_aus))
    device = torch.device(trained.device)
    where = next(iter(trained.model.encoder.parameters())).device
    if where.type != device.type:
        raise ValueError(f"model is on {where}, TrainedModel.device says {device}")
    data = DeviceClips(clips, device)
    h, w = data.frames.shape[1:]
    if (h, w) != (64, 64):
        raise ValueError(f"clips must be 64x64 frames like the training cache, got {h}x{w}")
    dtype = autocast_dtype(trained.config.train.precision, device)
    trained.model.eval()
    out = []
    for start in range(0, len(data), EVAL_BATCH):
        idx = torch.arange(start, min(start + EVAL_BATCH, len(data)), device=device)
        x = data.eval_batch(idx, trained.config.data.n_frames)  # (B, N, H, W)
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out.append(torch.sigmoid(trained.model(x).float()))
    return torch.cat(out).cpu().numpy().astype(np.float64)


def binarize(trained: TrainedModel, probs: np.ndarray) -> np.ndarray:
    """0/1 decisions with the model's per-AU thresholds."""
    thr = np.array([trained.thresholds[a] for a in trained.aus])
    return (probs >= thr[None, :]).astype(np.int64)
