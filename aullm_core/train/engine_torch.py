"""Plain PyTorch engine: Adam with L2 weight decay on the trainable parts, autocast on GPU.

On CUDA with ``precision`` bf16 or fp16 the frozen LLM weights are half precision (the pool loads
them so) while LED, CNN, EFP, LoRA and head keep fp32 master weights; the forward runs under
``torch.autocast`` and fp16 adds a ``GradScaler``. On CPU everything is fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from aullm_core.config import TrainConfig
from aullm_core.model.vlm import AULLM

_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this precision on this device (None = plain fp32)."""
    return _HALF.get(precision) if device.type == "cuda" else None


def make_adam(model: AULLM, train: TrainConfig) -> torch.optim.Adam:
    """Adam with L2 weight decay (not AdamW) on the trainable parameters, fused kernel.

    The fused implementation (CPU and CUDA) is ~15x faster than the default per-tensor loop on CPU
    for the 60M-parameter projector and computes the same update.
    """
    return torch.optim.Adam(
        model.trainable_parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=True
    )


class TorchEngine:
    """One optimiser step per call to ``step``; ``forward`` applies the precision policy."""

    rank = 0
    world_size = 1

    def __init__(self, model: AULLM, train: TrainConfig, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.dtype = autocast_dtype(train.precision, device)
        self.optimizer = make_adam(model, train)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype is torch.float16 else None

    @property
    def module(self) -> nn.Module:
        return self.model

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
        else:
            with torch.autocast(device_type=self.device.type, dtype=self.dtype):
                yield

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.module(clips)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def sum_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """Single process: the value itself."""
        return value

    def gather_rows(self, rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Single process: nothing to gather."""
        return rows, values

    def trained_model(self) -> AULLM:
        """The trained module with its full (unpartitioned) weights."""
        return self.model
