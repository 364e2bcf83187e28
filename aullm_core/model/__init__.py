"""The AU-LLM model: LED layer, 3D-CNN encoder, fusion projector, LLM with LoRA, AU head.

The names below are imported on first use (PEP 562): ``aullm_core.model.config`` and
``aullm_core.model.llm_source`` are read by the command line and the sweep's driver, which must not pay
for torch, transformers and peft to start.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FrameSqueezeExcite": "encoder", "VisualEncoder": "encoder", "LEDLayer": "led", "FusionProjector": "projector",
    "AULLM": "vlm", "BaseLLM": "llm", "LLMSpec": "llm", "build_tiny_llm": "llm", "build_tokenizer": "llm",
    "clear_pool": "llm", "get_base_llm": "llm", "llm_hidden_size": "llm", "lora_decoder": "llm",
    "pool_loads": "llm", "spec_from_config": "llm",
}

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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
