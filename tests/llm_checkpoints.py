"""Tiny randomly initialised checkpoints of the LLM families researchers download, saved the way
``save_pretrained`` saves them, each beside the byte-level BPE tokenizer built in code."""

from __future__ import annotations

from pathlib import Path

import torch

from aullm_core.model.llm import build_tokenizer

#: family -> (config class name, keyword arguments): about 64 hidden units, 2 layers, 4 heads
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama-gqa": ("LlamaConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "num_key_value_heads": 2}),
    "qwen2": ("Qwen2Config", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 2}),
    "mistral": ("MistralConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "num_key_value_heads": 2}),
    "gemma2": ("Gemma2Config", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}),
    "phi3": ("Phi3Config", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "num_key_value_heads": 4, "pad_token_id": 2}),
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    "opt": ("OPTConfig", {"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "word_embed_proj_dim": 64, "max_position_embeddings": 256}),
}


def save_checkpoint(family: str, folder: Path, *, tokenizer: bool = True, seed: int = 0,
                    dtype: torch.dtype = torch.float32, vocab_size: int | None = None) -> Path:
    """A tiny random checkpoint of ``family`` in ``folder`` (safetensors), with the tokenizer unless told not."""
    import transformers
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer()
    name, kwargs = FAMILIES[family]
    config = getattr(transformers, name)(vocab_size=vocab_size or len(tok), bos_token_id=0, eos_token_id=1, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.to(dtype).save_pretrained(folder)
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


def write_sentencepiece_tokenizer(folder: Path) -> Path:
    """A SentencePiece ``tokenizer.model`` (the Llama 2 layout: no tokenizer.json), trained on the prompt's text."""
    import json

    import sentencepiece as spm

    from aullm_core.model.llm import _TOKENIZER_CORPUS

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(_TOKENIZER_CORPUS) * 20), model_prefix=str(folder / "tokenizer"), vocab_size=400,
        model_type="bpe", character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        minloglevel=2,
    )
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return folder
