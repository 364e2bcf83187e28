"""Shapes of every stage (method.md section 3) and the ablation variants."""

import pytest
import torch

from aullm_core.config import ExperimentConfig
from aullm_core.model import AULLM, FusionProjector, VisualEncoder, get_base_llm, spec_from_config
from aullm_core.model.config import ModelConfig
from aullm_core.model.encoder import FrameSqueezeExcite


@pytest.fixture(scope="module")
def clips():
    torch.manual_seed(0)
    return torch.rand(3, 6, 64, 64) * 255  # (B, N, H, W), raw 0..255


def test_encoder_stage_shapes(clips):
    enc = VisualEncoder(dropout=0.3).eval()
    x = clips.unsqueeze(1)  # (B, 1, 6, 64, 64)
    assert enc.led(x).shape == (3, 1, 5, 64, 64)
    assert enc.mid_map(x).shape == (3, 64, 2, 9, 9)
    f_mid, f_high = enc(x)
    assert f_mid.shape == (3, 10368) and f_high.shape == (3, 256)
    assert enc.f_mid == 10368
    assert (f_high >= 0).all()  # ReLU before dropout


def test_frame_squeeze_excite_is_per_frame():
    se = FrameSqueezeExcite(64, 4)
    assert se.fc1.bias is None and se.fc2.bias is None
    assert se.fc1.weight.shape == (4, 64) and se.fc2.weight.shape == (64, 4)
    x = torch.rand(2, 64, 4, 5, 5)
    y = se(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, :, 3] *= 10  # changing frame 3 must not change the gates of frames 0..2
    torch.testing.assert_close(se(x2)[:, :, :3], y[:, :, :3])


@pytest.mark.parametrize("efp_input,n_in", [("both", 10624), ("mid", 10368), ("high", 256)])
def test_projector_widths(efp_input, n_in):
    proj = FusionProjector(64, efp_input=efp_input, dropout=0.3)
    assert proj.fc1.in_features == n_in
    assert proj.fc1.out_features == (n_in + 64) // 2
    assert proj.fc2.out_features == 64
    out = proj.eval()(torch.rand(2, 10368), torch.rand(2, 256))
    assert out.shape == (2, 64)


def test_projector_reads_only_its_input():
    proj = FusionProjector(32, efp_input="high", dropout=0.0)
    high = torch.rand(2, 256)
    a = proj(torch.rand(2, 10368), high)
    b = proj(torch.rand(2, 10368), high)
    torch.testing.assert_close(a, b)


def _model(**overrides):
    cfg = ExperimentConfig.preset("quick").model.model_copy(update=overrides)
    base = get_base_llm(spec_from_config(cfg)) if cfg.use_llm else None
    torch.manual_seed(0)
    return AULLM(cfg, n_aus=5, d_model=cfg.tiny_hidden, base=base).eval()


def test_full_model_output_and_prompt(clips):
    model = _model()
    assert model.prompt_length == 25  # <s> + 24 Chinese characters of the reference prompt
    assert model.head.in_features == 64 and model.head.out_features == 5
    assert model(clips).shape == (3, 5)


def test_no_llm_ablation_has_no_llm(clips):
    model = _model(use_llm=False)
    assert model.llm is None
    assert not any("lora" in n for n, _ in model.named_parameters())
    token = model.visual_token(clips)
    torch.testing.assert_close(model(clips), model.head(token))


def test_prompt_off_runs_only_the_visual_token(clips):
    model = _model(use_prompt=False)
    assert model.prompt_length == 0
    assert model(clips).shape == (3, 5)
    with_prompt = _model()
    assert not torch.allclose(model(clips), with_prompt(clips))


def test_lora_only_on_targets_and_base_frozen():
    model = _model()
    trainable = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)
    lora_a = [p for n, p in model.llm.named_parameters() if "lora_A" in n]
    assert lora_a[0].shape[0] == ExperimentConfig.preset("quick").model.lora.r


def test_wrong_width_rejected():
    cfg = ModelConfig()
    base = get_base_llm(spec_from_config(cfg))
    with pytest.raises(ValueError, match="hidden size"):
        AULLM(cfg, n_aus=2, d_model=32, base=base)
