"""The frozen causal LM: a tiny Llama built in code, or a local checkpoint; loaded once per process.

``get_base_llm(spec)`` keeps one frozen decoder per (source, trust_remote_code, tiny sizes, dtype,
device) for the life of the process, so a worker that trains many folds reads the weights once.
Each fold gets ``lora_decoder(base, ...)``: a structural copy of the decoder whose modules are new
but whose frozen weight tensors are the pool's (no memory copied), with fresh LoRA adapters injected
into the copy only. Training one fold therefore never changes what the next fold starts from.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from aullm_core.errors import ConfigError
from aullm_core.model.attention import use_packed_attention
from aullm_core.model.config import TINY_MLP_RATIO, LoraSettings, ModelConfig
from aullm_core.model.llm_source import (
    LLMInfo,
    content_identity,
    load_tokenizer,
    lora_targets,
    prompt_token_count,
    resolve_source,
)

__all__ = [
    "BaseLLM",
    "LLMSpec",
    "build_tiny_llm",
    "build_tokenizer",
    "clear_pool",
    "get_base_llm",
    "llm_hidden_size",
    "lora_decoder",
    "pool_loads",
    "spec_from_config",
]

log = logging.getLogger(__name__)

_SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
#: Text the tiny tokenizer's byte-level BPE merges are learnt from (fixed, so the vocabulary is too).
_TOKENIZER_CORPUS = (
    "分析以下融合后的面部视频特征以进行动作单元分类。",
    "analyse the following fused facial-video features to classify action units.",
    "面部动作单元 微表情 视频 特征 分类 检测",
    "micro-expression action unit detection from facial video clips",
)
_TINY_VOCAB = 512

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer built in code (no download); adds ``<s>`` before each text.

    Any text tokenizes (every byte is in the base alphabet); the merges learnt from a fixed corpus
    make the reference Chinese prompt about 25 tokens long instead of 72 raw bytes.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    units = sorted({ch for text in _TOKENIZER_CORPUS for ch in text if not ch.isascii()})
    units += sorted({word for text in _TOKENIZER_CORPUS for word in text.split() if word.isascii()})
    tok.train_from_iterator(units, trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_tiny_llm(
    *,
    hidden: int,
    layers: int,
    heads: int,
    vocab_size: int,
    seed: int,
    intermediate: int | None = None,
    kv_heads: int | None = None,
) -> LlamaForCausalLM:
    """A randomly initialised Llama from ``LlamaConfig``, independent of the global RNG.

    Built on the current default device and dtype (CPU fp32 unless a ``torch.device`` context or
    ``torch.set_default_dtype`` says otherwise); ``kv_heads`` < ``heads`` gives grouped-query attention.
    """
    if hidden % heads:
        raise ConfigError(f"model.tiny_hidden={hidden} must be divisible by model.tiny_heads={heads}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or TINY_MLP_RATIO * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


@dataclass(frozen=True)
class LLMSpec:
    """What identifies a loaded base LLM in the per-process pool."""

    source: str  # 'tiny' or a local folder
    identity: str | None  # the folder's content identity when the driver resolved it (checked on load)
    trust_remote_code: bool
    tiny: tuple[int, int, int, int]  # hidden, layers, heads, seed (only used for 'tiny')
    dtype: str  # 'fp32', 'bf16' or 'fp16'
    device: str


@dataclass
class BaseLLM:
    """A frozen decoder (no LM head) with its tokenizer."""

    spec: LLMSpec
    decoder: nn.Module
    tokenizer: PreTrainedTokenizerFast
    family: str = "llama"

    @property
    def hidden_size(self) -> int:
        return int(self.decoder.config.hidden_size)


_POOL: dict[LLMSpec, BaseLLM] = {}
_LOADS: list[LLMSpec] = []


def spec_from_config(cfg: ModelConfig, *, precision: str = "fp32", device: str = "cpu") -> LLMSpec:
    """The pool key for a model configuration; CPU always loads fp32."""
    dtype = precision if torch.device(device).type == "cuda" else "fp32"
    return LLMSpec(
        source=cfg.llm,
        identity=cfg.llm_id,
        trust_remote_code=cfg.trust_remote_code,
        tiny=(cfg.tiny_hidden, cfg.tiny_layers, cfg.tiny_heads, cfg.tiny_seed),
        dtype=dtype,
        device=str(torch.device(device)),
    )


def _checked_folder(spec: LLMSpec) -> Path:
    """The checkpoint folder, refused when its content is not what the driver resolved."""
    folder = resolve_source(spec.source)
    if spec.identity is not None and content_identity(folder) != spec.identity:
        raise ConfigError(
            f"model.llm={spec.source!r}: the checkpoint changed since the run resolved it (content identity "
            f"{content_identity(folder)}, expected {spec.identity}); restart the run so it is keyed by the new content"
        )
    return folder


def _load(spec: LLMSpec) -> BaseLLM:
    dtype = _DTYPES[spec.dtype]
    if spec.source == "tiny":
        tokenizer = build_tokenizer()
        hidden, layers, heads, seed = spec.tiny
        lm = build_tiny_llm(
            hidden=hidden, layers=layers, heads=heads, vocab_size=len(tokenizer), seed=seed
        )
    else:
        from transformers import AutoModelForCausalLM

        path = _checked_folder(spec)
        tokenizer = load_tokenizer(path, spec.source, spec.trust_remote_code)
        lm = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=spec.trust_remote_code, dtype=dtype, use_safetensors=True
        )
    decoder = lm.get_decoder()
    family = str(getattr(lm.config, "model_type", "llama"))
    if not spec.trust_remote_code:
        use_packed_attention(decoder)
    decoder.to(device=spec.device, dtype=dtype)
    decoder.requires_grad_(False)
    decoder.eval()
    return BaseLLM(spec=spec, decoder=decoder, tokenizer=tokenizer, family=family)


def get_base_llm(spec: LLMSpec) -> BaseLLM:
    """The pooled frozen base for ``spec``, loaded (or built) on first use in this process."""
    if spec not in _POOL:
        log.info("loading base LLM %s (%s on %s)", spec.source, spec.dtype, spec.device)
        _POOL[spec] = _load(spec)
        _LOADS.append(spec)
    return _POOL[spec]


def llm_info(base: BaseLLM, cfg: ModelConfig) -> LLMInfo:
    """What a fold builds on ``base`` with ``cfg``'s LoRA and prompt (logged at the start of each fold)."""
    named = list(base.decoder.named_modules())
    targets = lora_targets([n for n, _ in named], tuple(cfg.lora.targets), base.family)
    trainable = sum(cfg.lora.r * sum(m.weight.shape[:2]) for n, m in named
                    if n.rsplit(".", 1)[-1] in targets and hasattr(m, "weight"))
    prompt = prompt_token_count(base.tokenizer, cfg.prompt) if cfg.use_prompt else 0
    return LLMInfo(family=base.family, parameters=sum(p.numel() for p in base.decoder.parameters()),
                   dtype=base.spec.dtype, lora_modules=targets, lora_trainable=int(trainable), prompt_tokens=prompt,
                   identity=base.spec.identity or ("tiny" if base.spec.source == "tiny" else "unresolved path"))


