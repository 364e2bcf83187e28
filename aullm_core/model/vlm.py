"""The whole AU-LLM model: LED + 3D-CNN -> EFP token -> (prompt +) LLM with LoRA -> AU head.

Two exact ways through the LLM (method.md section 3, "exactness opportunity"):
- naive: every clip runs ``[prompt embeddings..., visual token]`` (P + 1 positions);
- shared (default): one decoder pass over a single packed sequence ``[prompt (P), token_1 ...
  token_B]``. The prompt positions attend causally among themselves; every visual token sits at
  position P (rotary) and attends to the P prompt keys/values and to itself only. The prompt never
  attends to a visual token in a causal LM, so each token's last hidden state is exactly the naive
  one, while the prompt's keys/values are computed once per batch instead of B times. Gradients
  reach the LoRA weights through the prompt positions as well.
  With the decoder's attention set to ``aullm_packed`` (the pool does this for SDPA decoders), the
  attention computes that layout in its structure, about B * (P + 1) scores instead of (P + B)^2;
  the dense mask is still passed, for decoders whose attention is their own.
Packing (rather than a batch-1 prompt pass whose keys/values a second pass reuses) makes every
frozen weight matrix a single (P + B)-row product per pass: one read of the weights and one set of
kernel launches instead of two, which is what matters on a GPU where the batch-1 prompt pass is
bound by memory bandwidth and launches.
One difference exists only in training with LoRA dropout > 0: the shared pass draws one dropout
mask for the prompt positions of the whole batch instead of one per clip (same expectation).
"""

from __future__ import annotations

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from aullm_core.model.attention import PACKED_ATTENTION
from aullm_core.model.config import ModelConfig
from aullm_core.model.encoder import VisualEncoder
from aullm_core.model.llm import BaseLLM, lora_decoder
from aullm_core.model.projector import FusionProjector


