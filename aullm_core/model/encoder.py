"""LED + 3D-CNN visual encoder giving mid- and high-level features (method.md section 3.1-3.2).

Shapes for the reference input (B, 1, 6, 64, 64):
LED -> (B, 1, 5, 64, 64) -> Conv3d(1->32, (1,5,5)) + ReLU -> (B, 32, 5, 60, 60) -> MaxPool3d((1,3,3))
-> (B, 32, 5, 20, 20) -> Conv3d(32->64, (2,3,3)) -> (B, 64, 4, 18, 18) -> per-frame SE
-> MaxPool3d(2) -> (B, 64, 2, 9, 9) = F_mid (10368) -> Linear -> F_high (256).

Both convolutions run as 2D convolutions over the frames (the same arithmetic, the same weights):
conv1's kernel spans one frame, so it, its max-pool and its BatchNorm are per-frame 2D operations
on (B*T, C, H, W); conv2's two-frame kernel is two 3x3 kernels, applied to every frame as one
Conv2d with both kernels stacked (2 x 64 outputs) and summed over neighbouring frames. cuDNN's 3D
implicit-GEMM kernels for this encoder took ~7 ms per direction at batch 256 on an H200 (bf16),
more than the 1.5B LLM's matrix products; with the 2D kernels a graphed 1.5B training step went
from 41 ms to 30 ms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aullm_core.model.config import (
    CONV1_CHANNELS,
    CONV2_CHANNELS,
    F_HIGH,
    FRAME_SIZE,
    N_FRAMES,
    SE_REDUCED,
    mid_side,
)
from aullm_core.model.led import LEDLayer


class _Conv1MaxPoolCpu(torch.autograd.Function):
    """conv1 without bias, then a non-overlapping max-pool, on CPU: (N, 1, H, W) -> (N, C, H', W').

    The same values and (up to summation order) the same gradients as ``F.max_pool2d(F.conv2d(x, w), k)``,
    in less time on CPU (a whole quick-preset training step 1.29x faster at batch 16, 1.21x at 36:
    bench/results/cpu_fold_bench.json). Where the time went (batch 36 = 180 frames, 2 cores): oneDNN's max-pool of the
    channels-first map (~58 ms; ~24 ms with the copy to channels-last), and the convolution's input
    gradient, a 32 -> 1 channel transposed convolution that oneDNN computes slowly (~100 ms; ~15 ms as
    batched matrix products and shifted sums). The input gradient is needed because LED's parameters train.
    """

    @staticmethod
    def forward(ctx, frames: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:  # type: ignore[override]
        y = F.conv2d(frames, weight).contiguous(memory_format=torch.channels_last)  # (N, C, H - 4, W - 4)
        pooled, idx = torch.ops.aten.max_pool2d_with_indices(y, [k, k], [k, k])
        ctx.save_for_backward(frames, weight, idx.contiguous())
        ctx.map_hw = y.shape[-2:]
        return pooled.contiguous()  # (N, C, H', W')

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]
        frames, weight, idx = ctx.saved_tensors
        n, c = grad.shape[:2]
        h, w = ctx.map_hw
        # max-pool's backward: each window's gradient goes to its maximum (windows do not overlap)
        dense = grad.new_zeros(n, c, h * w).scatter_(2, idx.flatten(2), grad.contiguous().flatten(2))
        dense = dense.view(n, c, h, w)
        grad_w = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                dense, frames, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False]
            )[1]
        if ctx.needs_input_grad[0]:
            grad_x = _transposed_conv_one_channel(dense, weight, frames.shape[-2:])
        return grad_x, grad_w, None


def _transposed_conv_one_channel(dense: torch.Tensor, weight: torch.Tensor, hw: torch.Size) -> torch.Tensor:
    """The input gradient of a valid one-input-channel convolution: (N, C, h, w) -> (N, 1, H, W).

    Each kernel tap's channel-weighted map (one small product per frame; torch.matmul would
    transpose and copy the whole map) is added at its offset: the same sums as ``F.fold`` of the
    columns, ~7x faster on CPU.
    """
    n, _, h, w = dense.shape
    k = weight.shape[-1]
    taps = torch.bmm(weight.flatten(1).t().expand(n, -1, -1), dense.flatten(2))  # (N, k k, h w)
    taps = taps.view(n, k, k, h, w)
    out = dense.new_zeros(n, *hw)
    for i in range(k):
        for j in range(k):
            out[:, i : i + h, j : j + w] += taps[:, i, j]
    return out.unsqueeze(1)


def unfolded_conv2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A valid, stride-1 2D convolution without bias as im2col and one matrix product.

    x (N, C, H, W), weight (C', C, k, k) -> (N, C', H - k + 1, W - k + 1).
    """
    k = weight.shape[-1]
    cols = F.unfold(x, k)  # (N, C k k, (H - k + 1)(W - k + 1))
    out = torch.matmul(weight.flatten(1), cols)  # (N, C', (H - k + 1)(W - k + 1))
    return out.view(*out.shape[:2], x.shape[-2] - k + 1, x.shape[-1] - k + 1)


