"""LED layer: initial matrix (method.md 3.1), the per-pixel formula, output layout, gradients."""

import numpy as np
import pytest
import torch

from aullm_core.model.led import LEDLayer


def test_initial_matrix_matches_the_method():
    w = LEDLayer().weight_matrix().detach().numpy()
    np.testing.assert_allclose(w[0], [3.5, -3.5, -5.425, -6.414, -6.849, -6.96], atol=1e-3)
    np.testing.assert_allclose(w[:, 1:].sum(axis=0), np.zeros(5), atol=1e-5)
    assert np.allclose(np.tril(w, -1), 0)  # upper triangular
    np.testing.assert_allclose(np.diag(w), 3.5, atol=1e-6)


def test_parameters_are_stored_as_logs():
    led = LEDLayer()
    values = [float(p.detach().exp()) for p in (led.log_alpha, led.log_r1, led.log_r2)]
    np.testing.assert_allclose(values, [10.0, 0.4, 0.05], rtol=1e-6)


def _reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Loop version of method.md: out_j = sum_i x_i W_ij / (sum_i |x_i||W_ij| + 1e-8), frames 1..5."""
    b, _, n, h, wd = x.shape
    out = np.zeros((b, 1, n, h, wd))
    for j in range(n):
        num = sum(x[:, :, i] * w[i, j] for i in range(n))
        den = sum(np.abs(x[:, :, i]) * abs(w[i, j]) for i in range(n)) + 1e-8
        out[:, :, j] = num / den
    out[:, :, 0] = x[:, :, 0]
    return out[:, :, 1:]


def test_forward_matches_loop_formula_and_shape():
    torch.manual_seed(0)
    led = LEDLayer()
    x = torch.rand(2, 1, 6, 8, 8) * 255
    y = led(x)
    assert y.shape == (2, 1, 5, 8, 8)
    ref = _reference(x.double().numpy(), led.weight_matrix().detach().double().numpy())
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    assert y.abs().max() <= 1.0 + 1e-6  # normalised responses


def test_constant_video_gives_zero_response():
    """Columns j>=1 sum to zero, so a still clip has no dynamics."""
    x = torch.full((1, 1, 6, 4, 4), 77.0)
    assert torch.allclose(LEDLayer()(x), torch.zeros(1, 1, 5, 4, 4), atol=1e-6)


def test_gradients_reach_r1_r2_while_alpha_cancels():
    """The normalisation divides alpha out (up to the 1e-8), so only r1 and r2 really learn."""
    led = LEDLayer()
    x = torch.rand(1, 1, 6, 4, 4) * 255
    led(x).mul(torch.randn(1, 1, 5, 4, 4)).sum().backward()
    for p in (led.log_r1, led.log_r2):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 1e-3
    assert led.log_alpha.grad.abs().item() < 1e-6


def test_too_few_frames_rejected():
    with pytest.raises(ValueError, match="n_frames=1"):
        LEDLayer(1)
