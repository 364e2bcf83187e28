"""The base LLM: tiny build, tokenizer, local-path loading, the per-process pool and its reuse."""

import pytest
import torch

from aullm_core.errors import ConfigError
from aullm_core.model import (
    AULLM,
    build_tiny_llm,
    build_tokenizer,
    clear_pool,
    get_base_llm,
    llm_hidden_size,
    lora_decoder,
    pool_loads,
    spec_from_config,
)
from aullm_core.model.config import LoraSettings, ModelConfig


def test_tokenizer_is_offline_deterministic_and_adds_bos():
    tok = build_tokenizer()
    ids = tok(ModelConfig().prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert 20 <= len(ids) <= 40
    assert ids == build_tokenizer()(ModelConfig().prompt)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == ModelConfig().prompt
    other = tok("never seen text: 你好")["input_ids"]  # any text tokenizes, byte fallback
    assert tok.decode(other, skip_special_tokens=True) == "never seen text: 你好"


def test_tiny_llm_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_llm(hidden=32, layers=1, heads=4, vocab_size=50, seed=7)
    after = torch.rand(1)
    b = build_tiny_llm(hidden=32, layers=1, heads=4, vocab_size=50, seed=7)
    assert torch.equal(before, after)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_pool_loads_once_and_fold_copies_do_not_touch_the_base():
    clear_pool()
    cfg = ModelConfig(tiny_hidden=32, tiny_layers=1, tiny_heads=4)
    base = get_base_llm(spec_from_config(cfg))
    assert get_base_llm(spec_from_config(cfg)) is base
    assert pool_loads() == 1
    before = {n: p.clone() for n, p in base.decoder.named_parameters()}
    fold_llm = lora_decoder(base, LoraSettings(r=2, alpha=4))
    shared = [p for n, p in fold_llm.named_parameters() if not p.requires_grad]
    assert any(p is q for p in shared for q in base.decoder.parameters())  # no copy of frozen weights
    opt = torch.optim.SGD([p for p in fold_llm.parameters() if p.requires_grad], lr=1.0)
    out = fold_llm(inputs_embeds=torch.randn(2, 3, 32)).last_hidden_state
    out.mul(torch.randn_like(out)).sum().backward()
    opt.step()
    assert not any("lora" in n for n, _ in base.decoder.named_modules())
    for n, p in base.decoder.named_parameters():
        assert torch.equal(p, before[n]), n
    assert get_base_llm(spec_from_config(cfg.model_copy(update={"tiny_seed": 1}))) is not base
    assert pool_loads() == 2


def test_local_checkpoint_path_loads_offline(tmp_path):
    tok = build_tokenizer()
    lm = build_tiny_llm(hidden=32, layers=1, heads=4, vocab_size=len(tok), seed=5)
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = ModelConfig(llm=str(tmp_path))
    assert llm_hidden_size(cfg) == 32
    base = get_base_llm(spec_from_config(cfg))
    assert base.hidden_size == 32
    assert base.tokenizer(cfg.prompt)["input_ids"] == tok(cfg.prompt)["input_ids"]
    embeds = torch.randn(1, 4, 32)
    with torch.no_grad():
        expected = lm.get_decoder()(inputs_embeds=embeds).last_hidden_state
        got = base.decoder(inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(got, expected)
    torch.manual_seed(0)
    model = AULLM(cfg, n_aus=2, d_model=32, base=base).eval()
    assert model(torch.rand(2, 6, 64, 64) * 255).shape == (2, 2)


def test_missing_checkpoint_folder_is_a_one_line_config_error(tmp_path):
    cfg = ModelConfig(llm=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="model.llm=.*nope.*expected 'tiny'"):
        get_base_llm(spec_from_config(cfg))


def test_cpu_always_fp32_and_gpu_keeps_precision():
    cfg = ModelConfig()
    assert spec_from_config(cfg, precision="bf16", device="cpu").dtype == "fp32"
    assert spec_from_config(cfg, precision="bf16", device="cuda:0").dtype == "bf16"