class AULLM(nn.Module):
    """Clips (B, N, H, W), raw grey values 0..255 as float -> one logit per AU (B, n_aus).

    Example:
        >>> from aullm_core.model.config import ModelConfig
        >>> model = AULLM(ModelConfig(use_llm=False), n_aus=3, d_model=64)
        >>> model(torch.rand(2, 6, 64, 64) * 255).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        n_aus: int,
        d_model: int,
        base: BaseLLM | None = None,
        n_frames: int = 6,
        frame_size: int = 64,
        share_base_weights: bool = True,
    ) -> None:
        super().__init__()
        if cfg.use_llm and base is None:
            raise ValueError("use_llm=True needs a base LLM")
        if base is not None and cfg.use_llm and base.hidden_size != d_model:
            raise ValueError(f"{d_model=} differs from the LLM's hidden size {base.hidden_size}")
        self.cfg = cfg
        # Creation order fixes which RNG draws initialise what: encoder, projector, LoRA, head.
        self.encoder = VisualEncoder(cfg.dropout, n_frames, frame_size)
        self.projector = FusionProjector(
            d_model, efp_input=cfg.efp_input, dropout=cfg.dropout, f_mid=self.encoder.f_mid
        )
        self.llm = lora_decoder(base, cfg.lora, share_weights=share_base_weights) if cfg.use_llm else None
        ids: list[int] = []
        if cfg.use_llm and cfg.use_prompt:
            ids = list(base.tokenizer(cfg.prompt)["input_ids"])  # type: ignore[union-attr]
        self.register_buffer("prompt_ids", torch.tensor([ids], dtype=torch.long), persistent=False)
        self.head = nn.Linear(d_model, n_aus)
        self.shared_prompt_kv = cfg.shared_prompt_kv
        self._packed_layouts: dict[tuple[int, int, torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def prompt_length(self) -> int:
        return int(self.prompt_ids.shape[1])

    def visual_token(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, N, H, W) -> the EFP token (B, d)."""
        f_mid, f_high = self.encoder(clips.unsqueeze(1))  # (B, 1, N, H, W) in; (B, F_mid), (B, 256) out
        return self.projector(f_mid, f_high)  # (B, d)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.token_logits(self.visual_token(clips))

    def token_logits(self, token: torch.Tensor) -> torch.Tensor:
        """EFP tokens (B, d) -> AU logits (B, n_aus), always fp32: the LLM (if any), then the head."""
        h = token if self.llm is None else self.llm_last_hidden(token)  # (B, d)
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.head(h.float())

    def llm_last_hidden(self, token: torch.Tensor, *, shared: bool | None = None) -> torch.Tensor:
        """Last layer's hidden state at the final position (the visual token), (B, d)."""
        assert self.llm is not None
        shared = self.shared_prompt_kv if shared is None else shared
        embed = self.llm.get_input_embeddings()
        token = token[:, None, :].to(embed.weight.dtype)  # (B, 1, d)
        batch = token.shape[0]
        if self.prompt_length == 0:
            return self.llm(inputs_embeds=token, use_cache=False).last_hidden_state[:, -1]
        prompt = embed(self.prompt_ids)  # (1, P, d)
        if not shared:
            seq = torch.cat([prompt.expand(batch, -1, -1), token], dim=1)  # (B, P + 1, d)
            return self.llm(inputs_embeds=seq, use_cache=False).last_hidden_state[:, -1]
        n_prompt = prompt.shape[1]
        seq = torch.cat([prompt[0], token[:, 0]], dim=0)[None]  # (1, P + B, d)
        mask, positions = self._packed_layout(n_prompt, batch, _attention_dtype(seq), seq.device)
        layout = {"packed_prompt": n_prompt} if self.packed_attention else {}
        out = self.llm(inputs_embeds=seq, position_ids=positions, attention_mask=mask, use_cache=False, **layout)
        return out.last_hidden_state[0, n_prompt:]  # (B, d)

    @property
    def packed_attention(self) -> bool:
        """Whether the decoder's attention computes the packed layout in its structure
        (``aullm_core.model.attention``); otherwise the dense mask alone describes it."""
        if self.llm is None:
            return False
        return getattr(self.llm.get_base_model().config, "_attn_implementation", None) == PACKED_ATTENTION

    def _packed_layout(
        self, n_prompt: int, batch: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive mask (1, 1, P + B, P + B) and position ids (1, P + B) of the packed sequence,
        built once per shape (static tensors, as CUDA graph replays need).

        The prompt sits at positions 0..P-1 and every visual token at P. The mask's storage is
        padded to a multiple of 16 columns so that fused attention kernels take it without a copy.
        """
        key = (n_prompt, batch, dtype, device)
        if key not in self._packed_layouts:
            n = n_prompt + batch
            i = torch.arange(n, device=device)[:, None]
            j = torch.arange(n, device=device)[None, :]
            allowed = torch.where(i < n_prompt, j <= i, (j < n_prompt) | (j == i))  # (n, n)
            padded = torch.zeros(1, 1, n, -(-n // 16) * 16, dtype=dtype, device=device)
            padded[0, 0, :, :n].masked_fill_(~allowed, torch.finfo(dtype).min)
            positions = torch.clamp(torch.arange(n, device=device), max=n_prompt)[None]
            self._packed_layouts[key] = (padded[..., :n], positions)
        return self._packed_layouts[key]

    def compile_regions(self) -> None:
        """``torch.compile`` the encoder, the projector and every decoder layer in place.

        Regional compilation: the decoder's layers share one compiled graph (same code, same
        shapes), so compiling costs about one layer's worth, not the whole decoder's. Inductor fuses
        the layers' small operations (RMSNorm, rotary embedding, LoRA scaling and adds, SiLU gate,
        residuals), which at batch 256 otherwise outnumber the matrix products many times.
        """
        self.encoder.conv1_as_gemm = True  # faster than cuDNN once compiled (see VisualEncoder._conv1)
        self.encoder.compile()
        self.projector.compile()
        if self.llm is not None:
            for layer in self.llm.get_base_model().layers:
                layer.compile()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything that trains: LED, CNN, EFP, LoRA, head (the base LLM stays frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trained tensor (LED, CNN with BN statistics, EFP, head, LoRA adapter), detached clones.

        Keys: ``encoder.*``, ``projector.*``, ``head.*`` and ``lora.*`` (peft's adapter state dict).
        The frozen base LLM is left out: it is identified by the configuration, not stored.
        """
        state = {}
        for prefix in ("encoder", "projector", "head"):
            for key, value in getattr(self, prefix).state_dict().items():
                state[f"{prefix}.{key}"] = value.detach().clone()
        if self.llm is not None:
            for key, value in get_peft_model_state_dict(self.llm).items():
                state[f"lora.{key}"] = value.detach().clone()
        return state

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``trained_state_dict``; raises KeyError naming missing or unexpected keys."""
        for prefix in ("encoder", "projector", "head"):
            part = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
            getattr(self, prefix).load_state_dict(part, strict=True)
        lora = {k[5:]: v for k, v in state.items() if k.startswith("lora.")}
        if (self.llm is None) != (not lora):
            raise KeyError(f"LoRA weights {'missing' if self.llm is not None else 'unexpected'} in state")
        if self.llm is not None:
            result = set_peft_model_state_dict(self.llm, lora)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise KeyError(f"unexpected LoRA keys {unexpected[:3]}")
            expected = set(get_peft_model_state_dict(self.llm))
            if expected != set(lora):
                raise KeyError(f"LoRA keys differ: missing {sorted(expected - set(lora))[:3]}")

    def to_device(self, device: torch.device | str) -> AULLM:
        """Move the trained parts; the frozen base already sits on its pool's device (never re-cast it)."""
        for part in (self.encoder, self.projector, self.head):
            part.to(device)
        self.prompt_ids = self.prompt_ids.to(device)
        if self.llm is not None:
            for name, param in self.llm.named_parameters():
                if param.requires_grad and param.device.type != torch.device(device).type:
                    raise ValueError(f"LoRA weight {name} is on {param.device}, expected {device}")
        return self


def _attention_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the LLM's attention computes in: autocast's when it is on, else the inputs'."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return hidden.dtype
