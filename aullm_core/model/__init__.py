"""The AU-LLM model: LED layer, 3D-CNN encoder, fusion projector, LLM with LoRA, AU head."""

from aullm_core.model.encoder import FrameSqueezeExcite, VisualEncoder
from aullm_core.model.led import LEDLayer
from aullm_core.model.llm import (
    BaseLLM,
    LLMSpec,
    build_tiny_llm,
    build_tokenizer,
    clear_pool,
    get_base_llm,
    llm_hidden_size,
    lora_decoder,
    pool_loads,
    spec_from_config,
)
from aullm_core.model.projector import FusionProjector
from aullm_core.model.vlm import AULLM

__all__ = [
    "AULLM",
    "BaseLLM",
    "FrameSqueezeExcite",
    "FusionProjector",
    "LEDLayer",
    "LLMSpec",
    "VisualEncoder",
    "build_tiny_llm",
    "build_tokenizer",
    "clear_pool",
    "get_base_llm",
    "llm_hidden_size",
    "lora_decoder",
    "pool_loads",
    "spec_from_config",
]
