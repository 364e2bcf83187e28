"""Losses against values and gradients worked out by hand (numpy, float64)."""

import numpy as np
import pytest
import torch

from aullm_core.train.losses import asl_loss, bce_loss, faithful_loss, get_loss

LOGITS = np.array([[0.0, 2.0, -3.5], [1.0, -1.0, 4.0]])
TARGETS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _run(fn):
    x = torch.tensor(LOGITS, requires_grad=True)
    loss = fn(x, torch.tensor(TARGETS))
    loss.backward()
    return loss.item(), x.grad.numpy()


def _by_hand():
    p = 1 / (1 + np.exp(-LOGITS))
    y = TARGETS
    p_neg = np.minimum(1 - p + 0.05, 1.0)  # shifted negative probability
    log_terms = y * np.log(p) + (1 - y) * np.log(p_neg)
    w = np.where(y == 1, 1.0, (1 - p_neg) ** 4)  # gamma_pos=0, gamma_neg=4
    # d/dx of -log p = -(1-p); of -log(1-p+0.05) = p(1-p)/(1-p+0.05) unless clamped (p < 0.05): 0
    grad_unweighted = np.where(y == 1, -(1 - p), np.where(1 - p + 0.05 < 1, p * (1 - p) / (1 - p + 0.05), 0.0))
    return p, y, p_neg, log_terms, w, grad_unweighted


def _reference_faithful(logits: np.ndarray, targets: np.ndarray) -> float:
    """The reference's reported value, written as it computes it: the summed shifted BCE terms, each
    negative multiplied by xs_neg ** 4 (xs_neg = min(1 - p + 0.05, 1)), each positive by 1."""
    xs_pos = 1 / (1 + np.exp(-logits))
    xs_neg = np.minimum(1 - xs_pos + 0.05, 1.0)
    loss = targets * np.log(np.maximum(xs_pos, 1e-8)) + (1 - targets) * np.log(np.maximum(xs_neg, 1e-8))
    loss = loss * np.where(targets == 1, 1.0, xs_neg**4)
    return float(-loss.sum())


def test_faithful_value_is_the_reference_value_and_gradient_the_shifted_bce():
    _p, _y, p_neg, log_terms, _w, grad_unweighted = _by_hand()
    value, grad = _run(faithful_loss)
    assert value == pytest.approx(-(log_terms * np.where(TARGETS == 1, 1.0, p_neg**4)).sum(), rel=1e-10)
    assert value == pytest.approx(_reference_faithful(LOGITS, TARGETS), rel=1e-10)
    np.testing.assert_allclose(grad, grad_unweighted, rtol=1e-10, atol=1e-12)
    assert grad[0, 2] == 0.0  # p = 0.029 < 0.05: a negative below the clip gives no gradient


def test_faithful_on_many_random_logits_matches_reference_value_and_unweighted_gradient():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(4096, 4))
    targets = (rng.uniform(size=(4096, 4)) < 0.3).astype(np.float64)
    x = torch.tensor(logits, requires_grad=True)
    loss = faithful_loss(x, torch.tensor(targets))
    loss.backward()
    assert loss.item() == pytest.approx(_reference_faithful(logits, targets), rel=1e-10)
    # the gradient is the unweighted shifted BCE's, the one the reference applied
    x2 = torch.tensor(logits, requires_grad=True)
    p = torch.sigmoid(x2)
    t = torch.tensor(targets)
    shifted = -(t * torch.log(p.clamp(min=1e-8)) + (1 - t) * torch.log((1 - p + 0.05).clamp(max=1).clamp(min=1e-8)))
    shifted.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), rtol=1e-12, atol=1e-14)
    # and the value is not the textbook asymmetric loss's
    assert loss.item() != pytest.approx(asl_loss(torch.tensor(logits), torch.tensor(targets)).item(), rel=1e-3)


def test_faithful_numbers_on_one_cell():
    # logit 2, negative: p = 0.880797, shifted xs_neg = 1-p+0.05 = 0.169203, -log(0.169203) = 1.776657,
    # weight xs_neg^4 = 0.000819659 -> value 0.00145626; gradient p(1-p)/0.169203 = 0.620519
    x = torch.tensor([[2.0]], dtype=torch.float64, requires_grad=True)
    loss = faithful_loss(x, torch.zeros(1, 1, dtype=torch.float64))
    loss.backward()
    assert loss.item() == pytest.approx(1.776657 * 0.169203**4, rel=1e-5)
    assert x.grad.item() == pytest.approx(0.620519, abs=1e-6)


def test_asl_differentiates_its_focusing_weight():
    p, y, _p_neg, log_terms, w, grad_unweighted = _by_hand()
    value, grad = _run(asl_loss)
    assert value == pytest.approx(-(log_terms * w).sum(), rel=1e-10)
    # negatives: L = -p_m^4 log(1-p_m), p_m = p-0.05 (>0): dL/dx = p(1-p) [-4 p_m^3 log(1-p_m) + p_m^4/(1-p_m)]
    pm = np.maximum(p - 0.05, 0)
    with np.errstate(divide="ignore"):
        neg = p * (1 - p) * (-4 * pm**3 * np.log(1 - pm) + pm**4 / (1 - pm))
    want = np.where(y == 1, -(1 - p), np.where(pm > 0, neg, 0.0))
    np.testing.assert_allclose(grad, want, rtol=1e-9, atol=1e-12)
    assert not np.allclose(grad, grad_unweighted)


def test_bce_is_summed_binary_cross_entropy():
    p = 1 / (1 + np.exp(-LOGITS))
    value, grad = _run(bce_loss)
    assert value == pytest.approx(-(TARGETS * np.log(p) + (1 - TARGETS) * np.log(1 - p)).sum(), rel=1e-10)
    np.testing.assert_allclose(grad, p - TARGETS, rtol=1e-10)


def test_unknown_loss_named_in_error():
    with pytest.raises(ValueError, match="'focal'"):
        get_loss("focal")