def pool_loads() -> int:
    """How many times a base LLM was loaded in this process (reuse keeps this at one per spec)."""
    return len(_LOADS)


def clear_pool() -> None:
    """Forget every pooled base LLM (the next fold loads afresh)."""
    _POOL.clear()
    _LOADS.clear()


def llm_hidden_size(cfg: ModelConfig) -> int:
    """Hidden size d of the configured LLM without loading its weights."""
    if cfg.llm == "tiny":
        return cfg.tiny_hidden
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        resolve_source(cfg.llm), local_files_only=True, trust_remote_code=cfg.trust_remote_code
    )
    return int(config.get_text_config().hidden_size)


def _share_clone(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are the original tensors."""
    memo: dict[int, object] = {id(t): t for t in module.parameters()}
    memo.update({id(t): t for t in module.buffers()})
    return copy.deepcopy(module, memo)


def lora_decoder(base: BaseLLM, lora: LoraSettings, *, share_weights: bool = True) -> PeftModel:
    """A per-fold copy of the base decoder with fresh LoRA adapters (initialised from the torch RNG).

    ``share_weights=False`` copies the frozen weights too (needed when an engine such as ZeRO-3
    repartitions parameters in place).
    """
    decoder = _share_clone(base.decoder) if share_weights else copy.deepcopy(base.decoder)
    targets = lora_targets([n for n, _ in decoder.named_modules()], tuple(lora.targets), base.family)
    conv1d = any(type(m).__name__ == "Conv1D" and n.rsplit(".", 1)[-1] in targets for n, m in decoder.named_modules())
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(targets),
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores its weight transposed
        bias="none",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(decoder, config)
