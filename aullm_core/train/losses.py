"""Multi-label losses on logits (B, n_aus) and 0/1 targets; all SUM-reduced like the reference.

- ``faithful``: what the reference actually computed. Its loss multiplies a weight in under no-grad,
  so the GRADIENT is that of a sum-reduced BCE whose negatives use the shifted probability
  ``xs_neg = min(1 - p + 0.05, 1)`` (method.md section 4; negatives with p < 0.05 give no gradient),
  while the VALUE it reports weights each negative term by ``xs_neg ** 4`` (positives by 1):
  ``-sum(y log p + (1-y) xs_neg**4 log xs_neg)``. That is not the textbook asymmetric loss (whose
  negative weight is ``(1 - xs_neg) ** 4``), but it is the number the reference logged.
- ``asl``: the textbook asymmetric loss (Ridnik et al. 2021) with its focusing weight
  differentiated (gamma_neg=4, gamma_pos=0, clip=0.05):
  ``-sum(y log p + (1-y) p_m**4 log(1 - p_m))``, ``p_m = max(p - 0.05, 0)``.
- ``bce``: plain binary cross-entropy, summed.
Sum reduction makes the loss scale with batch size; Adam is insensitive to that scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CLIP = 0.05
GAMMA_NEG = 4.0
GAMMA_POS = 0.0
EPS = 1e-8


def _shifted_terms(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    p = torch.sigmoid(logits)
    p_neg = (1 - p + CLIP).clamp(max=1)  # shifted probability of the negative class
    log_pos = targets * torch.log(p.clamp(min=EPS))
    log_neg = (1 - targets) * torch.log(p_neg.clamp(min=EPS))
    return p, p_neg, log_pos, log_neg


def _focusing_weight(p: torch.Tensor, p_neg: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    pt = p * targets + p_neg * (1 - targets)
    gamma = GAMMA_POS * targets + GAMMA_NEG * (1 - targets)
    return torch.pow(1 - pt, gamma)


def faithful_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reference's value (negatives weighted by ``xs_neg ** 4``) with its gradient (shifted BCE)."""
    targets = targets.to(logits.dtype)
    _, p_neg, log_pos, log_neg = _shifted_terms(logits, targets)
    unweighted = -(log_pos + log_neg).sum()
    with torch.no_grad():
        weighted = -(log_pos + log_neg * torch.pow(p_neg, GAMMA_NEG)).sum()
    return unweighted + (weighted - unweighted).detach()


def asl_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Standard asymmetric loss, the focusing weight part of the graph."""
    targets = targets.to(logits.dtype)
    p, p_neg, log_pos, log_neg = _shifted_terms(logits, targets)
    return -((log_pos + log_neg) * _focusing_weight(p, p_neg, targets)).sum()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="sum")


LOSSES: dict[str, LossFn] = {"faithful": faithful_loss, "asl": asl_loss, "bce": bce_loss}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: expected one of {sorted(LOSSES)}")
    return LOSSES[name]
