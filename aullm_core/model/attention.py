"""Attention for the packed shared-prompt sequence, registered with transformers as ``aullm_packed``.

The shared path (see ``vlm.py``) runs one sequence ``[prompt (P), token_1 .. token_B]``: the prompt
is causal among itself and each visual token sees the P prompt keys/values and itself only. A dense
masked attention over that sequence computes (P + B)^2 scores of which about B * (P + 1) are used,
and on CUDA a float mask plus grouped-query heads also rules out the flash kernels and makes
transformers copy the key/value heads (``repeat_kv``) in every layer. ``packed_prompt_attention``
computes the same thing in its structure instead:

- the prompt rows: causal attention over the prompt only (``is_causal``, no mask, grouped heads);
- the token rows: scores against the P prompt keys (one batched product per key/value head, the
  query heads of a group stacked) and each token's score against its own key; one softmax over
  those P + 1 scores; the output is the weighted prompt values plus the token's own value. These
  rows compute in fp32 even under autocast (B x P scores per head: cheap), as precise as fused
  attention kernels, which accumulate scores in fp32 too.

Decoders whose attention goes through transformers' ``AttentionInterface`` (Llama, Qwen2, Mistral
and most others) use it when their ``config._attn_implementation`` is ``aullm_packed``; a call
without the ``packed_prompt`` keyword (the naive path, inference with a cache) is plain SDPA.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = ["PACKED_ATTENTION", "packed_prompt_attention", "use_packed_attention"]

PACKED_ATTENTION = "aullm_packed"


def packed_prompt_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    packed_prompt: int | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: (1, H, P + B, D) queries, (1, H_kv, P + B, D) keys/values
    -> (1, P + B, H, D), exact for the packed layout when ``packed_prompt`` = P is given.

    Without ``packed_prompt``, with attention dropout, or for a batch of several sequences it is
    transformers' SDPA with ``attention_mask`` (which must then describe the layout).
    """
    if packed_prompt is None or dropout > 0.0 or query.shape[0] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    n_prompt = packed_prompt
    n_heads, n_kv = query.shape[1], key.shape[1]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    prompt_out = F.scaled_dot_product_attention(
        query[:, :, :n_prompt],
        key[:, :, :n_prompt],
        value[:, :, :n_prompt],
        is_causal=True,
        scale=scale,
        enable_gqa=n_heads != n_kv,
    )  # (1, H, P, D)
    groups = n_heads // n_kv
    with torch.autocast(query.device.type, enabled=False):  # fp32: scores, softmax and sums
        token_out = _token_rows(query.float(), key.float(), value.float(), n_prompt, groups, scale)
    out = torch.cat([prompt_out[0], token_out.to(prompt_out.dtype)], dim=1)  # (H, P + B, D)
    return out.transpose(0, 1)[None].contiguous(), None


def _token_rows(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, n_prompt: int, groups: int, scale: float
) -> torch.Tensor:
    """Outputs of the visual-token rows (H, B, D): each attends to the P prompt positions and itself.

    Computed in the inputs' dtype; the caller passes fp32. Its products are small (B x P per head),
    so fp32 costs little and keeps the scores as exact as a fused attention kernel's.
    """
    n_kv = key.shape[1]
    q = query[0, :, n_prompt:].unflatten(0, (n_kv, groups))  # (H_kv, g, B, D)
    k_prompt, v_prompt = key[0, :, :n_prompt], value[0, :, :n_prompt]  # (H_kv, P, D)
    k_self, v_self = key[0, :, None, n_prompt:], value[0, :, None, n_prompt:]  # (H_kv, 1, B, D)
    scores_prompt = (q.flatten(1, 2) @ k_prompt.transpose(1, 2)).unflatten(1, (groups, -1))  # (H_kv, g, B, P)
    scores_self = (q * k_self).sum(-1, keepdim=True)  # (H_kv, g, B, 1)
    weights = torch.softmax(torch.cat([scores_prompt, scores_self], dim=-1) * scale, dim=-1)  # (H_kv, g, B, P + 1)
    out = (weights[..., :n_prompt].flatten(1, 2) @ v_prompt).unflatten(1, (groups, -1))
    out = out + weights[..., n_prompt:] * v_self  # (H_kv, g, B, D)
    return out.flatten(0, 1)


AttentionInterface.register(PACKED_ATTENTION, packed_prompt_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def use_packed_attention(decoder: nn.Module) -> bool:
    """Switch a decoder that runs SDPA through transformers' interface to ``aullm_packed``.

    Returns whether it did; other decoders (eager or flash attention chosen by the checkpoint,
    remote code) keep theirs, and the shared path then relies on its dense mask alone.
    """
    config = getattr(decoder, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    decoder.set_attn_implementation(PACKED_ATTENTION)
    return True
