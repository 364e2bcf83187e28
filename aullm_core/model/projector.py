"""Enhanced Fusion Projector (EFP): visual features -> one token of the LLM's width (method.md 3.3)."""

from __future__ import annotations

import torch
from torch import nn

from aullm_core.model.config import F_HIGH, F_MID, EfpInput

EFP_INPUTS = ("both", "mid", "high")


class FusionProjector(nn.Module):
    """concat[F_mid, F_high] (10624) -> Linear(-> (10624 + d) // 2) -> ReLU -> Dropout -> Linear(-> d).

    ``efp_input`` selects the ablations: 'mid' reads F_mid only, 'high' F_high only (the hidden
    width follows the same (in + d) // 2 rule).
    """

    def __init__(
        self, d_model: int, *, efp_input: EfpInput = "both", dropout: float = 0.3, f_mid: int = F_MID
    ) -> None:
        super().__init__()
        if efp_input not in EFP_INPUTS:
            raise ValueError(f"efp_input must be one of {EFP_INPUTS}, got {efp_input=}")
        self.efp_input = efp_input
        n_in = {"both": f_mid + F_HIGH, "mid": f_mid, "high": F_HIGH}[efp_input]
        hidden = (n_in + d_model) // 2
        self.fc1 = nn.Linear(n_in, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, f_mid: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        if self.efp_input == "both":
            x = torch.cat([f_mid, f_high], dim=1)  # (B, 10624)
        elif self.efp_input == "mid":
            x = f_mid  # (B, 10368)
        else:
            x = f_high  # (B, 256)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))  # (B, d)
