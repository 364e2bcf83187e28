"""The model's configuration: its tunable settings (``ModelConfig``, ``LoraSettings``: part of
``ExperimentConfig``, validated on load) and the constants fixed by the method (method.md section 3)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EfpInput = Literal["both", "mid", "high"]


class StrictConfig(BaseModel):
    """A configuration part: unknown keys refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

#: Frames sampled per clip (N); the frame side the reference is built for, and the smallest the 3D-CNN
#: can take (conv1 5x5, max-pool 3, conv2 3x3, max-pool 2 must leave at least one pixel).
N_FRAMES = 6
FRAME_SIZE = 64
MIN_FRAME_SIZE = 16

#: LED initial values (stored as logs in the layer).
LED_ALPHA = 10.0
LED_R1 = 0.4
LED_R2 = 0.05
LED_EPS = 1e-8

#: 3D-CNN widths and the feature sizes they give for (B, 1, 5, 64, 64) input.
CONV1_CHANNELS = 32
CONV2_CHANNELS = 64
SE_REDUCED = 4
F_MID = CONV2_CHANNELS * 2 * 9 * 9  # 10368 for 6 frames of 64 x 64
F_HIGH = 256


def mid_side(frame_size: int) -> int:
    """Side of the mid-level map for ``frame_size`` x ``frame_size`` frames (9 for 64): conv1 (5x5,
    valid), max-pool 3, conv2 (3x3, valid), max-pool 2. ValueError below ``MIN_FRAME_SIZE``."""
    if frame_size < MIN_FRAME_SIZE:
        raise ValueError(f"frames of {frame_size}x{frame_size} pixels: the 3D-CNN needs at least "
                         f"{MIN_FRAME_SIZE}x{MIN_FRAME_SIZE} (make the cache with --size {MIN_FRAME_SIZE} or more)")
    return ((frame_size - 4) // 3 - 2) // 2

#: Intermediate size of the 'tiny' LLM is this many times its hidden size.
TINY_MLP_RATIO = 4


class LoraSettings(StrictConfig):
    """LoRA adapter on the frozen LLM."""

    r: int = Field(16, ge=1, le=512, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (lora_alpha).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: tuple[str, ...] = Field(
        ("q_proj", "v_proj"), min_length=1,
        description="Names of the linear modules that get adapters; the default, the query and value projections, "
        "is the fused attention projection on models that have one (GPT-2's c_attn, Phi-3's qkv_proj). "
        "On the command line: --set model.lora.targets=[c_attn] or =c_attn,c_proj.",
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.strip("[]").split(",") if part.strip())
        return value


class ModelConfig(StrictConfig):
    """LED + 3D-CNN + Enhanced Fusion Projector + LLM (+LoRA) + AU head."""

    llm: str = Field(
        "tiny",
        description="'tiny' (a small Llama built in code, no download), a local checkpoint folder, a Hugging Face "
        "cache folder (models--ORG--NAME) or a hub id found in the local Hugging Face cache (never downloaded).",
    )
    llm_id: str | None = Field(
        None, description="Content identity of the checkpoint (set when model.llm is resolved on the driver); "
        "the fingerprint uses it instead of the path.",
    )
    trust_remote_code: bool = Field(False, description="Allow custom model code shipped with a checkpoint.")
    use_llm: bool = Field(True, description="False = ablation: the AU head reads the EFP token directly.")
    use_prompt: bool = Field(True, description="Put the text prompt before the visual token.")
    prompt: str = Field(
        "分析以下融合后的面部视频特征以进行动作单元分类。",
        description="Fixed text prompt (the reference's Chinese prompt by default).",
    )
    efp_input: EfpInput = Field("both", description="Features the projector reads: F_mid, F_high or both.")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="Dropout in the 3D-CNN and projector.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    shared_prompt_kv: bool = Field(
        True, description="Compute the prompt's keys/values once per step and share them (exact)."
    )
    tiny_hidden: int = Field(64, ge=8, description="Hidden size of the 'tiny' LLM.")
    tiny_layers: int = Field(2, ge=1, description="Decoder layers of the 'tiny' LLM.")
    tiny_heads: int = Field(4, ge=1, description="Attention heads of the 'tiny' LLM.")
    tiny_seed: int = Field(
        0, description="Seed of the 'tiny' LLM's random frozen weights (the same base for every fold)."
    )
