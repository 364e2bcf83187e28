"""The encoder's 2D formulation computes exactly what the method's 3D layers compute."""

import pytest
import torch
from torch import nn

from aullm_core.model.encoder import VisualEncoder


def _reference_mid_map(enc: VisualEncoder, x: torch.Tensor) -> torch.Tensor:
    """method.md's layers applied as nn.Conv3d / MaxPool3d / BatchNorm3d / Dropout3d, in order."""
    x = enc.led(x)
    x = enc.drop1(enc.bn1(enc.pool1(torch.relu(enc.conv1(x)))))
    x = enc.se(enc.bn2(torch.relu(enc.conv2(x))))
    return enc.drop2(enc.pool2(x))


def _pair(dropout: float, seed: int = 0) -> tuple[VisualEncoder, VisualEncoder]:
    torch.manual_seed(seed)
    a = VisualEncoder(dropout)
    b = VisualEncoder(dropout)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():  # non-trivial BatchNorm affine parameters
        for enc in (a, b):
            for bn in (enc.bn1, enc.bn2):
                bn.weight.copy_(torch.linspace(0.5, 1.5, bn.num_features))
                bn.bias.copy_(torch.linspace(-0.2, 0.2, bn.num_features))
    return a, b


@pytest.mark.parametrize("train", [True, False])
def test_mid_map_and_gradients_equal_the_3d_layers(train):
    fast, ref = _pair(dropout=0.0)
    fast.train(train)
    ref.train(train)
    x = torch.rand(3, 1, 6, 64, 64) * 255
    out_fast, out_ref = fast.mid_map(x), _reference_mid_map(ref, x)
    assert out_fast.shape == out_ref.shape == (3, 64, 2, 9, 9)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-4, atol=1e-5)
    weights = torch.randn_like(out_ref)
    (out_fast * weights).sum().backward()
    (out_ref * weights).sum().backward()
    for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters()):
        if p_ref.grad is None or name.startswith("fc_high") or name == "led.log_alpha":
            continue  # fc_high is not in the mid map; alpha's gradient is rounding noise (see led.py)
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-3, atol=1e-3 * p_ref.grad.abs().max().item()), name
    if train:  # running statistics updated the same way
        torch.testing.assert_close(fast.bn1.running_var, ref.bn1.running_var)
        torch.testing.assert_close(fast.bn2.running_mean, ref.bn2.running_mean)


def test_channel_dropout_is_per_clip_and_channel_as_dropout3d():
    """Same RNG draws, same dropped channels: Dropout3d semantics survive the 2D layout."""
    fast, ref = _pair(dropout=0.5)
    x = torch.rand(4, 1, 6, 64, 64) * 255
    torch.manual_seed(7)
    out_fast = fast.train().mid_map(x)
    torch.manual_seed(7)
    out_ref = _reference_mid_map(ref.train(), x)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-4, atol=1e-5)
    assert (out_ref.flatten(2).abs().sum(-1) == 0).any()  # some channels really were dropped


def test_state_dict_keeps_the_3d_layer_shapes():
    enc = VisualEncoder(0.3)
    assert isinstance(enc.conv1, nn.Conv3d) and enc.conv1.weight.shape == (32, 1, 1, 5, 5)
    assert enc.conv2.weight.shape == (64, 32, 2, 3, 3)


def test_unfolded_conv_equals_conv2d_with_gradients():
    from aullm_core.model.encoder import unfolded_conv2d

    torch.manual_seed(0)
    x = torch.randn(5, 1, 16, 16, requires_grad=True)
    w = torch.randn(8, 1, 5, 5, requires_grad=True)
    ours = unfolded_conv2d(x, w)
    ref = torch.nn.functional.conv2d(x, w)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((ours * g).sum(), (x, w))
    ref_grads = torch.autograd.grad((ref * g).sum(), (x, w))
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw", [(64, 64), (65, 70)])
def test_cpu_conv1_and_pool_equal_torch_layers_values_and_gradients(hw):
    """The CPU path's hand-written backward (scatter, shifted sums) against autograd of conv2d + max_pool2d."""
    import torch.nn.functional as F

    from aullm_core.model.encoder import _Conv1MaxPoolCpu

    torch.manual_seed(0)
    x = (torch.rand(5, 1, *hw, dtype=torch.float64) * 2 - 1).requires_grad_()
    w = torch.randn(32, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    expected = F.max_pool2d(F.conv2d(x, w), 3)
    upstream = torch.randn_like(expected)
    dx, dw = torch.autograd.grad((expected * upstream).sum(), (x, w))
    got = _Conv1MaxPoolCpu.apply(x, w, 3)
    gx, gw = torch.autograd.grad((got * upstream).sum(), (x, w))
    assert torch.equal(got, expected)
    torch.testing.assert_close(gx, dx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, dw, rtol=1e-12, atol=1e-12)
    small = (x[:1, :, :11, :13].detach().clone().requires_grad_(), w[:3].detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: _Conv1MaxPoolCpu.apply(a, b, 3), small)


@pytest.mark.parametrize("side", [16, 32, 96])
def test_frames_of_any_cache_size_from_16_pixels_go_through_the_3d_layers(side):
    """The mid-level map's size follows the frames' (the reference layers, applied to the same input,
    give the same shape), so a 32- or 96-pixel cache trains."""
    torch.manual_seed(1)
    fast, ref = VisualEncoder(0.0, frame_size=side), VisualEncoder(0.0, frame_size=side)
    ref.load_state_dict(fast.state_dict())
    x = torch.rand(2, 1, 6, side, side) * 255
    mid, high = fast(x)
    assert mid.shape == (2, fast.f_mid) and high.shape == (2, 256)
    assert _reference_mid_map(ref, x).flatten(1).shape == mid.shape
    high.sum().backward()
    assert fast.fc_high.weight.grad is not None


def test_frames_below_16_pixels_are_refused_naming_the_size_to_use():
    with pytest.raises(ValueError, match=r"12x12 pixels.*--size 16"):
        VisualEncoder(0.0, frame_size=12)