class FrameSqueezeExcite(nn.Module):
    """Squeeze-excitation applied to each frame separately: (B, C, T, H, W) -> same shape."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, reduced, bias=False)
        self.fc2 = nn.Linear(reduced, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(3, 4)).transpose(1, 2)  # (B, T, C)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))  # (B, T, C)
        return x * s.transpose(1, 2)[..., None, None]  # (B, C, T, H, W)


class VisualEncoder(nn.Module):
    """Raw grey frames (B, 1, N, S, S), values 0..255 -> (F_mid (B, 10368), F_high (B, 256)) for N = 6, S = 64."""

    def __init__(self, dropout: float, n_frames: int = N_FRAMES, frame_size: int = FRAME_SIZE) -> None:
        super().__init__()
        if n_frames < 4:
            raise ValueError(f"the 3D-CNN needs at least 4 sampled frames, got {n_frames=}")
        # LED keeps N-1 frames, conv2 (k_t=2) leaves N-2, MaxPool3d(2) halves: 6 frames -> 2; 64 pixels -> 9.
        self.frame_size = frame_size
        self.f_mid = CONV2_CHANNELS * ((n_frames - 2) // 2) * mid_side(frame_size) ** 2  # 10368 for N = 6, 64 px
        self.led = LEDLayer(n_frames)
        self.conv1 = nn.Conv3d(1, CONV1_CHANNELS, kernel_size=(1, 5, 5))
        self.pool1 = nn.MaxPool3d((1, 3, 3))
        self.bn1 = nn.BatchNorm3d(CONV1_CHANNELS)
        self.drop1 = nn.Dropout3d(dropout)
        self.conv2 = nn.Conv3d(CONV1_CHANNELS, CONV2_CHANNELS, kernel_size=(2, 3, 3))
        self.bn2 = nn.BatchNorm3d(CONV2_CHANNELS)
        self.se = FrameSqueezeExcite(CONV2_CHANNELS, SE_REDUCED)
        self.pool2 = nn.MaxPool3d(2)
        self.drop2 = nn.Dropout3d(dropout)
        self.fc_high = nn.Linear(self.f_mid, F_HIGH)
        self.drop3 = nn.Dropout(dropout)
        self.conv1_as_gemm = False  # see _conv1

    def mid_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, N, H, W) -> the mid-level map (B, 64, 2, 9, 9)."""
        x = self.led(x)  # (B, 1, T, 64, 64), T = N - 1
        b, _, t, h, w = x.shape
        frames = x.reshape(b * t, 1, h, w)  # (B*T, 1, 64, 64)
        y = self._conv1_pooled(frames)  # (B*T, 32, 20, 20)
        # the method's ReLU(conv + bias) then max-pool, exactly: a max commutes with adding a
        # per-channel constant and with ReLU, so both run on the 9x smaller pooled map
        y = torch.relu(y + self.conv1.bias.to(y.dtype)[:, None, None])
        y = self.bn1(y[:, :, None]).view(b, t, *y.shape[1:])  # per-channel statistics over (B, T, H, W)
        y = self.drop1(y.transpose(1, 2)).transpose(1, 2)  # (B, T, 32, 20, 20), channels dropped per clip
        y = self._conv2(y)  # (B, 64, T - 1, 18, 18)
        y = self.se(self.bn2(torch.relu(y)))  # (B, 64, 4, 18, 18)
        return self.drop2(self.pool2(y))  # (B, 64, 2, 9, 9)

    def _conv1_pooled(self, frames: torch.Tensor) -> torch.Tensor:
        """conv1 without its bias, then pool1's (3, 3) max-pool: (B*T, 1, H, W) -> (B*T, 32, 20, 20)."""
        k = self.pool1.kernel_size[1]
        if frames.device.type == "cpu":
            return _Conv1MaxPoolCpu.apply(frames, self.conv1.weight[:, :, 0], k)
        return F.max_pool2d(self._conv1(frames), k)

    def _conv1(self, frames: torch.Tensor) -> torch.Tensor:
        """conv1 (one input channel, 5 x 5) without its bias on (B*T, 1, H, W) -> (B*T, 32, H - 4, W - 4).

        With ``conv1_as_gemm`` (set by ``AULLM.compile_regions``) and on CUDA, as im2col and one
        matrix product, which Inductor fuses well: at batch 256 on an H200 a compiled step was
        ~1.3 ms faster than with cuDNN, whose kernels for a one-channel input pad the channel
        dimension. Eagerly the unfold/fold kernels are slower than cuDNN (+10 ms per graphed step),
        so uncompiled models keep Conv2d.
        """
        weight = self.conv1.weight[:, :, 0]  # (32, 1, 5, 5)
        if self.conv1_as_gemm and frames.is_cuda:
            return unfolded_conv2d(frames, weight)
        return F.conv2d(frames, weight)

    def _conv2(self, y: torch.Tensor) -> torch.Tensor:
        """conv2 (kernel 2 x 3 x 3) on (B, T, C, H, W) frames -> (B, C', T - 1, H - 2, W - 2)."""
        b, t = y.shape[:2]
        weight = self.conv2.weight  # (C', C, 2, 3, 3)
        stacked = torch.cat([weight[:, :, 0], weight[:, :, 1]])  # (2C', C, 3, 3)
        z = F.conv2d(y.reshape(b * t, *y.shape[2:]), stacked)  # (B*T, 2C', H - 2, W - 2)
        z = z.view(b, t, 2, weight.shape[0], *z.shape[2:])  # (B, T, 2, C', H - 2, W - 2)
        out = z[:, :-1, 0] + z[:, 1:, 1] + self.conv2.bias[:, None, None]  # frame t and t + 1
        return out.transpose(1, 2)  # (B, C', T - 1, H - 2, W - 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f_mid = self.mid_map(x).flatten(1)  # (B, 10368) for N = 6
        f_high = self.drop3(torch.relu(self.fc_high(f_mid)))  # (B, 256)
        return f_mid, f_high
