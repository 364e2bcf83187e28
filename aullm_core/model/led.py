"""Learnable Eulerian dynamics (LED) layer (method.md section 3.1).

Three learnable scalars, stored as logs (alpha=10, r1=0.4, r2=0.05 at init), build a 6x6
upper-triangular matrix ``W``::

    W[i, i] = alpha * (r1 - r2)
    W[i, j] = alpha * (1 - r1)**(j - i) * r1**b - alpha * (1 - r2)**(j - i) * r2**b,  j > i, b = min(1, i)

Output frame ``j`` is ``sum_i x_i W[i, j] / (sum_i |x_i| |W[i, j]| + 1e-8)`` per pixel, i.e. a
band-pass of the temporal signal normalised to [-1, 1]. Output frame 0 is replaced by the raw
frame 0 and frames 1..N-1 are kept, as the reference does; the replaced frame is therefore not
part of the output (the reference's order of operations, kept on purpose). The normalisation
divides alpha out (up to the 1e-8), so alpha gets (almost) no gradient: r1 and r2 are what learns.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aullm_core.model.config import LED_ALPHA, LED_EPS, LED_R1, LED_R2, N_FRAMES


class LEDLayer(nn.Module):
    """(B, 1, N, H, W) raw frames -> (B, 1, N-1, H, W) normalised temporal responses."""

    def __init__(self, n_frames: int = N_FRAMES) -> None:
        super().__init__()
        if n_frames < 2:
            raise ValueError(f"LEDLayer needs at least 2 frames, got {n_frames=}")
        self.n_frames = n_frames
        # Shape (1,), not 0-d: DeepSpeed's parameter broadcast cannot view a 0-d tensor as bytes.
        self.log_alpha = nn.Parameter(torch.tensor([math.log(LED_ALPHA)]))
        self.log_r1 = nn.Parameter(torch.tensor([math.log(LED_R1)]))
        self.log_r2 = nn.Parameter(torch.tensor([math.log(LED_R2)]))
        i = torch.arange(n_frames).view(-1, 1)
        j = torch.arange(n_frames).view(1, -1)
        self.register_buffer("_dist", (j - i).clamp(min=0).float(), persistent=False)
        self.register_buffer("_b", i.clamp(max=1).float().expand(n_frames, n_frames).clone(), persistent=False)
        self.register_buffer("_upper", (j > i).float(), persistent=False)
        self.register_buffer("_diag", torch.eye(n_frames), persistent=False)

    def weight_matrix(self) -> torch.Tensor:
        """The (N, N) matrix W built from the current alpha, r1, r2."""
        alpha, r1, r2 = self.log_alpha.exp(), self.log_r1.exp(), self.log_r2.exp()
        off = alpha * (1 - r1) ** self._dist * r1**self._b - alpha * (1 - r2) ** self._dist * r2**self._b
        return self._diag * alpha * (r1 - r2) + self._upper * off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 1, N, H, W)
        w = self.weight_matrix().to(x.dtype)  # (N, N)
        num = torch.einsum("bcihw,ij->bcjhw", x, w)  # (B, 1, N, H, W)
        den = torch.einsum("bcihw,ij->bcjhw", x.abs(), w.abs()) + LED_EPS  # (B, 1, N, H, W)
        out = num / den
        out = torch.cat([x[:, :, :1], out[:, :, 1:]], dim=2)  # frame 0 <- raw frame 0, (B, 1, N, H, W)
        return out[:, :, 1:]  # (B, 1, N-1, H, W)
