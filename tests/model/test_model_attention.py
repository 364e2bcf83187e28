"""The structured attention of the packed shared-prompt sequence against dense masked attention."""

import pytest
import torch
from torch.nn import functional as F

from aullm_core.config import ExperimentConfig
from aullm_core.model import AULLM, attention, get_base_llm, spec_from_config
from aullm_core.model.attention import PACKED_ATTENTION, packed_prompt_attention, use_packed_attention
from aullm_core.model.llm import build_tiny_llm


class _Module(torch.nn.Module):
    """What transformers' attention functions read from the attention module."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _layout_mask(n_prompt: int, batch: int) -> torch.Tensor:
    """Boolean (P + B, P + B): prompt causal, each token sees the prompt and itself (naive loops)."""
    n = n_prompt + batch
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            allowed[i, j] = j <= i if i < n_prompt else (j < n_prompt or j == i)
    return allowed


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (6, 2), (4, 1)])
def test_values_and_gradients_match_dense_masked_attention(heads, kv_heads):
    n_prompt, batch, dim = 7, 11, 16
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    q = torch.randn(1, heads, n_prompt + batch, dim, generator=g, requires_grad=True)
    k = torch.randn(1, kv_heads, n_prompt + batch, dim, generator=g, requires_grad=True)
    v = torch.randn(1, kv_heads, n_prompt + batch, dim, generator=g, requires_grad=True)
    out, weights = packed_prompt_attention(_Module(heads // kv_heads), q, k, v, None, scaling=0.2, packed_prompt=n_prompt)
    rep = heads // kv_heads
    dense = F.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=_layout_mask(n_prompt, batch), scale=0.2
    ).transpose(1, 2)
    assert weights is None
    assert out.shape == (1, n_prompt + batch, heads, dim)
    assert (out - dense).abs().max().item() < 1e-5
    probe = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * probe).sum(), (q, k, v))
    dense_grads = torch.autograd.grad((dense * probe).sum(), (q, k, v))
    for got, want in zip(grads, dense_grads):
        assert want.abs().max().item() > 1e-3
        assert (got - want).abs().max().item() < 1e-5


def test_token_rows_compute_in_fp32_under_bf16_autocast():
    n_prompt, batch = 5, 9
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, h, n_prompt + batch, 32, generator=g).bfloat16() for h in (4, 2, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half, _ = packed_prompt_attention(_Module(2), q, k, v, None, packed_prompt=n_prompt)
    full, _ = packed_prompt_attention(_Module(2), q.float(), k.float(), v.float(), None, packed_prompt=n_prompt)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half[:, n_prompt:], full[:, n_prompt:].bfloat16())  # rounded once, at the end


def test_without_the_layout_keyword_it_is_sdpa_with_the_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 9, 9, generator=g) > 0.3
    mask[..., 0] = True
    out, _ = packed_prompt_attention(_Module(1), q, k, v, mask, scaling=0.3)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)
    assert (out - want).abs().max().item() < 1e-6


def test_attention_dropout_falls_back_to_the_masked_path(monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *a, **kw: calls.append(kw) or (a[1], None))
    q = k = v = torch.randn(1, 2, 5, 4)
    packed_prompt_attention(_Module(1), q, k, v, None, dropout=0.1, packed_prompt=3)
    assert calls and calls[0]["dropout"] == 0.1


def test_pooled_sdpa_decoders_switch_and_others_do_not():
    lm = build_tiny_llm(hidden=32, layers=1, heads=4, vocab_size=40, seed=0)
    decoder = lm.get_decoder()
    assert use_packed_attention(decoder) is True
    assert decoder.config._attn_implementation == PACKED_ATTENTION
    eager = build_tiny_llm(hidden=32, layers=1, heads=4, vocab_size=40, seed=0).get_decoder()
    eager.set_attn_implementation("eager")
    assert use_packed_attention(eager) is False
    assert eager.config._attn_implementation == "eager"


def _quick_model() -> AULLM:
    cfg = ExperimentConfig.preset("quick").model
    base = get_base_llm(spec_from_config(cfg))
    torch.manual_seed(5)
    model = AULLM(cfg, n_aus=3, d_model=cfg.tiny_hidden, base=base)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


def test_shared_model_runs_the_structured_attention_in_every_layer(monkeypatch):
    model = _quick_model()
    assert model.packed_attention
    tokens = torch.randn(4, model.llm.get_base_model().config.hidden_size)
    with torch.no_grad():
        dense_reference = model.llm_last_hidden(tokens, shared=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the shared pass must not reach the dense masked attention")

    monkeypatch.setattr(attention, "sdpa_attention_forward", refuse)
    with torch.no_grad():
        shared = model.llm_last_hidden(tokens, shared=True)
    assert (shared - dense_reference).abs().max().item() < 1e-5


def test_structured_and_dense_decoder_attention_agree_on_the_whole_model():
    model = _quick_model()
    clips = torch.rand(5, 6, 64, 64, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        packed = model(clips)
        model.llm.get_base_model().set_attn_implementation("sdpa")
        assert not model.packed_attention
        dense = model(clips)
    assert (packed - dense).abs().max().item() < 1e-5
    assert packed.abs().max().item() > 1e-3
    pooled = get_base_llm(spec_from_config(ExperimentConfig.preset("quick").model)).decoder
    assert pooled.config._attn_implementation == PACKED_ATTENTION  # a fold's copy, not the pool, changed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_on_cuda_matches_an_fp32_dense_reference(compiled):
    """The paper's shape at 0.5B (14 query heads, 2 key/value heads, 25 prompt tokens, batch 256)."""
    n_prompt, batch, heads, kv_heads, dim = 25, 256, 14, 2, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, h, n_prompt + batch, dim, generator=g, device="cuda") for h in (heads, kv_heads, kv_heads))
    fn = torch.compile(packed_prompt_attention) if compiled else packed_prompt_attention
    half = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    out, _ = fn(_Module(heads // kv_heads), *half, None, scaling=dim**-0.5, packed_prompt=n_prompt)
    rep = heads // kv_heads
    mask = _layout_mask(n_prompt, batch).cuda()
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    want = F.scaled_dot_product_attention(
        full[0], full[1].repeat_interleave(rep, 1), full[2].repeat_interleave(rep, 1), attn_mask=mask
    ).transpose(1, 2)
    assert out.dtype == torch.bfloat16
    assert (out.float() - want).abs().max().item() < 2e-2 * want.abs().max().item()
    probe = torch.randn(want.shape, generator=g, device="cuda")
    grads = torch.autograd.grad((out.float() * probe).sum(), half)
    want_grads = torch.autograd.grad((want * probe).sum(), full)
    for got, ref in zip(grads, want_grads):
        assert (got.float() - ref).abs().max().item() < 3e-2 * ref.abs().max().item()
