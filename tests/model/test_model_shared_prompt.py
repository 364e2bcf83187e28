"""Shared prompt keys/values vs the naive full sequence, on the same weights (issue item 3)."""

import pytest
import torch

from aullm_core.config import ExperimentConfig
from aullm_core.model import AULLM, get_base_llm, spec_from_config


def _model(shared: bool, **model_overrides) -> AULLM:
    cfg = ExperimentConfig.preset("quick").model.model_copy(update={"shared_prompt_kv": shared, **model_overrides})
    base = get_base_llm(spec_from_config(cfg))
    torch.manual_seed(3)
    model = AULLM(cfg, n_aus=4, d_model=cfg.tiny_hidden, base=base)
    with torch.no_grad():  # LoRA B starts at zero; make the adapters matter for the check
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def _same_weights(a: AULLM, b: AULLM) -> None:
    b.load_state_dict(a.state_dict())


@pytest.fixture(scope="module")
def clips():
    torch.manual_seed(0)
    return torch.rand(6, 6, 64, 64) * 255


def test_logits_equal_in_eval(clips):
    shared, naive = _model(True), _model(False)
    _same_weights(shared, naive)
    assert shared.prompt_length > 20
    with torch.no_grad():
        a, b = shared.eval()(clips), naive.eval()(clips)
    assert (a - b).abs().max().item() < 1e-5
    assert a.abs().max().item() > 1e-3  # not trivially zero


def test_last_hidden_state_equal_for_random_tokens():
    model = _model(True).eval()
    token = torch.randn(5, 64)
    with torch.no_grad():
        a = model.llm_last_hidden(token, shared=True)
        b = model.llm_last_hidden(token, shared=False)
    assert (a - b).abs().max().item() < 1e-5


def test_gradients_of_every_trainable_tensor_equal(clips):
    """Train mode (BatchNorm on batch statistics), dropouts 0 so both paths are deterministic."""
    kwargs = {"dropout": 0.0, "lora": ExperimentConfig.preset("quick").model.lora.model_copy(update={"dropout": 0.0})}
    shared, naive = _model(True, **kwargs), _model(False, **kwargs)
    _same_weights(shared, naive)
    projection = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    grads = []
    for model in (shared, naive):
        model.train()
        model.zero_grad()
        (model(clips) * projection).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    lora = [n for n in grads[0] if "lora_" in n]
    assert lora, "LoRA weights must receive gradients"
    largest = max(g.abs().max().item() for g in grads[1].values())
    for name in grads[0]:
        g_shared, g_naive = grads[0][name], grads[1][name]
        scale = g_naive.abs().max().item()
        if name == "encoder.led.log_alpha":
            # alpha cancels in the LED normalisation: its gradient is rounding noise, compare absolutely
            assert scale < 1e-4 * largest and (g_shared - g_naive).abs().max().item() < 1e-4 * largest
            continue
        assert scale > 0, name
        assert (g_shared - g_naive).abs().max().item() <= 1e-4 * scale, name
    # the prompt pass matters: LoRA weights of layer 0 get gradient through the prompt's keys/values
    assert any(grads[0][n].abs().sum() > 0 for n in lora if ".0." in n and "v_proj" in n)


def test_naive_path_selected_by_config():
    assert _model(False).shared_prompt_kv is False
    assert ExperimentConfig().model.shared_prompt_kv is True
