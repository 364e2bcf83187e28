"""Temporal sampling of N frames per clip (method.md section 2), on the training device.

- train: ``max_f`` uniform in [min_end, T-2], frames ``round(linspace(0, max_f, N))`` (the window
  starts at onset, its end is random). A clip too short for that range (T-2 < min_end) uses
  ``max_f = max(T-2, 0)`` clamped into the clip (the reference would fail on it).
- test: ``round(linspace(0, T-1, N))`` (even spacing over the whole clip).

``DeviceClips`` holds a fold's clips as one flat uint8 tensor on the device, moved once; batches are
gathered there from index tensors, so the step loop makes no host-device copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: ITU-R 601 luma weights, as Pillow's convert('L') uses, for caches stored in colour.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_grey(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) uint8 unchanged; (T, H, W, 3) colour -> (T, H, W) grey uint8."""
    if frames.ndim == 3:
        return frames
    if frames.ndim == 4 and frames.shape[-1] == 3:
        return np.clip(np.rint(frames.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)
    raise ValueError(f"expected frames (T, H, W) or (T, H, W, 3), got shape {frames.shape}")


def eval_indices_np(length: int, n_frames: int) -> np.ndarray:
    """Reference (numpy) even spacing: round(linspace(0, T-1, N))."""
    return np.round(np.linspace(0, length - 1, n_frames)).astype(np.int64)


def train_indices_np(length: int, n_frames: int, min_end: int, rng: np.random.Generator) -> np.ndarray:
    """Reference (numpy) training window: max_f ~ U{min_end..T-2}, round(linspace(0, max_f, N))."""
    hi = max(length - 2, 0)
    lo = min(min_end, hi)
    max_f = int(rng.integers(lo, hi + 1))
    return np.round(np.linspace(0, max_f, n_frames)).astype(np.int64)


def _spaced(ends: torch.Tensor, n_frames: int) -> torch.Tensor:
    """round(linspace(0, end, N)) for each end: (B,) -> (B, N) long (no ties: fractions are k/(N-1))."""
    steps = torch.arange(n_frames, device=ends.device, dtype=torch.float64) / (n_frames - 1)  # (N,)
    return torch.round(ends.to(torch.float64)[:, None] * steps[None, :]).long()  # (B, N)


def eval_indices(lengths: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(B,) clip lengths -> (B, N) frame indices, evenly spaced over each whole clip."""
    return _spaced(lengths - 1, n_frames)


def train_indices(
    lengths: torch.Tensor, n_frames: int, min_end: int, generator: torch.Generator
) -> torch.Tensor:
    """(B,) clip lengths -> (B, N) frame indices of a window from onset to a random end."""
    hi = (lengths - 2).clamp(min=0)  # (B,)
    lo = hi.clamp(max=min_end)  # (B,)
    u = torch.rand(lengths.shape, generator=generator, device=lengths.device, dtype=torch.float64)
    ends = lo + torch.floor(u * (hi - lo + 1).to(torch.float64)).long().clamp(max=hi - lo)
    return _spaced(ends, n_frames)


class DeviceClips:
    """Clips of varying length stored flat on one device: frames (sum T, H, W) uint8."""

    def __init__(self, clips: Sequence[np.ndarray], device: torch.device | str) -> None:
        if not clips:
            raise ValueError("DeviceClips needs at least one clip")
        grey = [to_grey(np.asarray(c)) for c in clips]
        lengths = np.array([g.shape[0] for g in grey], dtype=np.int64)
        if (lengths < 1).any():
            raise ValueError(f"clip {int(np.argmin(lengths))} has no frames")
        self.device = torch.device(device)
        self.frames = torch.from_numpy(np.concatenate(grey, axis=0)).to(self.device)  # (sum T, H, W)
        self.lengths = torch.from_numpy(lengths).to(self.device)  # (n,)
        self.starts = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]])).to(self.device)  # (n,)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def gather(self, clip_idx: torch.Tensor, frame_idx: torch.Tensor) -> torch.Tensor:
        """(B,) clips and (B, N) frame indices -> (B, N, H, W) float32, raw values 0..255."""
        rows = self.starts[clip_idx][:, None] + frame_idx  # (B, N)
        return self.frames[rows].float()  # (B, N, H, W)

    def train_batch(
        self, clip_idx: torch.Tensor, n_frames: int, min_end: int, generator: torch.Generator
    ) -> torch.Tensor:
        return self.gather(clip_idx, train_indices(self.lengths[clip_idx], n_frames, min_end, generator))

    def eval_batch(self, clip_idx: torch.Tensor, n_frames: int) -> torch.Tensor:
        return self.gather(clip_idx, eval_indices(self.lengths[clip_idx], n_frames))
